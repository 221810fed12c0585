"""The config schema: frozen dataclasses for the three sections of a run.

A run is a :class:`RunConfig` with ``model``, ``train`` and ``data`` sections; how one is
resolved from presets, recipes and ``--set`` overrides is in :mod:`untok.config.loading`.
Each registered family adds its own rules to :meth:`ModelConfig.validate` through
``FAMILY_RULES`` (see docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from untok.errors import ConfigError
from untok.units import VOCAB_SIZE

EMBEDDINGS = ("table", "wave")


@dataclass(frozen=True, kw_only=True)
class EmbeddingConfig:
    """How units become vectors (see docs/options.md). ``kind``: ``table`` (one learned vector per
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
        check(self.kind in EMBEDDINGS, f"model.embedding.kind must be one of {EMBEDDINGS}")
        check(self.waves >= 2, "model.embedding.waves must be >= 2")
        check(all(n >= 2 for n in self.ngrams), "model.embedding.ngrams must all be >= 2")
        check(len(set(self.ngrams)) == len(self.ngrams),
               "model.embedding.ngrams must not repeat a size")
        check(self.buckets > 0, "model.embedding.buckets must be positive")


PATCHERS = ("fixed", "space", "entropy", "learned")
BACKBONES = ("transformer", "mmfree")
UNITS = ("byte", "codepoint")
ATTENTIONS = ("standard", "differential")
# How the final hidden state becomes next-unit scores: "tied" (a linear map sharing the
# embedding table; with wave embeddings, scores against every unit's embedding), "linear"
# (its own weights), "distance" (regress the next unit's embedding; scores are distances
# with a learned temperature), "codepoint" (the factorized code-point head), "ternary" (a
# BitLinear map, MatMul-free models). "auto": "codepoint" for code points, else "tied".
HEADS = ("auto", "tied", "linear", "distance", "codepoint", "ternary")
# Each registered family's own config rules (filled by untok.models.registry.register).
FAMILY_RULES: dict[str, typing.Callable[[ModelConfig], None]] = {}


@dataclass(frozen=True, kw_only=True)
class PatchingConfig:
    """How a BLT cuts bytes into patches (see docs/architecture.md, BLT).

    ``entropy``: a patch starts where the entropy model's next-byte entropy exceeds
    ``threshold`` (global), or rises by more than ``relative`` over the previous byte's
    (approximately monotonic), or both; with neither set, training fits ``threshold`` to
    ``target_len`` bytes per patch on a sample of the train split. ``entropy_shape`` and
    ``entropy_sha256`` are filled in from the ``entropy_model`` checkpoint when the model
    is built; the weights are copied into the BLT's own checkpoint.

    ``learned``: a router on the byte encoder's states decides (see
    :mod:`untok.nn.routing`), trained end to end; a ratio loss of weight ``ratio_weight``
    keeps patches near ``target_len`` bytes on average.
    """

    kind: str = "space"
    patch_size: int = 4  # fixed
    max_len: int = 16  # space and entropy
    threshold: float | None = None
    relative: float | None = None
    target_len: float = 4.0
    ratio_weight: float = 0.03  # learned
    newline_reset: bool = False
    entropy_model: str = ""
    entropy_sha256: str = ""
    entropy_shape: ModelConfig | None = None

    def validate(self) -> None:
        check(self.kind in PATCHERS, f"model.patching.kind must be one of {PATCHERS}")
        check(self.patch_size >= 1, "model.patching.patch_size must be >= 1")
        check(self.max_len >= 1, "model.patching.max_len must be >= 1")
        check(self.target_len >= 1, "model.patching.target_len must be >= 1")
        check(self.ratio_weight >= 0, "model.patching.ratio_weight must be >= 0")
        if self.kind == "learned":
            check(1 < self.target_len < self.max_len, "learned patching needs 1 < "
                  "model.patching.target_len < model.patching.max_len")
            check(not self.newline_reset, "model.patching.newline_reset applies to "
                  "entropy patching only")
        if self.kind == "entropy":
            check(bool(self.entropy_model) or self.entropy_shape is not None,
                   "entropy patching needs an entropy model: pass --entropy-model CKPT "
                   "(train one with `untok train --preset entropy-small`) or choose "
                   "--patching space|fixed")
        if self.entropy_shape is not None:
            self.entropy_shape.validate()  # and the BLT family checks what it is


@dataclass(frozen=True, kw_only=True)
class LocalConfig:
    """BLT's byte-level encoder and decoder (see docs/architecture.md, BLT); the global
    model over patches takes the main ``dim``/``num_layers``/``num_heads`` of the model
    config."""

    dim: int = 128
    num_heads: int = 4
    encoder_layers: int = 1
    decoder_layers: int = 2
    window: int = 128  # local attention window in bytes
    slots: int = 2  # k query slots per patch; the patch vector is k x dim

    def validate(self) -> None:
        check(self.dim > 0 and self.num_heads > 0 and self.dim % self.num_heads == 0,
               "model.local.dim must be a positive multiple of model.local.num_heads")
        check((self.dim // self.num_heads) % 2 == 0,
               "model.local.dim / model.local.num_heads must be even (RoPE)")
        check(self.encoder_layers >= 0 and self.decoder_layers >= 1,
               "model.local needs encoder_layers >= 0 and decoder_layers >= 1")
        check(self.window >= 1 and self.slots >= 1,
               "model.local.window and model.local.slots must be >= 1")


@dataclass(frozen=True, kw_only=True)
class WordsConfig:
    """The T-Free family's word codes and dictionary (``family = "tfree"``).

    A word's code: m = ``ids_per_trigram`` hashed ids of v = ``hash_size`` per byte trigram,
    k = ``lowercase_ids`` of them shared with the lowercase trigram. The dictionary holds
    the ``dict_size`` most frequent train words (and the special words); ``dictionary`` is
    the cached file it was built into when training started (the words travel in
    ``units.json``). ``multilabel_weight`` weighs the multi-label loss (0: the word softmax
    alone), ``pos_weight`` its positives; ``edge_weight`` scales a word's first and last
    trigram's ids when scoring; ``softmax_positions``: rows' positions training the word
    softmax (0: all); ``word_bias``: per-word log priors; ``spelling_order``: see docs/tfree.md."""

    hash_size: int = 8192
    ids_per_trigram: int = 8
    lowercase_ids: int = 2
    dict_size: int = 16384
    multilabel_weight: float = 0.25
    pos_weight: float = 100.0
    edge_weight: float = 1.0
    softmax_positions: int = 0
    word_bias: bool = False
    spelling_order: int = 5
    seed: int = 0
    dictionary: str = ""

    def validate(self) -> None:
        check(self.hash_size >= 16 and self.ids_per_trigram >= 1,
              "model.words.hash_size must be >= 16 and ids_per_trigram >= 1")
        check(0 <= self.lowercase_ids <= self.ids_per_trigram <= self.hash_size // 4,
              "model.words needs 0 <= lowercase_ids <= ids_per_trigram <= hash_size / 4")
        check(self.dict_size >= 1, "model.words.dict_size must be >= 1 (words scored)")
        check(self.pos_weight > 0 and min(self.edge_weight, self.multilabel_weight) >= 0,
              "model.words.pos_weight must be > 0, edge_weight and multilabel_weight >= 0")
        check(self.softmax_positions >= 0 and 1 <= self.spelling_order <= 7, "model.words "
              "needs softmax_positions >= 0 (0: all) and spelling_order in 1..7")


@dataclass(frozen=True, kw_only=True)
class ChunksConfig:
    """tokun's chunks (families ``tokun``, the autoencoder, and ``tokun-lm``, the chunk
    language model; see docs/tokun.md).

    A character is ``width`` bytes of its UTF-32-BE code (3: the always-zero top byte
    dropped); a chunk is ``prod(levels)`` characters merged level by level into one vector
    of ``dim``; ``byte_dim`` is the byte embedding's width (a character's vector is its
    bytes' embeddings side by side) and ``char_dim`` the width of a character in the
    autoencoder's decoder, which can train on a ``random_chars`` share of random code
    points (characters its corpus lacks). For ``tokun-lm``: ``encoder`` names an
    autoencoder checkpoint to start from (empty: a fresh encoder), ``train_encoder =
    false`` keeps it frozen; ``decoder_layers`` causal blocks of ``decoder_dim`` (0: the
    model's ``dim``) predict each character, over its chunk's characters
    (``decoder_window = 0``; ``previous_char``: a chunk's first slot also reads the last
    character before it) or over the last ``decoder_window`` characters, across chunks."""

    width: int = 3
    levels: tuple[int, ...] = (4,)
    dim: int = 256
    byte_dim: int = 16
    char_dim: int = 32
    random_chars: float = 0.0
    encoder: str = ""
    train_encoder: bool = True
    decoder_layers: int = 1
    decoder_dim: int = 0
    previous_char: bool = False
    decoder_window: int = 0

    @property
    def size(self) -> int:
        """Characters per chunk."""
        return math.prod(self.levels)

    def validate(self) -> None:
        check(self.width in (3, 4), "model.chunks.width must be 3 (UTF-32 without its "
              "always-zero top byte) or 4")
        check(len(self.levels) >= 1 and all(f >= 2 for f in self.levels),
              "model.chunks.levels must list merge factors >= 2, e.g. [4], [16] or [4, 4]")
        check(self.dim > 0 and self.byte_dim > 0 and self.char_dim > 0,
              "model.chunks.dim, byte_dim and char_dim must be positive")
        check(0 <= self.random_chars < 1, "model.chunks.random_chars must be in [0, 1)")
        check(self.decoder_layers >= 1 and self.decoder_dim >= 0,
              "model.chunks needs decoder_layers >= 1 and decoder_dim >= 0")
        check(self.train_encoder or bool(self.encoder), "model.chunks.train_encoder = false "
              "freezes a trained encoder: name its checkpoint in model.chunks.encoder")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape of a byte model. ``mlp_hidden = 0`` picks 8/3 x dim rounded up to 64.

    For ``family = "blt"`` the main fields shape the global model over patches and
    ``context`` counts bytes; ``patching`` and ``local`` apply to BLT only.
    """

    family: str = "flat"
    unit: str = "byte"  # or "codepoint": one id per Unicode character (see docs/options.md)
    vocab_size: int = VOCAB_SIZE
    context: int = 256  # training window in units; also the KV-cache length
    dim: int = 256
    num_layers: int = 6
    num_heads: int = 8
    kv_heads: int = 0  # key/value heads (grouped-query attention); 0: num_heads
    mlp_hidden: int = 0
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    backbone: str = "transformer"  # or "mmfree" (MLGRU + BitLinear GLU)
    head: str = "auto"  # see HEADS
    attention: str = "standard"  # or "differential"
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    patching: PatchingConfig = field(default_factory=PatchingConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    words: WordsConfig = field(default_factory=WordsConfig)
    chunks: ChunksConfig = field(default_factory=ChunksConfig)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def hidden_dim(self) -> int:
        if self.mlp_hidden:
            return self.mlp_hidden
        return -(-int(self.dim * 8 / 3) // 64) * 64

    def validate(self) -> None:
        check(self.dim > 0 and self.num_layers > 0 and self.num_heads > 0,
               "model.dim, model.num_layers and model.num_heads must be positive")
        check(self.dim % self.num_heads == 0,
               f"model.dim ({self.dim}) must be divisible by model.num_heads ({self.num_heads})")
        check(self.head_dim % 2 == 0, "model.dim / model.num_heads must be even (RoPE)")
        check(self.kv_heads >= 0 and self.num_heads % max(self.kv_heads, 1) == 0,
               f"model.kv_heads ({self.kv_heads}) must divide model.num_heads "
               f"({self.num_heads}); 0 gives every query head its own")
        check(self.kv_heads in (0, self.num_heads) or (self.attention == "standard"
                                                        and self.backbone == "transformer"),
               "model.kv_heads applies to standard attention in a transformer: leave it 0")
        check(self.context >= 2, "model.context must be at least 2")
        check(self.vocab_size >= VOCAB_SIZE, f"model.vocab_size must be >= {VOCAB_SIZE}")
        check(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        self.embedding.validate()
        check(self.backbone in BACKBONES, f"model.backbone must be one of {BACKBONES}")
        check(self.unit in UNITS, f"model.unit must be one of {UNITS}")
        check(self.attention in ATTENTIONS, f"model.attention must be one of {ATTENTIONS}")
        check(self.head in HEADS, f"model.head must be one of {HEADS}")
        if self.attention == "differential":
            check(self.num_heads % 2 == 0 and self.head_dim % 2 == 0,
                   "differential attention pairs heads: model.num_heads must be even")
        check(self.family in FAMILY_RULES, f"unknown model family '{self.family}'; "
               f"families: {', '.join(FAMILY_RULES)}")
        FAMILY_RULES[self.family](self)

    def require_defaults(self, names: typing.Iterable[str], why: str) -> None:
        """A config error naming the first of ``names`` (dotted paths such as
        ``embedding.kind``) that is not at its default."""
        defaults = ModelConfig()
        for name in names:
            value, default = self, defaults
            for part in name.split("."):
                value, default = getattr(value, part), getattr(default, part)
            shown = "changed" if dataclasses.is_dataclass(value) else repr(value)
            check(value == default, f"model.{name} = {shown}: {why}")


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
        check(len(self.actions) > 0 and all(a > 0 for a in self.actions),
               "train.qlearn.actions must be positive learning-rate factors")
        check(self.every >= 1, "train.qlearn.every must be >= 1")
        check(0 < self.alpha <= 1 and 0 <= self.gamma < 1,
               "train.qlearn needs 0 < alpha <= 1 and 0 <= gamma < 1")
        check(0 <= self.epsilon_min <= self.epsilon <= 1 and 0 < self.epsilon_decay <= 1,
               "train.qlearn needs 0 <= epsilon_min <= epsilon <= 1, 0 < epsilon_decay <= 1")
        for name in ("lr_min", "lr_max"):
            value = getattr(self, name)
            check(value is None or value > 0, f"train.qlearn.{name} must be positive")
        if self.lr_min is not None and self.lr_max is not None:
            check(self.lr_min <= self.lr_max, "train.qlearn.lr_min must be <= lr_max")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
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
    lr_controller: str = "none"  # or "qlearn" (see docs/options.md; settings in train.qlearn)
    qlearn: QLearnConfig = field(default_factory=QLearnConfig)
    init: str | None = None  # a checkpoint whose weights a new run starts from (fine-tuning)
    tracker: str = "none"  # or "tensorboard" / "wandb": metrics mirrored (train/tracking.py)
    sample_bytes: int = 64  # bytes generated from a val prompt at each evaluation; 0 = none
    # entropy patching: score the store once with the entropy model (untok data entropies)
    # when its cache is missing or was made by another model, and read patches from it
    entropy_cache: bool = True

    def validate(self) -> None:
        check(self.lr > 0, "train.lr must be positive")
        check(self.lr_controller in LR_CONTROLLERS,
               f"train.lr_controller must be one of {LR_CONTROLLERS}")
        check(self.tracker in ("none", "tensorboard", "wandb"),
              "train.tracker must be none, tensorboard or wandb")
        check(self.sample_bytes >= 0, "train.sample_bytes must be >= 0")
        self.qlearn.validate()
        check(0.0 <= self.min_lr_ratio <= 1.0, "train.min_lr_ratio must be in [0, 1]")
        check(self.schedule in SCHEDULES, f"train.schedule must be one of {SCHEDULES}")
        check(self.precision in PRECISIONS, f"train.precision must be one of {PRECISIONS}")
        check(self.batch_size > 0 and self.grad_accum > 0,
               "train.batch_size and train.grad_accum must be positive")
        check(self.warmup_steps >= 0, "train.warmup_steps must be >= 0")
        check(self.parallel in PARALLEL, f"train.parallel must be one of {PARALLEL}")
        check(self.dist_timeout > 0, "train.dist_timeout must be positive")
        check(self.eval_every > 0 and self.log_every > 0,
               "train.eval_every and train.log_every must be positive")
        for name in ("steps", "bytes", "minutes", "patience", "eval_bytes", "eval_stride"):
            value = getattr(self, name)
            check(value is None or value > 0, f"train.{name} must be positive when given")


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the bytes come from: a byte store, or a text file / folder ingested on the fly.

    ``val_fraction`` / ``val_bytes`` only apply when ``path`` is ingested on the fly.
    """

    path: str = ""
    val_fraction: float = 0.1
    val_bytes: int | None = None

    def validate(self) -> None:
        check(0.0 < self.val_fraction < 1.0, "data.val_fraction must be in (0, 1)")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def validate(self) -> RunConfig:
        self.train.validate()
        self.model.validate()
        self.data.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig}

def check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def suggest(name: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


