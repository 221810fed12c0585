"""From a byte store to batches of ids.

A split is read as one *unit stream*: every piece of a document is preceded by ``BOS``,
and a piece that ends its document is followed by ``EOS``::

    BOS d0 d0 d0 EOS BOS d1 d1 EOS BOS d2 ...

The stream is never materialised: :meth:`UnitStream.gather` maps stream positions to bytes
of the memory-mapped store on the fly, so a corpus larger than RAM costs no memory.

Training draws windows at random positions from a seeded generator whose state is part of
the checkpoint (exact resume). ``BOS`` is never a target (it is given, not predicted).

A store with chat codes (:mod:`untok.chat`) puts its role markers into the stream as
their ids, and says which positions are training targets (:meth:`UnitStream.is_target`):
the sampler turns the others into ``PAD`` and evaluation skips them.

Units that are not bytes (code points, or any family's own units) read an
:class:`EncodedStream` instead: the same layout in the ids of ``units``, encoded once when
the split is opened (4 bytes of memory per id).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from untok.chat import KIND, TARGET, TEXT, encode_coded, marker_ids
from untok.data.store import ByteStore, Segments
from untok.errors import DataError
from untok.units import BOS, EOS, ByteUnits, Units


class UnitStream:
    """The byte ids of one split of a store, addressable by position."""

    units: Units = ByteUnits()

    def __init__(self, store: ByteStore, split: str) -> None:
        self.store = store
        self.split = split
        self.segments: Segments = store.segments(split)
        sizes = 1 + self.segments.lengths + self.segments.ends_doc.astype(np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])  # stream start of each piece
        self.num_bytes = self.segments.num_bytes

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def masked(self) -> bool:
        """Whether some text positions are not training targets (a store with chat codes)."""
        return self.store.codes is not None

    def _locate(self, flat: np.ndarray) -> tuple[np.ndarray, ...]:
        """(piece, offset in it (-1: its BOS, length: its EOS), inside it, index into the
        store's bytes (0 outside)) of each flat stream position."""
        piece = self.piece_of(flat)
        offset = flat - self.offsets[piece] - 1  # -1: the BOS slot
        inside = (offset >= 0) & (offset < self.segments.lengths[piece])
        where = np.where(inside, self.segments.starts[piece] + offset, 0)
        return piece, offset, inside, where

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Ids (int64) at the given stream positions, any shape."""
        piece, offset, inside, where = self._locate(positions.reshape(-1))
        ids = np.where(inside, self.store.data[where] if len(self.store.data) else 0,
                       np.where(offset < 0, BOS, EOS)).astype(np.int64)
        if self.masked and len(self.store.codes):
            kinds = np.where(inside, self.store.codes[where] & KIND, TEXT)
            ids = np.where(kinds != TEXT, marker_ids(kinds, self.units), ids)
        return ids.reshape(positions.shape)

    def is_target(self, positions: np.ndarray) -> np.ndarray:
        """Bool, same shape: whether the id at each position is a training target. ``BOS``
        never is; in a chat store a byte or marker is when its code says so, and the
        ``EOS`` that ends a document when the document's last byte is target text."""
        piece, offset, inside, where = self._locate(positions.reshape(-1))
        if not self.masked:
            return (offset >= 0).reshape(positions.shape)
        last = self.segments.starts[piece] + self.segments.lengths[piece] - 1
        code = self.store.codes[np.where(inside, where, np.maximum(last, 0))]
        at_eos = ~inside & (offset >= 0)
        target = np.where(inside, (code & TARGET) > 0, at_eos & (code == TEXT | TARGET))
        return target.reshape(positions.shape)

    def byte_sizes(self, positions: np.ndarray) -> np.ndarray:
        """UTF-8 bytes of text the id at each stream position stands for (0 for specials)."""
        return self.units.byte_lengths(self.gather(positions))

    def window(self, start: int, length: int) -> np.ndarray:
        return self.gather(np.arange(start, start + length, dtype=np.int64))

    def piece_of(self, positions: np.ndarray) -> np.ndarray:
        """Index of the piece (segment) each stream position falls in."""
        return np.searchsorted(self.offsets, positions, side="right") - 1


class EncodedStream(UnitStream):
    """The ids of one split in ``units``: each piece ``BOS ids.. [EOS]``, held in memory as
    int32, with the bytes each id stands for in its piece (units whose ids cover bytes
    that depend on their neighbours, such as words with implicit spaces, count them once
    here)."""

    def __init__(self, store: ByteStore, split: str, units: Units) -> None:
        self.store = store
        self.split = split
        self.units = unit = units
        self.segments = store.segments(split)
        self.num_bytes = self.segments.num_bytes
        parts, sizes, counts, flags = [], [], [], []
        data = store.data
        for start, length, ends in zip(self.segments.starts, self.segments.lengths,
                                       self.segments.ends_doc, strict=True):
            text = bytes(data[start:start + length])
            if self.masked:
                chars, chosen = encode_coded(text, store.codes[start:start + length], unit)
                last = bool(len(chars)) and bool(chosen[-1]) and chars[-1] < unit.num_content
                flags.extend([[False], chosen] + ([[last]] if ends else []))
            else:
                chars = unit.encode(text)
            piece = [np.array([unit.bos]), chars] + ([np.array([unit.eos])] if ends else [])
            parts.extend(piece)
            sizes.append(sum(len(p) for p in piece))
            counts.append(unit.byte_lengths(np.concatenate(piece)))
        self.ids = _joined(parts, np.int32)
        self.sizes = _joined(counts, np.int32)
        self.target_flags = _joined(flags, bool) if self.masked else None
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])

    def gather(self, positions: np.ndarray) -> np.ndarray:
        return self.ids[positions].astype(np.int64)

    def byte_sizes(self, positions: np.ndarray) -> np.ndarray:
        return self.sizes[positions].astype(np.int64)

    def is_target(self, positions: np.ndarray) -> np.ndarray:
        if self.target_flags is None:
            return self.ids[positions] != self.units.bos
        return self.target_flags[positions]


