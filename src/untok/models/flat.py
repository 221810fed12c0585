"""The flat byte transformer: embeddings -> pre-norm blocks -> RMSNorm -> head.

The baseline every other design in untok has to beat (DESIGN 5.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from untok.config import ModelConfig
from untok.models.base import init_standard, next_unit_loss
from untok.nn.attention import KVCache, local_causal_mask, rope_angles
from untok.nn.blocks import TransformerBlock
from untok.nn.embeddings import ByteEmbedding, HashNgramEmbedding, update_past


@dataclass
class FlatState:
    """Decoding state: one KV cache per layer, the absolute position of the next unit and
    the last units (for hash n-grams; Long[B, 0] without them)."""

    caches: list[KVCache]
    past: torch.Tensor
    position: int = 0


class FlatLM(nn.Module):
    """A decoder-only transformer over units, satisfying the ByteLM protocol."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed = ByteEmbedding(c.vocab_size, c.dim)
        self.ngrams = HashNgramEmbedding(c.dim, c.embedding.ngrams, c.embedding.buckets) \
            if c.embedding.ngrams else None
        self.blocks = nn.ModuleList(
            TransformerBlock(c.dim, c.num_heads, c.hidden_dim, c.norm_eps, c.dropout)
            for _ in range(c.num_layers))
        self.norm = nn.RMSNorm(c.dim, eps=c.norm_eps)
        self.head = nn.Linear(c.dim, c.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding table with the head (again after ``to_empty``)."""
        if self.config.tie_embeddings:
            self.head.weight = self.embed.table.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter (the model may have been built on the meta device)."""
        residual_std = 0.02 / math.sqrt(2 * self.config.num_layers)
        init_standard(self)
        for block in self.blocks:
            for linear in block.residual_outputs():
                nn.init.normal_(linear.weight, std=residual_std)

    def _run(self, ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
             caches: list[KVCache] | None = None, positions: torch.Tensor | None = None,
             past: torch.Tensor | None = None, mask: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Logits Float[B, T, V] for ``ids`` Long[B, T] given their RoPE angles (and the
        units before them, for hash n-grams)."""
        x = self.embed(ids)  # (B, T, D)
        if self.ngrams is not None:
            x = x + self.ngrams(ids, past)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if caches is None else caches[i], positions, mask)
        return self.head(self.norm(x))

    def _cached(self, ids: torch.Tensor, positions: torch.Tensor, cos_table: torch.Tensor,
                sin_table: torch.Tensor, caches: list[KVCache],
                past: torch.Tensor) -> torch.Tensor:
        """Logits for ``ids`` at ``positions`` (Long[T]), reading and filling ``caches``."""
        return self._run(ids, cos_table[positions], sin_table[positions], caches, positions,
                         past)

    def decode_one(self, ids: torch.Tensor, positions: torch.Tensor, cos_table: torch.Tensor,
                   sin_table: torch.Tensor, caches: list[KVCache],
                   past: torch.Tensor) -> torch.Tensor:
        """``_cached`` for one new unit per sequence: tensors only and static shapes, the
        function :func:`untok.generate.compile_decoding` compiles."""
        return self._cached(ids, positions, cos_table, sin_table, caches, past)

    def _rope(self, end: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin tables Float[S, d/2] covering positions [0, end), grown on demand
        (a plain attribute, not a buffer: it is derived, never saved)."""
        table = getattr(self, "_rope_table", None)
        if table is None or table[0].shape[0] < end or table[0].device != device:
            grown = 2 * table[0].shape[0] if table is not None else 0  # doubling: O(1)
            size = max(end, grown, 2 * self.config.context)  # amortised for long generation
            positions = torch.arange(size, device=device)
            table = rope_angles(positions, self.config.head_dim, self.config.rope_base)
            self._rope_table = table
        return table

    def forward(self, ids: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
        """Logits Float[B, T, V]. Past the context each unit sees the last ``context``
        units (as decoding with the KV cache does); with ``segments`` (Long[B, T],
        non-decreasing) a unit sees only its own segment."""
        T = ids.shape[1]
        cos, sin = self._rope(T, ids.device)
        mask = None
        if segments is not None or self.config.context < T:
            mask = local_causal_mask(T, self.config.context, ids.device, segments)
        return self._run(ids, cos[:T], sin[:T], mask=mask)

    def loss(self, ids: torch.Tensor, targets: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        return next_unit_loss(self(ids), targets, mask)

    def new_state(self, batch_size: int) -> FlatState:
        c = self.config
        weight = self.embed.table.weight
        static = getattr(self, "static_decoding", False)  # set by compile_decoding
        caches = [KVCache.empty(batch_size, c.num_heads, c.context, c.head_dim,
                                weight.device, weight.dtype, static)
                  for _ in range(c.num_layers)]
        history = self.ngrams.history if self.ngrams is not None else 0
        past = torch.full((batch_size, history), -1, dtype=torch.long, device=weight.device)
        return FlatState(caches, past)

    def step(self, state: FlatState, ids: torch.Tensor) -> tuple[torch.Tensor, FlatState]:
        start, end = state.position, state.position + ids.shape[1]
        cos, sin = self._rope(end, ids.device)
        positions = torch.arange(start, end, device=ids.device)
        run = self.decode_one if ids.shape[1] == 1 else self._cached
        logits = run(ids, positions, cos, sin, state.caches, state.past)
        state.past = update_past(state.past, ids)
        for cache in state.caches:
            if cache.static:  # (a dynamic cache counts its own length)
                cache.length = min(cache.length + ids.shape[1], self.config.context)
        state.position = end
        return logits, state

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_byte(self) -> float:
        """6 x (matmul weights) + causal attention scores and mixing, forward + backward."""
        c = self.config
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        attention = 6 * c.num_layers * c.context * c.dim  # 2 matmuls x T/2 keys x 2 x 3
        return 6.0 * matmul + attention
