"""Causal multi-head self-attention with rotary position embeddings and a KV cache."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def rope_angles(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
    """The tables :func:`apply_rope` takes for integer ``positions`` (Long[T]): Float[T,
    head_dim] each, ``cos`` = (cos a, cos a) and ``sin`` = (-sin a, sin a) for the
    head_dim/2 angles a of a position, laid out as the channel pairs (i, i + d/2) they rotate.

    Angles are computed in float64 so that positions far past the training window (long
    generations) keep their precision.
    """
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64,
                                      device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], -1).float(), torch.cat([-sin, sin], -1).float()


class Rope:
    """Growable RoPE cos/sin tables (Float[S, head_dim], see :func:`rope_angles`) for one
    head size.

    A plain object, not a buffer: the tables are derived, never saved. They grow by
    doubling (at least to ``min_size``), so long generations cost O(1) amortised.
    """

    def __init__(self, head_dim: int, base: float, min_size: int) -> None:
        self.head_dim, self.base, self.min_size = head_dim, base, min_size
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def tables(self, end: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin covering positions [0, end) (possibly more)."""
        tables = self._tables
        if tables is None or tables[0].shape[0] < end or tables[0].device != device:
            grown = 2 * tables[0].shape[0] if tables is not None else 0
            size = max(end, grown, self.min_size)
            tables = rope_angles(torch.arange(size, device=device), self.head_dim, self.base)
            self._tables = tables
        return tables

    def first(self, count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of positions 0 .. count - 1."""
        cos, sin = self.tables(count, device)
        return cos[:count], sin[:count]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + d/2) of ``x`` (.., d) by the angles of the tables
    (:func:`rope_angles`, broadcast against ``x``): (x1 cos - x2 sin, x2 cos + x1 sin),
    in four kernels."""
    half = x.shape[-1] // 2
    swapped = torch.cat([x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + swapped * sin.to(x.dtype)


@dataclass
class KVCache:
    """Keys and values of the last ``capacity`` units, for one layer: a ring buffer.

    Unit ``p`` lives in slot ``p % capacity``; keys are stored already rotated (RoPE), so
    attention needs no reordering and dropping the oldest unit costs nothing. Units are
    appended in position order without gaps; ``end`` is the position after the newest.

    The rows of a batch share one clock (``positions``). Rows that began at different
    times (a server batching requests that arrived apart) each have a ``starts`` entry:
    row b attends only to the units at positions >= ``starts[b]``, its own. As RoPE sees
    only relative positions, a row that began at position s decodes exactly as it would
    alone from position 0.

    Attention reads only the slots of positions ``[max(first, end - capacity), end)``
    while they are one contiguous slice of the ring, and every slot once they are not. A
    cache that begins late (``first`` > 0, as a server's batch does) writes every unit
    twice, in slot ``p % capacity`` and ``capacity`` slots above it, so that its window is
    always one slice: it costs what a cache beginning at 0 does. A ``static`` cache (for a
    compiled step: shapes never change) always attends over every slot, empty ones masked.

    :meth:`join` and :meth:`select` consume the cache they are called on: their result
    reuses its buffers (``reserve``), which keep room for more rows, so that a row joining
    or leaving copies only the rows that move, not the whole batch.
    """

    k: torch.Tensor  # (B, H, slots, d): slots = capacity, or 2 capacity (begun late)
    v: torch.Tensor  # (B, H, slots, d)
    positions: torch.Tensor  # Long[slots]: the unit held by each slot, -1 if empty
    capacity: int
    first: int = 0  # the earliest position any row attends to
    end: int = 0  # the position after the newest unit
    static: bool = False
    starts: torch.Tensor | None = None  # Long[B]: each row's first position (None: first)
    reserve: tuple[torch.Tensor, torch.Tensor] | None = None  # (rows >= B, H, slots, d)
    # each: the buffers whose first B rows are k and v (None: k and v themselves)

    @classmethod
    def empty(cls, batch: int, heads: int, capacity: int, head_dim: int,
              device: torch.device, dtype: torch.dtype, static: bool = False,
              start: int = 0) -> KVCache:
        """A cache whose first unit will be at position ``start``."""
        slots = 2 * capacity if start > 0 and not static else capacity
        shape = (batch, heads, slots, head_dim)
        return cls(torch.zeros(shape, device=device, dtype=dtype),
                   torch.zeros(shape, device=device, dtype=dtype),
                   torch.full((slots,), -1, dtype=torch.long, device=device),
                   capacity, first=start, end=start, static=static)

    def append(self, k: torch.Tensor, v: torch.Tensor,
               positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store ``n`` new keys/values (B, H, n, d) for units at ``positions`` (Long[n],
        the next ``n`` positions of the clock).

        Returns the keys and values of the slots attended to and the mask Bool[n, slots]
        (Bool[B, 1, n, slots] with ``starts``) of those each new unit may attend to:
        filled, not after the unit itself, and not before its row's start. The mask is None
        where it would allow every slot: one new unit, a cache that is not static and rows
        that share one start (the slots read then hold exactly the units of the window).
        """
        capacity, n = self.capacity, k.shape[2]
        if n > capacity:
            raise ValueError(f"cannot add {n} units to a KV cache of {capacity}")
        copies = self.k.shape[2] // capacity
        B, H, _, d = self.k.shape
        if n == 1 and not self.static:  # (a decoding step: its slot is known here)
            slot = self.end % capacity
            for cache, new in ((self.k, k), (self.v, v)):  # (autocast: bf16 into the cache)
                cache.view(B, H, copies, capacity, d)[:, :, :, slot] = new.to(cache.dtype)
            self.positions.view(copies, capacity)[:, slot] = self.end
        else:
            slots = positions % capacity
            for cache, new in ((self.k, k), (self.v, v)):
                cache.view(B, H, copies, capacity, d).index_copy_(
                    3, slots, new.to(cache.dtype)[:, :, None].expand(B, H, copies, n, d))
            self.positions.view(copies, capacity).index_copy_(1, slots,
                                                              positions.expand(copies, n))
        window = slice(None)
        if not self.static:
            self.end += n
            low = max(self.first, self.end - capacity)
            if low % capacity + self.end - low <= copies * capacity:
                window = slice(low % capacity, low % capacity + self.end - low)
            if n == 1 and self.starts is None:
                return self.k[:, :, window], self.v[:, :, window], None
        held = self.positions[None, window]
        mask = (held >= 0) & (held <= positions[:, None])  # (n, slots)
        if self.starts is not None:  # (B, 1, n, slots)
            mask = mask & (held >= self.starts[:, None, None, None])
        return self.k[:, :, window], self.v[:, :, window], mask

    def advance(self, count: int) -> None:
        """After a step of ``count`` units, outside a compiled step: a static cache moves
        its clock here (a dynamic one did in :meth:`append`)."""
        if self.static:
            self.end += count

    def select(self, rows: torch.Tensor) -> KVCache:
        """The cache of the batch rows ``rows`` (Long[B'], B' <= B), in that order. Rows
        that keep their index are not copied (a server removing row i moves the last row
        there)."""
        n = rows.shape[0]
        if n > self.k.shape[0]:
            raise ValueError(f"cannot select {n} rows of a cache of {self.k.shape[0]}")
        keys, values = self.reserve or (self.k, self.v)
        moved = (rows != torch.arange(n, device=rows.device)).nonzero()[:, 0]
        for buffer in (keys, values):  # (gathered before written: any order is safe)
            buffer[moved] = buffer[rows[moved]]
        starts = None if self.starts is None else self.starts[rows]
        return KVCache(keys[:n], values[:n], self.positions, self.capacity, self.first,
                       self.end, self.static, starts, (keys, values))

    def join(self, other: KVCache, start: int) -> KVCache:
        """This batch with the rows of ``other`` appended: a cache on the same clock whose
        units begin at position ``start`` (it filled only the slots of its own units). The
        buffers double their rows when full."""
        B, B2 = self.k.shape[0], other.k.shape[0]
        if other.k.shape[1:] != self.k.shape[1:]:
            raise ValueError(f"cannot join a cache of shape {tuple(other.k.shape[1:])} to one "
                             f"of {tuple(self.k.shape[1:])}")
        starts = self.starts if self.starts is not None else \
            torch.full((B,), self.first, dtype=torch.long, device=self.k.device)
        starts = torch.cat([starts, starts.new_full((B2,), start)])
        keys, values = self.reserve or (self.k, self.v)
        if keys.shape[0] < B + B2:
            keys, values = (self._grown(x, B, max(B + B2, 2 * B)) for x in (keys, values))
        keys[B:B + B2], values[B:B + B2] = other.k, other.v
        return KVCache(keys[:B + B2], values[:B + B2],
                       torch.maximum(self.positions, other.positions), self.capacity,
                       min(self.first, start), max(self.end, other.end), self.static, starts,
                       (keys, values))

    @staticmethod
    def _grown(buffer: torch.Tensor, used: int, rows: int) -> torch.Tensor:
        """A buffer of ``rows`` rows beginning with the first ``used`` of ``buffer``."""
        grown = buffer.new_empty((rows, *buffer.shape[1:]))
        grown[:used] = buffer[:used]
        return grown


class CausalSelfAttention(nn.Module):
    """Multi-head attention through ``scaled_dot_product_attention`` (fused kernels).

    ``kv_heads`` < ``num_heads`` shares each key/value head among ``num_heads / kv_heads``
    query heads (grouped-query attention; 1: multi-query): the KV cache, and what a decoding
    step reads of it, shrink by that factor. A step attends with each group's query heads
    laid out as extra query rows of their key/value head, so the cache is read once."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0,
                 kv_heads: int = 0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.kv_heads = kv_heads or num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim + 2 * self.kv_heads * self.head_dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.dropout = dropout

    def new_cache(self, batch: int, capacity: int, device: torch.device, dtype: torch.dtype,
                  static: bool = False, start: int = 0) -> KVCache:
        return KVCache.empty(batch, self.kv_heads, capacity, self.head_dim, device, dtype,
                             static, start)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, positions: torch.Tensor | None = None,
                mask: torch.Tensor | LocalWindow | None = None) -> torch.Tensor:
        """``cos``/``sin``: Float[T, d/2] RoPE angles of the T units; with a ``cache``,
        ``positions`` (Long[T]) are their absolute positions. Without one, attention is
        causal, or follows ``mask`` (Bool[B or 1, 1, T, T], True = may attend, or a
        :class:`LocalWindow`)."""
        B, T, D = x.shape
        H, G, d = self.num_heads, self.kv_heads, self.head_dim
        qkv = self.qkv(x).view(B, T, H + 2 * G, d)
        qk = apply_rope(qkv[:, :, :H + G], cos[:, None], sin[:, None])  # (one call for both)
        q, k = qk.transpose(1, 2).split([H, G], dim=1)  # (B, H|G, T, d)
        v = qkv[:, :, H + G:].transpose(1, 2)
        dropout = self.dropout if self.training else 0.0
        if cache is not None:
            k, v, mask = cache.append(k, v, positions)  # (B, G, slots, d), (T, slots)|None
            y = grouped_attention(q, k, v, mask)
        else:
            if G < H:  # (training: every query head with its own copy)
                k, v = k.repeat_interleave(H // G, 1), v.repeat_interleave(H // G, 1)
            if isinstance(mask, LocalWindow):
                y = mask.attend(q, k, v, dropout)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                   dropout_p=dropout, is_causal=mask is None)
        return self.out(y.transpose(1, 2).reshape(B, T, D))


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      mask: torch.Tensor | None) -> torch.Tensor:
    """Attention of q (B, H, T, d) over cached k, v (B, G, S, d), G dividing H, with
    ``mask`` Bool[T, S] or Bool[B, 1, T, S] (None: every slot): the g = H / G query heads
    of a key/value head become g x T query rows of it (one read of the cache).
    (B, H, T, d)."""
    B, H, T, d = q.shape
    g = H // k.shape[1]
    if g == 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    rows = mask if mask is None else \
        mask.repeat(g, 1) if mask.dim() == 2 else mask.repeat(1, 1, g, 1)
    y = F.scaled_dot_product_attention(q.reshape(B, k.shape[1], g * T, d), k, v,
                                       attn_mask=rows)
    return y.view(B, H, T, d)


def local_causal_mask(length: int, window: int, device: torch.device,
                      segments: torch.Tensor | None = None) -> torch.Tensor:
    """Bool[B or 1, 1, T, T]: unit t sees units s with t - window < s <= t (the sliding
    window a KV cache of ``window`` units gives), and only its own segment when
    ``segments`` (Long[B, T], non-decreasing ids) is given. The dense reference of
    :class:`LocalWindow`."""
    t = torch.arange(length, device=device)
    distance = t[:, None] - t[None, :]
    mask = ((distance >= 0) & (distance < window))[None, None]
    if segments is not None:
        mask = mask & (segments[:, None, :, None] == segments[:, None, None, :])
    return mask


@dataclass(frozen=True)
class LocalWindow:
    """Sliding-window causal attention, passed where a mask goes: unit t attends to units
    s with t - size < s <= t, only within its own segment when ``segments`` (Long[B, T],
    non-decreasing ids) is given; the same units :func:`local_causal_mask` allows.

    :meth:`attend` computes it blockwise: queries in blocks of ``block`` units (at least
    ``size``) attend to their own block and the one before, one fused SDPA call over all
    blocks with a fixed (block, 2 block) band mask, so the work grows as T x 2 block
    rather than T x T and no [T, T] mask is built."""

    size: int
    segments: torch.Tensor | None = None  # Long[B, T]

    @property
    def block(self) -> int:
        return max(self.size, 64)

    def dense(self, length: int, device: torch.device) -> torch.Tensor:
        return local_causal_mask(length, self.size, device, self.segments)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               dropout: float = 0.0) -> torch.Tensor:
        """q, k (B, H, T, d), v (B, H, T, e) -> (B, H, T, e)."""
        B, H, t, _ = q.shape
        w = self.block
        if self.segments is None and t <= self.size:  # the window never clips
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        if t <= w:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.dense(t, q.device),
                                                  dropout_p=dropout)
        n = -(-t // w)

        def blocks(x: torch.Tensor) -> torch.Tensor:  # (B, H, T, c) -> (B * n, H, w, c)
            x = F.pad(x, (0, 0, 0, n * w - t)).unflatten(2, (n, w))
            return x.transpose(1, 2).reshape(B * n, H, w, x.shape[-1])

        def with_previous(x: torch.Tensor) -> torch.Tensor:  # (B * n, H, 2w, c)
            x = x.unflatten(0, (B, n))
            return torch.cat([F.pad(x, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1], x], 3).flatten(0, 1)

        y = F.scaled_dot_product_attention(blocks(q), with_previous(blocks(k)),
                                           with_previous(blocks(v)),
                                           attn_mask=self._band(B, n, q.device),
                                           dropout_p=dropout)  # (B * n, H, w, e)
        return y.unflatten(0, (B, n)).transpose(1, 2).flatten(2, 3)[:, :, :t]

    def _band(self, B: int, n: int, device: torch.device) -> torch.Tensor:
        """Bool[B * n, 1, w, 2w]: query a of block i may see key b of blocks (i-1, i)."""
        w = self.block
        a = torch.arange(w, device=device)[:, None]
        b = torch.arange(2 * w, device=device)[None, :]
        distance = a + w - b
        band = ((distance >= 0) & (distance < self.size)).expand(n, w, 2 * w).clone()
        band[0, :, :w] = False  # block 0 has no block before it
        if self.segments is None:
            return band[None].expand(B, n, w, 2 * w).reshape(B * n, 1, w, 2 * w)
        segments = F.pad(self.segments, (0, n * w - self.segments.shape[1]),
                         value=-1).unflatten(1, (n, w))  # (B, n, w): padding: never seen
        keys = torch.cat([F.pad(segments, (0, 0, 1, 0), value=-2)[:, :-1], segments], 2)
        same = segments[..., :, None] == keys[..., None, :]  # (B, n, w, 2w)
        return (band & same).reshape(B * n, 1, w, 2 * w)


def lambda_init_of(layer: int) -> float:
    """Differential attention's lambda at init for ``layer`` (counted from 1)."""
    return 0.8 - 0.6 * math.exp(-0.3 * (layer - 1))


class DifferentialAttention(nn.Module):
    """Differential attention (see docs/options.md): each of ``num_heads / 2`` heads computes two
    softmax maps from two halves of its queries and keys and subtracts them::

        y = (softmax(Q1 K1^T / sqrt d) - lambda softmax(Q2 K2^T / sqrt d)) V
        lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init(layer)

    then a per-head RMSNorm and a ``(1 - lambda_init)`` scale. Heads are twice as wide as
    standard ones (values of 2d), so the projections, and the parameter count up to the
    four lambda vectors and the norm, equal standard attention's with ``num_heads`` heads.
    The KV cache stores the two key halves side by side (B, H/2, slots, 2d).
    """

    def __init__(self, dim: int, num_heads: int, layer: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads // 2
        self.head_dim = dim // num_heads  # d: width of each query/key half
        self.lambda_init = lambda_init_of(layer)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)
        self.lambdas = nn.Parameter(torch.empty(4, self.head_dim))  # lq1, lk1, lq2, lk2
        self.head_norm = nn.RMSNorm(2 * self.head_dim, eps=1e-5)
        self.dropout = dropout

    @torch.no_grad()
    def init_parameters(self) -> None:
        nn.init.normal_(self.lambdas, std=0.1)

    def new_cache(self, batch: int, capacity: int, device: torch.device, dtype: torch.dtype,
                  static: bool = False, start: int = 0) -> KVCache:
        return KVCache.empty(batch, self.num_heads, capacity, 2 * self.head_dim, device,
                             dtype, static, start)

    def lambda_full(self) -> torch.Tensor:
        lq1, lk1, lq2, lk2 = self.lambdas.float()
        return torch.exp(lq1 @ lk1) - torch.exp(lq2 @ lk2) + self.lambda_init

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, positions: torch.Tensor | None = None,
                mask: torch.Tensor | LocalWindow | None = None) -> torch.Tensor:
        """As :meth:`CausalSelfAttention.forward`."""
        B, T, D = x.shape
        H, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).view(B, T, 3, H, 2 * d).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, 2d)
        q = apply_rope(q.unflatten(-1, (2, d)), cos[:, None], sin[:, None]).flatten(-2)
        k = apply_rope(k.unflatten(-1, (2, d)), cos[:, None], sin[:, None]).flatten(-2)
        dropout = self.dropout if self.training else 0.0
        causal = cache is None and mask is None
        if cache is not None:
            k, v, mask = cache.append(k, v, positions)  # (B, H, slots, 2d), (T, slots)|None
            dropout = 0.0
        q1, q2 = q.chunk(2, dim=-1)
        k1, k2 = k.chunk(2, dim=-1)
        if isinstance(mask, LocalWindow):
            y1, y2 = mask.attend(q1, k1, v, dropout), mask.attend(q2, k2, v, dropout)
        else:
            y1 = F.scaled_dot_product_attention(q1, k1, v, attn_mask=mask, dropout_p=dropout,
                                                is_causal=causal)
            y2 = F.scaled_dot_product_attention(q2, k2, v, attn_mask=mask, dropout_p=dropout,
                                                is_causal=causal)
        y = y1 - self.lambda_full().to(y1.dtype) * y2  # (B, H, T, 2d)
        y = self.head_norm(y) * (1.0 - self.lambda_init)
        return self.out(y.transpose(1, 2).reshape(B, T, D))
