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
