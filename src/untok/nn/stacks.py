"""Backbones: the stack of residual blocks between a model's embedding and its head.

A family builds its stack with :func:`make_stack` from ``model.backbone`` and calls it the
same way whatever the backbone (see docs/architecture.md)::

    x = stack(x, mask)                       # whole sequence, positions 0 .. T-1
    state = stack.new_state(batch, device, dtype)
    x = stack.step(x, state, positions)      # n new units at positions (Long[n])

- ``transformer``: pre-norm attention + SwiGLU blocks with RoPE; the state is one
  :class:`~untok.nn.attention.KVCache` per layer of ``capacity`` units.
- ``mmfree``: MLGRU + BitLinear GLU blocks; the state is one hidden vector per layer, so
  time and memory per new unit stay constant however long the sequence.

Both are ``nn.ModuleList`` subclasses: their parameters are named ``<name>.<i>.*`` exactly
as a plain list of blocks would be, so checkpoints do not depend on this wrapper.
"""

from __future__ import annotations

import torch
from torch import nn

from untok.nn.attention import KVCache, LocalWindow, Rope
from untok.nn.blocks import TransformerBlock
from untok.nn.mlgru import MMFreeBlock, forget_lower_bound


class TransformerStack(nn.ModuleList):
    """Transformer blocks sharing one RoPE table; decoding caches hold ``capacity``
    units."""

    compilable = True  # one decode step has static shapes (see compile_decoding)

    def __init__(self, blocks: list[TransformerBlock], rope: Rope, capacity: int) -> None:
        super().__init__(blocks)
        self.rope = rope
        self.capacity = capacity

    def forward(self, x: torch.Tensor, mask: torch.Tensor | LocalWindow | None = None
                ) -> torch.Tensor:
        """Float[B, T, D] at positions 0 .. T-1 (``mask``: Bool[.., T, T], a
        :class:`~untok.nn.attention.LocalWindow` or None: causal)."""
        cos, sin = self.rope.first(x.shape[1], x.device)
        for block in self:
            x = block(x, cos, sin, mask=mask)
        return x

    def new_state(self, batch: int, device: torch.device, dtype: torch.dtype,
                  static: bool = False, start: int = 0,
                  window: int | None = None) -> list[KVCache]:
        """Caches whose first unit will be at position ``start``, of ``window`` units
        (None: ``capacity``)."""
        size = min(window or self.capacity, self.capacity)
        return [block.attn.new_cache(batch, size, device, dtype, static, start)
                for block in self]

    def step(self, x: torch.Tensor, state: list[KVCache], positions: torch.Tensor,
             tables: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """Float[B, n, D] of units at ``positions``, reading and filling the caches.
        ``tables``: the RoPE tables passed in explicitly (a compiled step must not read
        attributes that grow)."""
        cos, sin = tables if tables else self.rope.tables(int(positions[-1]) + 1, x.device)
        cos, sin = cos[positions], sin[positions]
        for block, cache in zip(self, state, strict=True):
            x = block(x, cos, sin, cache, positions)
        return x

    def step_tables(self, end: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """What :meth:`step` reads for positions below ``end``, as plain tensors."""
        return self.rope.tables(end, device)

    def mixing_flops(self, context: int) -> float:
        """Training FLOPs per unit of attention scores and mixing: 2 matmuls x T/2 keys x
        2 x 3 (forward + backward) per layer."""
        dim = self[0].attn_norm.weight.shape[0]
        return 6.0 * len(self) * context * dim

    def advance(self, state: list[KVCache], count: int) -> None:
        """After a step of ``count`` units (outside a compiled step)."""
        for cache in state:
            cache.advance(count)


class MMFreeStack(nn.ModuleList):
    """MatMul-free blocks; the state is one hidden vector Float[B, D] per layer."""

    compilable = False

    def __init__(self, blocks: list[MMFreeBlock], dim: int) -> None:
        super().__init__(blocks)
        self.dim = dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | LocalWindow | None = None
                ) -> torch.Tensor:
        """Float[B, T, D] (a recurrence is causal by construction: ``mask`` is unused)."""
        for block in self:
            x, _ = block(x)
        return x

    def new_state(self, batch: int, device: torch.device, dtype: torch.dtype,
                  static: bool = False, start: int = 0,
                  window: int | None = None) -> list[torch.Tensor]:
        """One zero hidden vector per layer (a recurrence has no window to limit)."""
        return [torch.zeros(batch, self.dim, device=device, dtype=dtype) for _ in self]

    def step(self, x: torch.Tensor, state: list[torch.Tensor], positions: torch.Tensor,
             tables: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """A chunk runs as one scan from the carried state; one unit as one recurrent
        step per layer. The state list is updated in place."""
        for i, block in enumerate(self):
            if x.shape[1] == 1:
                x, state[i] = block.step(x, state[i])
            else:
                x, state[i] = block(x, state[i])
        return x

    def step_tables(self, end: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        return ()

    def mixing_flops(self, context: int) -> float:
        return 0.0  # the scan's few elementwise ops

    def advance(self, state: list[torch.Tensor], count: int) -> None:
        pass


def make_stack(backbone: str, *, dim: int, num_layers: int, num_heads: int, hidden: int,
               eps: float, dropout: float, rope: Rope, capacity: int,
               attention: str = "standard", kv_heads: int = 0
               ) -> TransformerStack | MMFreeStack:
    """The ``num_layers``-deep stack of ``backbone`` (``transformer`` or ``mmfree``);
    ``kv_heads`` < ``num_heads``: grouped-query attention."""
    if backbone == "mmfree":
        return MMFreeStack([MMFreeBlock(dim, hidden, forget_lower_bound(i, num_layers), eps)
                            for i in range(num_layers)], dim)
    return TransformerStack([TransformerBlock(dim, num_heads, hidden, eps, dropout, attention,
                                              layer=i + 1, kv_heads=kv_heads)
                             for i in range(num_layers)],
                            rope, capacity)
