"""Configuration: frozen dataclasses, the preset registry, TOML recipes and overrides.

A run is described by a :class:`RunConfig` with three sections, ``model``, ``train`` and
``data``. It is resolved in layers, each overriding the one before::

    defaults -> preset (``--preset`` or ``preset = ...`` in the recipe) -> recipe TOML
             -> ``--set section.key=value`` overrides

Unknown keys are errors that name the nearest valid key. The resolved config is saved in
every checkpoint, so a run can always be rebuilt from its directory alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from untok.errors import ConfigError
from untok.units import VOCAB_SIZE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


EMBEDDINGS = ("table", "wave")


@dataclass(frozen=True, kw_only=True)
class EmbeddingConfig:
    """How units become vectors (DESIGN 5.2). ``kind``: ``table`` (one learned vector per
    id; for code points a sum of per-block and per-offset vectors) or ``wave`` (no table:
    ``waves`` learned sinusoids of the unit value, then a small MLP; ``model.embedding =
    "wave"`` is short for ``model.embedding.kind = "wave"``).

    Hash n-grams are added to either: for each n in ``ngrams`` a ``buckets x dim`` table
    indexed by a rolling hash of the n units ending at each position; ``[]`` = off."""

    kind: str = "table"
    waves: int = 64
    ngrams: tuple[int, ...] = ()
    buckets: int = 4096

    def validate(self) -> None:
        _check(self.kind in EMBEDDINGS, f"model.embedding.kind must be one of {EMBEDDINGS}")
        _check(self.waves >= 2, "model.embedding.waves must be >= 2")
        _check(all(n >= 2 for n in self.ngrams), "model.embedding.ngrams must all be >= 2")
        _check(len(set(self.ngrams)) == len(self.ngrams),
               "model.embedding.ngrams must not repeat a size")
        _check(self.buckets > 0, "model.embedding.buckets must be positive")


PATCHERS = ("fixed", "space", "entropy")
BACKBONES = ("transformer", "mmfree")
UNITS = ("byte", "codepoint")
ATTENTIONS = ("standard", "differential")
OBJECTIVES = ("ce", "mse")


@dataclass(frozen=True, kw_only=True)
class PatchingConfig:
    """How a BLT cuts bytes into patches (DESIGN 5.3).

    ``entropy``: a patch starts where the entropy model's next-byte entropy exceeds
    ``threshold`` (global), or rises by more than ``relative`` over the previous byte's
    (approximately monotonic), or both; with neither set, training fits ``threshold`` to
    ``target_len`` bytes per patch on a sample of the train split. ``entropy_shape`` and
    ``entropy_sha256`` are filled in from the ``entropy_model`` checkpoint when the model
    is built; the weights are copied into the BLT's own checkpoint.
    """

    kind: str = "space"
    patch_size: int = 4  # fixed
    max_len: int = 16  # space and entropy
    threshold: float | None = None
    relative: float | None = None
    target_len: float = 4.0
    newline_reset: bool = False
    entropy_model: str = ""
    entropy_sha256: str = ""
    entropy_shape: ModelConfig | None = None

    def validate(self) -> None:
        _check(self.kind in PATCHERS, f"model.patching.kind must be one of {PATCHERS}")
        _check(self.patch_size >= 1, "model.patching.patch_size must be >= 1")
        _check(self.max_len >= 1, "model.patching.max_len must be >= 1")
        _check(self.target_len >= 1, "model.patching.target_len must be >= 1")
        if self.kind == "entropy":
            _check(bool(self.entropy_model) or self.entropy_shape is not None,
                   "entropy patching needs an entropy model: pass --entropy-model CKPT "
                   "(train one with `untok train --preset entropy-small`) or choose "
                   "--patching space|fixed")
        if self.entropy_shape is not None:
            self.entropy_shape.validate()
            check_entropy_shape(self.entropy_shape)


def check_entropy_shape(shape: ModelConfig, where: object = "the entropy model") -> None:
    """Entropy patching runs a flat byte transformer (the BLT rebuilds it from its shape);
    anything else is a one-line error naming ``where`` (e.g. the checkpoint)."""
    _check(shape.family == "flat" and shape.backbone == "transformer",
           f"{where} must be a flat byte transformer to drive entropy patching (got family "
           f"'{shape.family}', backbone '{shape.backbone}'); train one with --preset "
           "entropy-small")
    _check(shape.unit == "byte" and shape.vocab_size == VOCAB_SIZE,
           f"{where} must read bytes to drive entropy patching (vocabulary {VOCAB_SIZE}, "
           f"got unit '{shape.unit}', vocabulary {shape.vocab_size})")


@dataclass(frozen=True, kw_only=True)
class LocalConfig:
    """BLT's byte-level encoder and decoder (DESIGN 5.4); the global model over patches
    takes the main ``dim``/``num_layers``/``num_heads`` of the model config."""

    dim: int = 128
    num_heads: int = 4
    encoder_layers: int = 1
    decoder_layers: int = 2
    window: int = 128  # local attention window in bytes
    slots: int = 2  # k query slots per patch; the patch vector is k x dim

    def validate(self) -> None:
        _check(self.dim > 0 and self.num_heads > 0 and self.dim % self.num_heads == 0,
               "model.local.dim must be a positive multiple of model.local.num_heads")
        _check((self.dim // self.num_heads) % 2 == 0,
               "model.local.dim / model.local.num_heads must be even (RoPE)")
        _check(self.encoder_layers >= 0 and self.decoder_layers >= 1,
               "model.local needs encoder_layers >= 0 and decoder_layers >= 1")
        _check(self.window >= 1 and self.slots >= 1,
               "model.local.window and model.local.slots must be >= 1")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape of a byte model. ``mlp_hidden = 0`` picks 8/3 x dim rounded up to 64.

    For ``family = "blt"`` the main fields shape the global model over patches and
    ``context`` counts bytes; ``patching`` and ``local`` apply to BLT only.
    """

    family: str = "flat"
    unit: str = "byte"  # or "codepoint": one id per Unicode character (DESIGN 3.1)
    vocab_size: int = VOCAB_SIZE
    context: int = 256  # training window in units; also the KV-cache length
    dim: int = 256
    num_layers: int = 6
    num_heads: int = 8
    mlp_hidden: int = 0
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    tie_embeddings: bool = True
    backbone: str = "transformer"  # or "mmfree" (MLGRU + BitLinear GLU, DESIGN 5.5)
    ternary_head: bool = False  # mmfree: a BitLinear output head (not tied)
    attention: str = "standard"  # or "differential" (DESIGN 5.1)
    objective: str = "ce"  # copied from train.objective: "mse" adds a learned temperature
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    patching: PatchingConfig = field(default_factory=PatchingConfig)
    local: LocalConfig = field(default_factory=LocalConfig)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def hidden_dim(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        return -(-int(self.dim * 8 / 3) // 64) * 64

    def validate(self) -> None:
        _check(self.dim > 0 and self.num_layers > 0 and self.num_heads > 0,
               "model.dim, model.num_layers and model.num_heads must be positive")
        _check(self.dim % self.num_heads == 0,
               f"model.dim ({self.dim}) must be divisible by model.num_heads ({self.num_heads})")
        _check(self.head_dim % 2 == 0, "model.dim / model.num_heads must be even (RoPE)")
        _check(self.context >= 2, "model.context must be at least 2")
        _check(self.vocab_size >= VOCAB_SIZE, f"model.vocab_size must be >= {VOCAB_SIZE}")
        _check(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        self.embedding.validate()
        _check(self.backbone in BACKBONES, f"model.backbone must be one of {BACKBONES}")
        _check(self.unit in UNITS, f"model.unit must be one of {UNITS}")
        _check(self.attention in ATTENTIONS, f"model.attention must be one of {ATTENTIONS}")
        _check(self.objective in OBJECTIVES, f"train.objective must be one of {OBJECTIVES}")
        if self.attention == "differential":
            _check(self.num_heads % 2 == 0 and self.head_dim % 2 == 0,
                   "differential attention pairs heads: model.num_heads must be even")
        options = (self.unit != "byte", self.embedding.kind != "table",
                   self.attention != "standard", self.objective != "ce")
        if any(options):
            _check(self.family == "flat" and self.backbone == "transformer",
                   "model.unit, model.embedding.kind, model.attention and train.objective "
                   "are options of the flat transformer (family 'flat', backbone "
                   "'transformer')")
        if self.unit == "codepoint":
            _check(self.objective == "ce", "train.objective = 'mse' needs model.unit = "
                   "'byte' (a code-point model has no candidate table to score)")
            _check(not self.embedding.ngrams,
                   "hash n-grams read bytes: drop model.embedding.ngrams for model.unit = "
                   "'codepoint'")
        if self.family == "blt":
            self.patching.validate()
            self.local.validate()
        else:  # settings that only a BLT reads are an error, not silently ignored
            for name, default in (("patching", PatchingConfig()), ("local", LocalConfig())):
                _check(getattr(self, name) == default,
                       f"model.{name} (or --patching / --patch-size / --entropy-model) "
                       f"applies to BLT models only, and this model's family is "
                       f"'{self.family}'; choose a BLT preset such as --preset blt-small")


SCHEDULES = ("cosine", "constant", "warmup")
LR_CONTROLLERS = ("none", "qlearn")


@dataclass(frozen=True, kw_only=True)
class QLearnConfig:
    """The tabular Q-learning learning-rate controller (``train.lr_controller = "qlearn"``).

    Every step it observes (loss trend, gradient norm), each bucketed, and scales the
    learning rate by one of ``actions`` within ``[lr_min, lr_max]`` (``None``: ``lr / 100``
    and ``lr x 10``); with ``momentum`` it also scales beta1 within ``[0.8, 0.99]``.
    Reward: relative loss improvement. epsilon-greedy with per-step decay."""

    actions: tuple[float, ...] = (0.5, 0.9, 1.0, 1.1, 1.5)
    lr_min: float | None = None
    lr_max: float | None = None
    momentum: bool = False
    every: int = 10  # steps between decisions (the loss trend is measured over them)
    alpha: float = 0.2  # Q-table learning rate
    gamma: float = 0.9  # discount
    epsilon: float = 0.3
    epsilon_decay: float = 0.995  # per decision
    epsilon_min: float = 0.02

    def validate(self) -> None:
        _check(len(self.actions) > 0 and all(a > 0 for a in self.actions),
               "train.qlearn.actions must be positive learning-rate factors")
        _check(self.every >= 1, "train.qlearn.every must be >= 1")
        _check(0 < self.alpha <= 1 and 0 <= self.gamma < 1,
               "train.qlearn needs 0 < alpha <= 1 and 0 <= gamma < 1")
        _check(0 <= self.epsilon_min <= self.epsilon <= 1 and 0 < self.epsilon_decay <= 1,
               "train.qlearn needs 0 <= epsilon_min <= epsilon <= 1, 0 < epsilon_decay <= 1")
        for name in ("lr_min", "lr_max"):
            value = getattr(self, name)
            _check(value is None or value > 0, f"train.qlearn.{name} must be positive")
        if self.lr_min is not None and self.lr_max is not None:
            _check(self.lr_min <= self.lr_max, "train.qlearn.lr_min must be <= lr_max")
PRECISIONS = ("fp32", "bf16", "auto")
PARALLEL = ("auto", "ddp", "fsdp")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation, budget, evaluation and runtime settings.

    Budgets: ``steps`` and ``bytes`` are totals for the whole run (a resumed run continues
    towards them); ``minutes`` counts the wall-clock of one invocation. The first budget
    reached stops the run; the learning-rate schedule spans the budget.
    """

    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    schedule: str = "cosine"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    batch_size: int = 32
    grad_accum: int = 1
    grad_clip: float = 1.0
    steps: int | None = None
    bytes: int | None = None
    minutes: float | None = None
    eval_every: int = 250
    eval_bytes: int | None = 262144  # val bytes scored at periodic evals; None = all
    eval_stride: int | None = None  # None = context // 2
    patience: int | None = None
    log_every: int = 10
    precision: str = "fp32"
    compile: bool = False
    device: str = "auto"
    seed: int = 1337
    parallel: str = "auto"  # under torchrun: ddp (auto) or fsdp
    cpu_offload: bool = False  # FSDP: keep parameters and optimizer state on the CPU
    dist_timeout: float = 300.0  # seconds a collective waits for a rank before failing
    objective: str = "ce"  # or "mse": regress the next unit's embedding (DESIGN 5.8)
    lr_controller: str = "none"  # or "qlearn" (DESIGN 5.8; settings in train.qlearn)
    qlearn: QLearnConfig = field(default_factory=QLearnConfig)

    def validate(self) -> None:
        _check(self.lr > 0, "train.lr must be positive")
        _check(self.objective in OBJECTIVES, f"train.objective must be one of {OBJECTIVES}")
        _check(self.lr_controller in LR_CONTROLLERS,
               f"train.lr_controller must be one of {LR_CONTROLLERS}")
        self.qlearn.validate()
        _check(0.0 <= self.min_lr_ratio <= 1.0, "train.min_lr_ratio must be in [0, 1]")
        _check(self.schedule in SCHEDULES, f"train.schedule must be one of {SCHEDULES}")
        _check(self.precision in PRECISIONS, f"train.precision must be one of {PRECISIONS}")
        _check(self.batch_size > 0 and self.grad_accum > 0,
               "train.batch_size and train.grad_accum must be positive")
        _check(self.warmup_steps >= 0, "train.warmup_steps must be >= 0")
        _check(self.parallel in PARALLEL, f"train.parallel must be one of {PARALLEL}")
        _check(self.dist_timeout > 0, "train.dist_timeout must be positive")
        _check(self.eval_every > 0 and self.log_every > 0,
               "train.eval_every and train.log_every must be positive")
        for name in ("steps", "bytes", "minutes", "patience", "eval_bytes", "eval_stride"):
            value = getattr(self, name)
            _check(value is None or value > 0, f"train.{name} must be positive when given")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the bytes come from: a byte store, or a text file / folder ingested on the fly.

    ``val_fraction`` / ``val_bytes`` only apply when ``path`` is ingested on the fly.
    """

    path: str = ""
    val_fraction: float = 0.1
    val_bytes: int | None = None

    def validate(self) -> None:
        _check(0.0 < self.val_fraction < 1.0, "data.val_fraction must be in (0, 1)")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> RunConfig:
        self.train.validate()
        _check(self.model.objective == self.train.objective,
               "set the objective with train.objective (model.objective follows it)")
        self.model.validate()
        self.data.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}

# Named presets: partial sections applied over the defaults. Parameter counts are for the
# byte vocabulary; the token-free head and embedding are tied.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {  # unit tests: trains in a fraction of a second
        "model": {"dim": 32, "num_layers": 2, "num_heads": 2, "context": 32},
        "train": {"batch_size": 4, "warmup_steps": 2, "eval_every": 10, "eval_bytes": 2048,
                  "log_every": 1},
    },
    "demo": {  # `untok demo`: what learned fastest on the stdlib corpus in 3 CPU-minutes
        # (bench/demo.py): 2 layers of 128 plus hash 3-5-gram tables (6.3M of its 6.8M
        # parameters, cheap lookups) beat 4 layers, 192 wide, and larger contexts
        "model": {"dim": 128, "num_layers": 2, "num_heads": 4, "context": 128,
                  "embedding": {"ngrams": [3, 4, 5], "buckets": 16384}},
        "train": {"batch_size": 32, "lr": 3e-3, "warmup_steps": 50, "eval_every": 200,
                  "eval_bytes": 65536},
    },
    "small": {  # CPU demos: ~4.8M parameters
        "model": {"dim": 256, "num_layers": 6, "num_heads": 8, "context": 256},
        "train": {"batch_size": 32, "lr": 2e-3, "warmup_steps": 100},
    },
    "base": {  # ~25M parameters; a GPU or a patient CPU
        "model": {"dim": 512, "num_layers": 8, "num_heads": 8, "context": 512},
        "train": {"batch_size": 32, "lr": 1e-3, "warmup_steps": 500, "eval_every": 1000},
    },
    "large": {  # ~120M parameters; GPUs
        "model": {"dim": 768, "num_layers": 16, "num_heads": 12, "context": 1024},
        "train": {"batch_size": 64, "lr": 6e-4, "warmup_steps": 2000, "eval_every": 2000,
                  "precision": "auto"},
    },
    "entropy-small": {  # the entropy model that drives BLT's entropy patching: tiny, fast
        "model": {"dim": 128, "num_layers": 2, "num_heads": 4, "context": 128},
        "train": {"batch_size": 32, "lr": 3e-3, "warmup_steps": 50, "eval_every": 200,
                  "eval_bytes": 65536},
    },
    "blt-tiny": {  # unit tests
        "model": {"family": "blt", "dim": 32, "num_layers": 2, "num_heads": 2, "context": 48,
                  "embedding": {"ngrams": [3, 4], "buckets": 64},
                  "local": {"dim": 16, "num_heads": 2, "encoder_layers": 1,
                            "decoder_layers": 1, "window": 8, "slots": 2}},
        "train": {"batch_size": 4, "warmup_steps": 2, "eval_every": 10, "eval_bytes": 2048,
                  "log_every": 1},
    },
    "blt-small": {  # CPU: global 256 x 4 over patches, local 128-wide byte layers
        "model": {"family": "blt", "dim": 256, "num_layers": 4, "num_heads": 8,
                  "context": 512, "embedding": {"ngrams": [3, 4, 5, 6, 7, 8]},
                  "local": {"dim": 128, "num_heads": 4, "encoder_layers": 1,
                            "decoder_layers": 2, "window": 128, "slots": 2}},
        "train": {"batch_size": 16, "lr": 2e-3, "warmup_steps": 100},
    },
    "blt-base": {  # GPU: global 768 x 12, local 384-wide
        "model": {"family": "blt", "dim": 768, "num_layers": 12, "num_heads": 12,
                  "context": 2048, "embedding": {"ngrams": [3, 4, 5, 6, 7, 8],
                                                 "buckets": 65536},
                  "local": {"dim": 384, "num_heads": 6, "encoder_layers": 1,
                            "decoder_layers": 4, "window": 512, "slots": 2}},
        "train": {"batch_size": 32, "lr": 8e-4, "warmup_steps": 1000, "eval_every": 1000,
                  "precision": "auto"},
    },
    "mmfree-tiny": {  # unit tests
        "model": {"backbone": "mmfree", "dim": 32, "num_layers": 2, "context": 32},
        "train": {"batch_size": 4, "warmup_steps": 2, "eval_every": 10, "eval_bytes": 2048,
                  "log_every": 1},
    },
    "mmfree-small": {  # CPU: the `small` width and depth, ternary
        "model": {"backbone": "mmfree", "dim": 256, "num_layers": 6, "context": 256},
        "train": {"batch_size": 32, "lr": 3e-3, "warmup_steps": 100},
    },
    "mmfree-base": {  # GPU
        "model": {"backbone": "mmfree", "dim": 768, "num_layers": 12, "context": 1024},
        "train": {"batch_size": 32, "lr": 1.5e-3, "warmup_steps": 1000, "eval_every": 1000,
                  "precision": "auto"},
    },
}


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _suggest(name: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation; ints pass as floats, strings are parsed."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if isinstance(value, str) and annotation is not str:
        value = parse_value(value)
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if isinstance(value, str) and "kind" in {f.name for f in dataclasses.fields(annotation)}:
            value = {"kind": value}  # model.embedding = "wave" means kind = "wave"
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table of settings, got {value!r}")
        return _section_from_dict(annotation, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = typing.get_args(annotation)[0]
        return tuple(_coerce(v, item, key) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str and isinstance(value, str):
        return value
    raise ConfigError(f"{key}: expected {getattr(annotation, '__name__', annotation)}, "
                      f"got {value!r}")


def parse_value(text: str) -> Any:
    """Parse a command-line value the way TOML would (numbers, booleans, quoted strings)."""
    if text.lower() in ("none", "null"):
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _section_from_dict(cls: type, values: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}.{key}'"
                              f"{_suggest(key, names)}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}.{key}")
    return cls(**kwargs)


def from_dict(values: dict[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from nested dicts; unknown sections or keys are errors.

    ``model.objective`` follows ``train.objective`` (the one users set)."""
    values = dict(values)
    objective = values.get("train", {}).get("objective") if isinstance(
        values.get("train"), dict) else None
    if objective is not None and isinstance(values.get("model", {}), dict):
        values["model"] = {**values.get("model", {}), "objective": objective}
    sections = {}
    for name, section in values.items():
        if name not in SECTIONS:
            raise ConfigError(f"unknown config section '{name}'{_suggest(name, SECTIONS)}")
        if not isinstance(section, dict):
            raise ConfigError(f"config section '{name}' must be a table")
        sections[name] = _section_from_dict(SECTIONS[name], section, name)
    return RunConfig(**sections)


def _merge(base: dict[str, dict], update: dict[str, dict]) -> dict[str, dict]:
    merged = {name: dict(section) for name, section in base.items()}
    for name, section in update.items():
        if not isinstance(section, dict):
            raise ConfigError(f"config section '{name}' must be a table")
        merged[name] = _deep_update(merged.get(name, {}), section)
    return merged


def _deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` applied; nested tables merge key by key."""
    result = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _deep_update(result[key], value)
        else:
            result[key] = value
    return result


def preset(name: str) -> dict[str, dict[str, Any]]:
    """The overrides of a named preset."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'{_suggest(name, PRESETS)}; "
                          f"presets: {', '.join(PRESETS)}")
    return PRESETS[name]


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Read a TOML recipe: an optional top-level ``preset`` plus section tables."""
    path = Path(path)
    try:
        recipe = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"recipe not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"recipe {path} is a directory; pass a TOML file such as "
                          "recipes/tiny.toml") from None
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe {path} is not valid TOML: {exc}") from None
    extra = set(recipe) - set(SECTIONS) - {"preset", "description"}
    if extra:
        key = sorted(extra)[0]
        raise ConfigError(f"unknown key '{key}' in recipe {path}"
                          f"{_suggest(key, [*SECTIONS, 'preset'])}")
    return recipe


def parse_overrides(assignments: typing.Iterable[str]) -> dict[str, dict[str, Any]]:
    """Turn ``["train.lr=3e-4", "model.local.dim=96"]`` into nested dicts."""
    result: dict[str, Any] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        path = key.strip().split(".")
        if not sep or len(path) < 2 or not all(path):
            raise ConfigError(f"override '{item}' must look like section.key=value "
                              "(e.g. train.lr=3e-4)")
        table = result
        for name in path[:-1]:
            table = table.setdefault(name, {})
            if not isinstance(table, dict):
                raise ConfigError(f"override '{item}' conflicts with another override")
        table[path[-1]] = parse_value(value.strip())
    return result


def resolve(*, preset_name: str | None = None, recipe: str | Path | None = None,
            overrides: typing.Iterable[str] = (),
            base: dict[str, dict[str, Any]] | None = None) -> RunConfig:
    """Resolve defaults -> ``base`` -> preset -> recipe -> overrides into a valid config."""
    layers: dict[str, dict] = _merge({}, base or {})
    recipe_values = read_recipe(recipe) if recipe else {}
    name = preset_name or recipe_values.get("preset")
    if name:
        layers = _merge(layers, preset(name))
    layers = _merge(layers, {k: v for k, v in recipe_values.items() if k in SECTIONS})
    layers = _merge(layers, parse_overrides(overrides))
    return from_dict(layers).validate()


def replace(config: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    """A copy of ``config`` with some fields of some sections changed (checked)."""
    values = _merge(config.to_dict(), sections)
    return from_dict(values).validate()


def save_json(config: Any, path: str | Path) -> None:
    Path(path).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")
