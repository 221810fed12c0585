"""The BLT's cross-attention layers: bytes reading patches, and patches pooled from their
bytes; the memory of completed patches that decoding reads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class CrossAttention(nn.Module):
    """Queries from ``dim`` states attend to a memory of ``memory_dim`` states."""

    def __init__(self, dim: int, memory_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.RMSNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(memory_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float[B, S, memory_dim] -> keys, values (B, H, S, d)."""
        B, S, _ = memory.shape
        k, v = self.kv(memory).view(B, S, 2, self.num_heads, -1).unbind(2)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None, scale: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``x + scale * attention(norm(x), k, v)``; ``mask`` Bool[B or 1, 1, T, S],
        ``scale`` Float[B, T, 1] (None: 1)."""
        B, T, D = x.shape
        q = self.q(self.norm(x)).view(B, T, self.num_heads, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = self.out(y.transpose(1, 2).reshape(B, T, D))
        return x + (y if scale is None else y * scale)


class PatchPooling(nn.Module):
    """k query slots per patch, initialised by max-pooling the patch's byte states, that
    cross-attend to those bytes only; the slots, concatenated, project to the global
    width."""

    def __init__(self, dim: int, num_heads: int, slots: int, global_dim: int) -> None:
        super().__init__()
        self.slots = slots
        self.slot_embed = nn.Parameter(torch.zeros(slots, dim))
        self.attn = CrossAttention(dim, dim, num_heads)
        self.proj = nn.Linear(slots * dim, global_dim, bias=False)

    def forward(self, h: torch.Tensor, patch_ids: torch.Tensor, num_patches: int
                ) -> torch.Tensor:
        """Byte states Float[B, T, D] and their patch index Long[B, T] -> Float[B, P, G]."""
        B, T, D = h.shape
        index = patch_ids[..., None].expand(B, T, D)
        pooled = h.new_zeros(B, num_patches, D).scatter_reduce(
            1, index, h, reduce="amax", include_self=False)  # (B, P, D)
        queries = (pooled[:, :, None] + self.slot_embed).flatten(1, 2)  # (B, P*k, D)
        slot_patch = torch.arange(num_patches, device=h.device).repeat_interleave(self.slots)
        mask = slot_patch[None, :, None] == patch_ids[:, None, :]  # (B, P*k, T)
        mask[:, :, 0] |= ~mask.any(-1)  # patches past the end: any key, never read
        k, v = self.attn.keys_values(h)
        slots = self.attn(queries, k, v, mask[:, None])
        return self.proj(slots.view(B, num_patches, self.slots * D))


@dataclass
class PatchMemory:
    """What the decoder's cross-attention reads while decoding, per decoder layer: slot 0
    holds the keys and values of the start vector, slots 1 .. ``capacity`` a ring of the
    last ``capacity`` completed patches' (patch p in slot 1 + p % capacity). Cross-attention
    has no positions, so the order of the slots does not matter."""

    keys: list[torch.Tensor]  # per decoder layer (1, H, 1 + capacity, d)
    values: list[torch.Tensor]  # per decoder layer (1, H, 1 + capacity, d)
    filled: torch.Tensor  # Bool[1 + capacity]: slots holding a patch (or the start)
    patches: int = 0  # patches added so far

    @classmethod
    def start(cls, start_kvs: list[tuple[torch.Tensor, torch.Tensor]], capacity: int
              ) -> PatchMemory:
        """A memory holding the start vector's keys/values (per layer (1, H, 1, d))."""
        keys, values = [], []
        for k, v in start_kvs:
            for buffers, new in ((keys, k), (values, v)):
                buffer = new.new_zeros(*new.shape[:2], 1 + capacity, new.shape[3])
                buffer[:, :, :1] = new
                buffers.append(buffer)
        filled = torch.zeros(1 + capacity, dtype=torch.bool, device=keys[0].device)
        filled[0] = True
        return cls(keys, values, filled)

    def add(self, kvs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write one completed patch's keys/values (per layer (1, H, 1, d))."""
        slot = 1 + self.patches % (self.filled.shape[0] - 1)
        for i, (k, v) in enumerate(kvs):
            self.keys[i][:, :, slot] = k[:, :, 0]
            self.values[i][:, :, slot] = v[:, :, 0]
        self.filled[slot] = True
        self.patches += 1

    def read(self, static: bool) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Per layer: keys, values and the mask of the slots to attend to. Static (a
        compiled step): every slot, unfilled ones masked; else only the filled ones."""
        pairs = zip(self.keys, self.values, strict=True)
        if static:
            return [(k, v, self.filled[None]) for k, v in pairs]
        used = min(1 + self.patches, self.filled.shape[0])
        return [(k[:, :, :used], v[:, :, :used], None) for k, v in pairs]
