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


def _widths(width: int, levels: tuple[int, ...], dim: int, byte_dim: int
            ) -> tuple[tuple[int, ...], list[int]]:
    """The merge factors (a character's bytes first) and the vector width before each."""
    factors = (width, *levels)
    return factors, [byte_dim] + [dim] * len(factors)


class ChunkEncoder(nn.Module):
    """Long[..., G, W] bytes of ``prod(levels)`` characters of ``width`` bytes ->
    Float[..., dim]."""

    def __init__(self, width: int, levels: tuple[int, ...], dim: int,
                 byte_dim: int = 64) -> None:
        super().__init__()
        self.width, self.levels, self.dim = width, tuple(levels), dim
        self.chars = math.prod(levels)
        factors, widths = _widths(width, self.levels, dim, byte_dim)
        self.embed = nn.Embedding(256, byte_dim)
        self.merges = nn.ModuleList(Merge(f, widths[i], widths[i + 1])
                                    for i, f in enumerate(factors))

    def characters(self, data: torch.Tensor) -> torch.Tensor:
        """Long[..., W] bytes -> Float[..., dim]: one vector per character (the first
        level)."""
        return self.merges[0](self.embed(data))

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        x = self.characters(data)  # (..., G, E)
        for merge in self.merges[1:]:
            x = merge(x.unflatten(-2, (-1, merge.factor)))  # (..., G / f, E)
        return x[..., 0, :]  # (..., E)


class ChunkDecoder(nn.Module):
    """The mirror of :class:`ChunkEncoder`: Float[..., dim] -> logits Float[..., G, W, 256]."""

    def __init__(self, width: int, levels: tuple[int, ...], dim: int,
                 byte_dim: int = 64) -> None:
        super().__init__()
        factors, widths = _widths(width, tuple(levels), dim, byte_dim)
        self.splits = nn.ModuleList(Split(f, widths[i + 1], widths[i])
                                    for i, f in reversed(list(enumerate(factors))))
        self.out = nn.Linear(byte_dim, 256)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        x = vectors[..., None, :]  # (..., 1, E)
        for split in self.splits[:-1]:
            x = split(x).flatten(-3, -2)  # (..., n * f, E)
        return self.out(self.splits[-1](x))  # (..., G, W, 256)


class ChunkAutoencoder(nn.Module):
    """Bytes of ``prod(levels)`` characters of ``width`` bytes <-> one vector of ``dim``."""

    def __init__(self, width: int, levels: tuple[int, ...], dim: int,
                 byte_dim: int = 64) -> None:
        super().__init__()
        self.encoder = ChunkEncoder(width, levels, dim, byte_dim)
        self.decoder = ChunkDecoder(width, levels, dim, byte_dim)
        self.width, self.levels, self.chars = width, tuple(levels), self.encoder.chars

    def encode(self, data: torch.Tensor) -> torch.Tensor:
        """Long[..., G, W] bytes -> Float[..., E]."""
        return self.encoder(data)

    def decode(self, vectors: torch.Tensor) -> torch.Tensor:
        """Float[..., E] -> logits Float[..., G, W, 256]."""
        return self.decoder(vectors)

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
