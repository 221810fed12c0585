"""Checkpoint directories: written atomically, loaded with checks.

::

    config.json         format and its version, untok version, family, model config
    units.json          the model's units (``Units.state()``: e.g. a learned vocabulary)
    model.safetensors   weights of the unwrapped module
    train_state.json    step, bytes seen, best val bpb, data position, seeds, run config
    optimizer.pt        optimizer, RNG states (training checkpoints only)
    metrics.jsonl       the run's log up to this checkpoint

A checkpoint is built in a hidden temporary directory and renamed into place, so a crash
never leaves a half-written directory under the final name. Format 1 (untok 0.1) had no
``units.json`` and named the head with other keys; it loads unchanged. Rebuilding the
model is :func:`untok.models.load`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from torch import nn

from untok.config import ModelConfig, from_dict
from untok.errors import CheckpointError, ConfigError
from untok.nn.bitlinear import is_packed
from untok.units import Units, units_from_state
from untok.version import __version__

FORMAT = "untok-checkpoint"
TERNARY_PACKED = "ternary-2bit"  # BitLinear weights stored as packed 2-bit codes
FORMAT_VERSION = 2


def resolve_checkpoint(path: str | Path, prefer: str = "best") -> Path:
    """A checkpoint directory; a run directory resolves to its ``best`` (else ``last``), or
    with ``prefer="last"`` (resuming) to its ``last`` (else ``best``)."""
    path = Path(path).expanduser()
    if (path / "config.json").is_file():
        return path
    for name in ("best", "last") if prefer == "best" else ("last", "best"):
        if (path / name / "config.json").is_file():
            return path / name
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    raise CheckpointError(f"{path} is not an untok checkpoint (no config.json); pass a "
                          "checkpoint directory such as runs/NAME/best")


def _replace_dir(tmp: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(directory: str | Path, model: nn.Module, *,
                    train_state: dict[str, Any] | None = None,
                    optimizer_state: dict[str, Any] | None = None,
                    metrics: Path | None = None) -> Path:
    """Write ``model`` (and training state) to ``directory`` atomically."""
    final = Path(directory)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        config = model.config
        header = {"format": FORMAT, "version": FORMAT_VERSION, "untok_version": __version__,
                  "family": config.family, "model": dataclasses.asdict(config)}
        if is_packed(model):
            header["weights"] = TERNARY_PACKED
        (tmp / "config.json").write_text(json.dumps(header, indent=2) + "\n")
        (tmp / "units.json").write_text(json.dumps(model.units.state(), indent=2) + "\n")
        save_model(model, str(tmp / "model.safetensors"))
        if train_state is not None:
            (tmp / "train_state.json").write_text(json.dumps(train_state, indent=2) + "\n")
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / "optimizer.pt")
        if metrics is not None and metrics.is_file():
            shutil.copyfile(metrics, tmp / "metrics.jsonl")
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_header(path: str | Path) -> dict[str, Any]:
    """The checked ``config.json`` of a checkpoint."""
    path = resolve_checkpoint(path)
    try:
        header = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt {path / 'config.json'}: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path / 'config.json'} is not an untok checkpoint config")
    version = header.get("version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version}, written by "
                              f"untok {header.get('untok_version')}; this untok "
                              f"({__version__}) reads versions up to {FORMAT_VERSION}: "
                              "upgrade untok")
    return header


def read_model_config(path: str | Path) -> ModelConfig:
    """The model config stored in a checkpoint, checked."""
    header = read_header(path)
    try:
        return from_dict({"model": header["model"]}).model
    except (ConfigError, KeyError) as exc:
        raise CheckpointError(f"invalid model config in {path}: {exc}") from None


def read_units(path: str | Path) -> Units | None:
    """The units saved with a checkpoint (None for format 1, which saved none)."""
    units_path = resolve_checkpoint(path) / "units.json"
    if not units_path.is_file():
        return None
    try:
        return units_from_state(json.loads(units_path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"corrupt {units_path}: {exc}") from None


def load_weights(model: nn.Module, path: str | Path, device: torch.device | str) -> None:
    """Load ``path``'s ``model.safetensors`` into ``model``, every tensor accounted for."""
    weights = resolve_checkpoint(path) / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"checkpoint {weights.parent} has no model.safetensors")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False,
                                         device=str(device))
    except (SafetensorError, RuntimeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load weights from {weights} (corrupt, or saved for a "
                              f"different model shape): {first}") from None
    if missing or unexpected:
        raise CheckpointError(f"weights in {weights} do not match its config: missing "
                              f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")


def is_ternary_packed(path: str | Path) -> bool:
    """Whether the checkpoint stores BitLinear weights as packed 2-bit codes."""
    return read_header(path).get("weights") == TERNARY_PACKED


def read_train_state(path: str | Path) -> dict[str, Any]:
    path = resolve_checkpoint(path)
    state_path = path / "train_state.json"
    if not state_path.is_file():
        raise CheckpointError(f"{path} holds no training state (train_state.json); it can be "
                              "evaluated or used for generation, not resumed")
    try:
        return json.loads(state_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"corrupt {state_path}: {exc}") from None


def read_optimizer_state(path: str | Path) -> dict[str, Any]:
    opt_path = resolve_checkpoint(path) / "optimizer.pt"
    if not opt_path.is_file():
        raise CheckpointError(f"{opt_path} is missing; cannot resume exactly")
    try:
        return torch.load(opt_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"corrupt {opt_path}: {exc}") from None
