"""The tokun chunk autoencoder: G characters' fixed-width bytes -> one vector -> the bytes.

The encoder embeds each byte (a 256-row table of width ``byte_dim``), then merges groups
level by level: a level of factor f concatenates f neighbouring vectors and maps them to
one (``Linear(f * d_in, d_out)`` + GELU + RMSNorm). The first level merges a character's
``width`` bytes; the next merge characters (``levels = (4,)`` for 4 characters to a chunk,
``(16,)`` or ``(4, 4)`` for 16). The decoder mirrors it (``Linear(d_in, f * d_out)`` +
GELU + RMSNorm, split into f vectors) and ends in a 256-way output per byte.

Shapes: bytes Long[B, S, G, W] -> vectors Float[B, S, E] -> logits Float[B, S, G, W, 256].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Merge(nn.Module):
    """f vectors of width ``d_in`` -> one of width ``d_out`` (the last two axes)."""

    def __init__(self, factor: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.factor = factor
        self.proj = nn.Linear(factor * d_in, d_out)
        self.norm = nn.RMSNorm(d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., f, d_in) -> (..., d_out)
        return self.norm(F.gelu(self.proj(x.flatten(-2))))


class Split(nn.Module):
    """One vector of width ``d_in`` -> f of width ``d_out``."""

    def __init__(self, factor: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.factor = factor
        self.proj = nn.Linear(d_in, factor * d_out)
        self.norm = nn.RMSNorm(d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., d_in) -> (..., f, d_out)
        return self.norm(F.gelu(self.proj(x).unflatten(-1, (self.factor, -1))))


class ChunkAutoencoder(nn.Module):
    """Bytes of ``prod(levels)`` characters of ``width`` bytes <-> one vector of ``dim``."""

    def __init__(self, width: int, levels: tuple[int, ...], dim: int,
                 byte_dim: int = 64) -> None:
        super().__init__()
        self.width, self.levels = width, tuple(levels)
        self.chars = math.prod(levels)
        factors = (width, *levels)
        widths = [byte_dim] + [dim] * len(factors)
        self.embed = nn.Embedding(256, byte_dim)
        self.encoder = nn.ModuleList(Merge(f, widths[i], widths[i + 1])
                                     for i, f in enumerate(factors))
        self.decoder = nn.ModuleList(Split(f, widths[i + 1], widths[i])
                                     for i, f in reversed(list(enumerate(factors))))
        self.out = nn.Linear(byte_dim, 256)

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        """Long[..., G, W] bytes -> Float[..., E]."""
        x = self.embed(data)  # (..., G, W, e)
        x = self.encoder[0](x)  # (..., G, E): one vector per character
        for merge in self.encoder[1:]:
            x = merge(x.unflatten(-2, (-1, merge.factor)))  # fold neighbours
            # (..., G / f, E)
        return x[..., 0, :]  # (..., E)

    def decode(self, vectors: torch.Tensor) -> torch.Tensor:
        """Float[..., E] -> logits Float[..., G, W, 256]."""
        x = vectors[..., None, :]  # (..., 1, E)
        for split in self.decoder[:-1]:
            x = split(x).flatten(-3, -2)  # (..., n * f, E)
        x = self.decoder[-1](x)  # (..., G, W, e)
        return self.out(x)

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(data))


def reconstruction_loss(logits: torch.Tensor, data: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy per byte (nats) of logits Float[..., G, W, 256] against the
    bytes Long[..., G, W]; ``mask`` Bool[..., G] keeps characters (padding out)."""
    nll = F.cross_entropy(logits.flatten(0, -2).float(), data.flatten(), reduction="none")
    nll = nll.view(data.shape)
    if mask is None:
        return nll.mean()
    keep = mask[..., None].expand_as(data)
    return (nll * keep).sum() / keep.sum().clamp(min=1)


def strict_accuracy(logits: torch.Tensor, data: torch.Tensor,
                    mask: torch.Tensor | None = None) -> float:
    """The share of characters whose every byte is decoded right."""
    right = (logits.argmax(-1) == data).all(-1)  # (..., G)
    if mask is None:
        return float(right.float().mean())
    return float((right & mask).sum() / mask.sum().clamp(min=1))
