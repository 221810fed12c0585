"""Residual blocks: pre-norm attention + SwiGLU MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from untok.nn.attention import CausalSelfAttention, DifferentialAttention, KVCache, LocalWindow


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with gate and up fused into one matmul."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    """``x += attn(norm(x)); x += mlp(norm(x))``; ``attention = "differential"`` uses
    :class:`DifferentialAttention` with the lambda of ``layer`` (counted from 1);
    ``kv_heads``: key/value heads of standard attention (0: one per query head)."""

    def __init__(self, dim: int, num_heads: int, hidden: int, eps: float,
                 dropout: float = 0.0, attention: str = "standard", layer: int = 1,
                 kv_heads: int = 0) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(dim, eps=eps)
        self.attn = DifferentialAttention(dim, num_heads, layer, dropout) \
            if attention == "differential" else \
            CausalSelfAttention(dim, num_heads, dropout, kv_heads)
        self.mlp_norm = nn.RMSNorm(dim, eps=eps)
        self.mlp = SwiGLU(dim, hidden)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, positions: torch.Tensor | None = None,
                mask: torch.Tensor | LocalWindow | None = None) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, cache, positions, mask))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))

    def residual_outputs(self) -> list[nn.Linear]:
        """Projections that write into the residual stream (scaled down at init)."""
        return [self.attn.out, self.mlp.down]
