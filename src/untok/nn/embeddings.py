"""Unit embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn


class ByteEmbedding(nn.Module):
    """A plain table: one learned vector per unit id."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab_size, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table(ids)  # (B, T) -> (B, T, D)


class HashNgramEmbedding(nn.Module):
    """Sum over n in ``ngrams`` of ``E_n[hash(units t-n+1 .. t)]`` (see docs/options.md).

    The hash is a polynomial in the units *ending at* t, so it never sees the future;
    positions with fewer than n units of history hash what exists (missing units count as
    a value no unit has). Each n has its own ``buckets x dim`` table.
    """

    MODULUS = 2_147_483_647  # 2^31 - 1: products stay inside int64
    BASE = 1_000_003

    def __init__(self, dim: int, ngrams: tuple[int, ...], buckets: int) -> None:
        super().__init__()
        self.ngrams = tuple(sorted(ngrams))
        self.buckets = buckets
        self.table = nn.Embedding(len(self.ngrams) * buckets, dim)

    @property
    def history(self) -> int:
        """Units before t that position t's hashes read."""
        return max(self.ngrams) - 1

    def bucket_ids(self, ids: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        """Long[B, T] (+ Long[B, history] earlier units, -1 = none) -> Long[B, T, len(ngrams)]."""
        B, T = ids.shape
        if past is None:
            past = ids.new_full((B, self.history), -1)
        values = torch.cat([past, ids], dim=1) + 1  # 0 = no unit
        H = past.shape[1]
        hashes, h = [], torch.zeros_like(ids)
        for k in range(1, max(self.ngrams) + 1):  # h_k(t) = h_{k-1}(t) * BASE + x_{t-k+1}
            h = (h * self.BASE + values[:, H - k + 1:H - k + 1 + T]) % self.MODULUS
            if k in self.ngrams:
                hashes.append(h % self.buckets)
        offsets = torch.arange(len(self.ngrams), device=ids.device) * self.buckets
        return torch.stack(hashes, dim=-1) + offsets  # (B, T, K): one table per n

    def forward(self, ids: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        return self.table(self.bucket_ids(ids, past)).sum(dim=2)  # (B, T, D)


def update_past(past: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The last ``past.shape[1]`` units after appending ``ids`` (both Long[B, *]), with
    standard strides (a compiled step recompiles for a slice's strides)."""
    keep = past.shape[1]
    if not keep:
        return past
    return torch.cat([past, ids], dim=1)[:, -keep:].clone(memory_format=torch.contiguous_format)


class WaveEmbedding(nn.Module):
    """A table-free embedding (see docs/options.md): ``mlp(a_k sin(w_k v + p_k))`` for
    k < ``waves``.

    Frequencies, phases and amplitudes are learned. At init the periods are spread
    log-uniformly from 2 units (neighbouring values differ) to twice ``max_value`` (far
    values differ), so every value gets a distinct vector. The parameter count does not
    depend on the alphabet. Angles are computed in float64 and reduced modulo 2 pi, so
    code points up to 0x10FFFF keep their precision.
    """

    def __init__(self, dim: int, waves: int, max_value: int) -> None:
        super().__init__()
        self.scale = float(max_value)  # frequencies are per unit of v / scale: Adam steps
        self.frequency = nn.Parameter(torch.empty(waves))  # move angles by at most lr
        self.phase = nn.Parameter(torch.empty(waves))
        self.amplitude = nn.Parameter(torch.empty(waves))
        self.mlp = nn.Sequential(nn.Linear(waves, dim), nn.SiLU(), nn.Linear(dim, dim))

    @torch.no_grad()
    def init_parameters(self) -> None:
        waves = self.frequency.numel()
        periods = torch.logspace(math.log10(2.0), math.log10(2.0 * self.scale), waves,
                                 dtype=torch.float64)
        self.frequency.copy_(2 * math.pi * self.scale / periods)
        self.phase.uniform_(0.0, 2 * math.pi)
        self.amplitude.fill_(1.0)
        first, last = self.mlp[0], self.mlp[2]
        nn.init.normal_(first.weight, std=1.0 / math.sqrt(waves))  # unit pre-activations
        # outputs of std 0.02 like a table's rows (E[silu(z)^2] = 0.36 for z ~ N(0, 1))
        nn.init.normal_(last.weight, std=0.02 / math.sqrt(0.36 * last.in_features))

    def waves(self, ids: torch.Tensor) -> torch.Tensor:
        """Long[...] -> the sinusoid features Float[..., waves]."""
        u = ids.to(torch.float64)[..., None] / self.scale
        angle = u * self.frequency.to(torch.float64) + self.phase.to(torch.float64)
        return self.amplitude * torch.sin(torch.remainder(angle, 2 * math.pi)).to(
            self.amplitude.dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.waves(ids))  # (B, T) -> (B, T, D)

    def table(self, count: int) -> torch.Tensor:
        """The embeddings of ids ``0 .. count-1`` (Float[count, D]), e.g. to score every
        candidate unit (a tied output)."""
        return self(torch.arange(count, device=self.frequency.device))


class CodepointEmbedding(nn.Module):
    """A code-point table without a 1.1M-row table: ``E_block[id >> 8] + E_offset[id & 255]``
    (4,360 + 256 rows: characters of one 256-character block share a vector)."""

    BLOCKS = 0x1100 + 8  # blocks of U+0000..U+10FFFF plus the specials' block, padded

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.block = nn.Embedding(self.BLOCKS, dim)
        self.offset = nn.Embedding(256, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.block(ids >> 8) + self.offset(ids & 255)  # (B, T) -> (B, T, D)


def make_ngrams(dim: int, ngrams: tuple[int, ...], buckets: int) -> HashNgramEmbedding | None:
    """Hash n-gram tables for ``ngrams`` (none when empty)."""
    return HashNgramEmbedding(dim, ngrams, buckets) if ngrams else None


def embed_with_ngrams(embed: nn.Module, ngrams: HashNgramEmbedding | None, ids: torch.Tensor,
                      past: torch.Tensor | None = None) -> torch.Tensor:
    """``embed(ids)`` plus the hash n-grams ending at each unit (Long[B, T] -> Float[B, T, D]);
    ``past`` holds the units before ``ids`` (Long[B, history], -1 = none)."""
    x = embed(ids)
    return x if ngrams is None else x + ngrams(ids, past)


def empty_past(ngrams: HashNgramEmbedding | None, batch: int, device: torch.device
               ) -> torch.Tensor:
    """The decoding history of a fresh sequence: Long[B, history] of -1 (no unit yet)."""
    history = ngrams.history if ngrams is not None else 0
    return torch.full((batch, history), -1, dtype=torch.long, device=device)
