"""The family registry: one entry per model family, and the one place that asks which
family a model is.

A :class:`Family` names the model class, how its units are made from its config, its own
config rules, an optional ``prepare`` hook that runs on the training data before the model
is built, and what it can do (:class:`Capabilities`). Commands ask for a capability with
:func:`require` and get a one-line error when the family lacks it. Registering a family
(:func:`register`) is all it takes to make it trainable, evaluable, loadable and part of
the protocol test suite; docs/architecture.md walks through adding one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from untok.checkpoint import (
    is_ternary_packed,
    load_weights,
    read_model_config,
    read_units,
    resolve_checkpoint,
)
from untok.config import FAMILY_RULES, ModelConfig, from_dict
from untok.data.store import ByteStore
from untok.errors import CheckpointError, ConfigError, UntokError
from untok.nn.bitlinear import pack_bitlinears
from untok.units import Units


@dataclass(frozen=True)
class Capabilities:
    """What a model of a family (with a given config) can serve."""

    can_compress: bool = False  # its scores carry a next-byte distribution (byte_logits)
    batch_decoding: bool = True  # new_state(B) for B > 1
    # decoding states that sequences begun at different times can share:
    # ``new_state(B, position=p)`` starts at position p, a state has ``position``,
    # ``select(rows)`` and ``join(other, start)``, each consuming the state it is called
    # on (untok serve batches requests with them)
    joins_rows: bool = False
    compiled_decoding: bool = False  # its ``compiled_steps`` have static shapes
    # ``new_state(B, window=w)``: attention over the last w units only while decoding
    windowed_decoding: bool = False
    # ``tail_entry()`` (the module whose input is the residual stream before the model's
    # last MLP), ``tail_modules()`` (the weights from there to the logits) and
    # ``tail_logits(x)``: the last MLP and the head adapt from states the step computed
    adapts_tail: bool = False
    export_ternary: bool = False  # has BitLinear layers to pack (untok export --ternary)
    patches: bool = False  # cuts bytes into patches (untok patches)
    # scores the next unit (forward/step/new_state); False for an autoencoder, which
    # evaluation scores by reconstruction and which cannot generate
    language_model: bool = True


@dataclass(frozen=True)
class TrainingData:
    """What a ``prepare`` hook may read: the run's byte store (use its ``train`` split
    only) and the device training runs on."""

    store: ByteStore
    device: torch.device
    progress: bool = False  # show a progress bar for long preparations


@dataclass(frozen=True)
class Family:
    """One model family.

    - ``model(config, units)`` builds the module (on whatever device is current);
    - ``units(config)`` gives the units of a config that has no saved units state;
    - ``validate(config)`` raises :class:`ConfigError` for settings the family rejects;
    - ``prepare(config, data)`` returns the config completed before building: with
      ``data=None`` (loading a checkpoint) only what needs no training data;
    - ``capabilities(config)``;
    - ``summary(config)``: one line of shape for ``untok presets``;
    - ``examples``: model-section settings of a tiny model of every variant (backbone x
      option) the family has; the protocol test suite runs each one.
    """

    name: str
    model: Callable[[ModelConfig, Units], nn.Module]
    units: Callable[[ModelConfig], Units]
    capabilities: Callable[[ModelConfig], Capabilities] = lambda config: Capabilities()
    validate: Callable[[ModelConfig], None] = lambda config: None
    prepare: Callable[[ModelConfig, TrainingData | None], ModelConfig] | None = None
    config: type = ModelConfig
    summary: Callable[[ModelConfig], str] = lambda c: shape_summary(c.family, c)
    examples: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    description: str = ""


FAMILIES: dict[str, Family] = {}


def shape_summary(kind: str, c: ModelConfig, heads: bool = True) -> str:
    """``kind  dim D  layers L  heads H  context C`` (the columns of ``untok presets``)."""
    shown = f"heads {c.num_heads:2d}" if heads else " " * 8
    return f"{kind:6s}  dim {c.dim:4d}  layers {c.num_layers:2d}  {shown}  context {c.context}"


def register(family: Family) -> Family:
    """Add ``family`` to the registry (replacing one of the same name)."""
    FAMILIES[family.name] = family
    FAMILY_RULES[family.name] = family.validate
    return family


def family_of(config_or_model: Any) -> Family:
    """The registered family of a model config or a model."""
    config = getattr(config_or_model, "config", config_or_model)
    name = config.family
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family '{name}'; families: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def capabilities(model: nn.Module) -> Capabilities:
    return family_of(model).capabilities(model.config)


def require(model: nn.Module, capability: str, task: str,
            error: type[UntokError] = UntokError) -> None:
    """A one-line ``error`` unless ``model`` has ``capability``; ``task`` says what needed
    it and what would serve (e.g. "compression codes bytes: use a byte model")."""
    if not getattr(capabilities(model), capability):
        raise error(f"this model (family '{model.config.family}', "
                    f"{describe(model.config)}) cannot serve this: {task}")


def describe(config: ModelConfig) -> str:
    """The settings that pick a model's variant, e.g. ``unit codepoint, head codepoint``."""
    defaults = ModelConfig()
    keys = ("unit", "backbone", "head", "embedding", "attention")
    changed = [f"{k} {getattr(config, k).kind if k == 'embedding' else getattr(config, k)}"
               for k in keys if getattr(config, k) != getattr(defaults, k)]
    return ", ".join(changed) or "defaults"


def prepare(config: ModelConfig, data: TrainingData | None = None) -> ModelConfig:
    """``config`` completed by its family's ``prepare`` hook (if any), validated."""
    config.validate()
    hook = family_of(config).prepare
    return hook(config, data) if hook is not None else config


def build_model(config: ModelConfig, device: torch.device | str = "cpu", init: bool = True,
                units: Units | None = None) -> nn.Module:
    """Build the model of ``config`` on the meta device, move it to ``device`` and
    initialise it (or leave it uninitialised for loading weights, with ``init=False``).
    ``units``: a saved units state (a learned vocabulary); else the family's default."""
    family = family_of(config)
    config = prepare(config)
    units = units if units is not None else family.units(config)
    with torch.device("meta"):
        model = family.model(config, units)
    model = model.to_empty(device=device)
    model.tie_weights()  # to_empty unties shared parameters
    if init:
        model.init_weights()
    return model


def examples() -> list[tuple[str, ModelConfig]]:
    """(id, config) of every registered family's tiny examples."""
    return [(f"{family.name}-{name}",
             from_dict({"model": {"family": family.name, **settings}}).model)
            for family in FAMILIES.values() for name, settings in family.examples.items()]


def load(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild the model saved in checkpoint ``path``, in eval mode, on ``device``."""
    path = resolve_checkpoint(path)
    config = read_model_config(path)
    try:
        model = build_model(config, device, init=False, units=read_units(path))
    except ConfigError as exc:
        raise CheckpointError(f"cannot build the model of {path}: {exc}") from None
    if is_ternary_packed(path):
        pack_bitlinears(model)  # the layers the packed weights load into
    load_weights(model, path, device)
    return model.eval()
