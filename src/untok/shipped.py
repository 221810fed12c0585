"""The byte model that ships inside the package: what ``untok compress`` and ``untok
decompress`` use when no ``-m`` is given.

It is trained by ``recipes/compress-default.toml`` on the mixture of
``recipes/compress_mixture.py`` and packed by :func:`pack` as an ordinary checkpoint
directory with fp16 weights (half the size; they load into an fp32 model, so every file it
writes names the SHA-256 of those fp32 weights, as for any checkpoint).

A default model that a release replaces moves to ``shipped/earlier/<n>``: only the default
compresses, but :func:`shipped_model` finds any of them by the weights a file names, so the
files every earlier default wrote keep decompressing with no ``-m``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from untok.checkpoint import resolve_checkpoint, save_checkpoint
from untok.errors import UntokError
from untok.models import load

SHIPPED = Path(__file__).resolve().parent / "shipped" / "compress"
EARLIER = SHIPPED.parent / "earlier"  # earlier defaults: <n>/ each, 1 the first


def has_default_model() -> bool:
    return (SHIPPED / "model.safetensors").is_file()


def default_model(device: torch.device | str = "cpu") -> nn.Module:
    """The shipped compression model, in fp32 on ``device``."""
    if not has_default_model():
        raise UntokError("this untok build ships no default compression model; pass -m "
                         "CHECKPOINT (or build one: recipes/compress-default.toml)")
    return load(SHIPPED, device)


def shipped_model(accepts: Callable[[nn.Module], bool],
                  device: torch.device | str = "cpu") -> nn.Module:
    """The shipped model that ``accepts``: the default, else the earlier defaults (newest
    first); the default when none does (its caller then says which model is missing)."""
    default = default_model(device)
    if accepts(default):
        return default
    earlier = sorted(EARLIER.glob("*/model.safetensors"), key=lambda p: -int(p.parent.name))
    for path in earlier:
        model = load(path.parent, device)
        if accepts(model):
            return model
    return default


def pack(checkpoint: str | Path, out: str | Path = SHIPPED) -> dict[str, int]:
    """Write ``checkpoint``'s model to ``out`` with fp16 weights; returns sizes in bytes."""
    source = resolve_checkpoint(checkpoint)
    model = load(source).half()
    save_checkpoint(out, model)
    return {"params": sum(p.numel() for p in model.parameters()),
            "bytes": (Path(out) / "model.safetensors").stat().st_size,
            "source_bytes": (source / "model.safetensors").stat().st_size}
