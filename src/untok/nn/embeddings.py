"""Unit embeddings."""

from __future__ import annotations

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
    """Sum over n in ``ngrams`` of ``E_n[hash(units t-n+1 .. t)]`` (DESIGN 5.2).

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
    """The last ``past.shape[1]`` units after appending ``ids`` (both Long[B, *])."""
    keep = past.shape[1]
    return torch.cat([past, ids], dim=1)[:, -keep:] if keep else past