def _joined(parts: list, dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


def open_stream(store: ByteStore, split: str, units: Units = UnitStream.units) -> UnitStream:
    """The stream of ``split`` in the ids of ``units`` (a model's ``model.units``)."""
    return UnitStream(store, split) if units.identity else EncodedStream(store, split, units)


def targets_of(ids: torch.Tensor, units: Units = UnitStream.units) -> torch.Tensor:
    """Next-unit targets with ``BOS`` replaced by ``PAD`` (ignored by the loss)."""
    return ids.masked_fill(ids == units.bos, units.pad)


class TrainSampler:
    """Random training windows of ``context + 1`` ids with a resumable generator.

    ``batch_size`` is the global batch: every rank draws the same windows and keeps its own
    ``batch_size / world_size`` rows, so ranks see disjoint windows, the state is the same on
    every rank, and a run resumes exactly with any world size that divides the batch.
    """

    def __init__(self, stream: UnitStream, context: int, batch_size: int, seed: int,
                 side: np.ndarray | None = None, rank: int = 0, world_size: int = 1) -> None:
        if batch_size % world_size:
            raise DataError(f"the batch of {batch_size} windows does not split evenly over "
                            f"{world_size} processes; choose a train.batch_size divisible "
                            f"by {world_size}")
        if len(stream) < context + 1:
            raise DataError(
                f"the {stream.split} split of '{stream.store.name}' has {stream.num_bytes} "
                f"bytes, fewer than one training window ({context + 1} units); use more data "
                "or a smaller --set model.context=N")
        self.stream = stream
        self.context = context
        self.batch_size = batch_size
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.side = side
        self.side_batch: torch.Tensor | None = None
        per_rank = batch_size // world_size
        self.rows = slice(rank * per_rank, (rank + 1) * per_rank)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), both Long[B, context] for this rank's B rows. With ``side`` (one
        value per stream position, e.g. precomputed entropies), ``side_batch`` then holds the
        inputs' values Float[B, context]."""
        high = len(self.stream) - self.context  # last valid start, exclusive
        starts = self.rng.integers(0, high, size=self.batch_size)[self.rows]
        positions = starts[:, None] + np.arange(self.context + 1)[None, :]
        ids = torch.from_numpy(self.stream.gather(positions))
        if self.side is not None:
            self.side_batch = torch.from_numpy(self.side[positions[:, :-1]].astype(np.float32))
        targets = targets_of(ids[:, 1:], self.stream.units)
        if self.stream.masked:  # chat data: only the positions its mask names are learnt
            chosen = torch.from_numpy(self.stream.is_target(positions[:, 1:]))
            targets = targets.masked_fill(~chosen, self.stream.units.pad)
        return ids[:, :-1], targets

    def state_dict(self) -> dict[str, Any]:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["bit_generator"]


def eval_windows(length: int, context: int, stride: int) -> list[tuple[int, int]]:
    """Deterministic evaluation windows over a stream of ``length`` ids.

    Returns ``(start, first_scored)`` pairs: window ids are ``[start, start + context + 1)``
    clipped to the stream, and only predictions of targets at ``>= first_scored`` count.
    Every target (positions 1..length-1) is scored exactly once, with at least
    ``context - stride`` units of history once the stream is long enough.
    """
    if not 0 < stride <= context:
        raise DataError(f"eval stride must be in 1..{context}")
    if length < 2:
        return []
    windows = [(0, 1)]
    start = 0
    while start + context + 1 < length:  # the last window does not reach the end yet
        start += stride
        windows.append((start, start + context - stride + 1))
    return windows
