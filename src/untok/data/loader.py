"""From a byte store to batches of ids.

A split is read as one *unit stream*: every piece of a document is preceded by ``BOS``,
and a piece that ends its document is followed by ``EOS``::

    BOS d0 d0 d0 EOS BOS d1 d1 EOS BOS d2 ...

The stream is never materialised: :meth:`UnitStream.gather` maps stream positions to bytes
of the memory-mapped store on the fly, so a corpus larger than RAM costs no memory.

Training draws windows at random positions from a seeded generator whose state is part of
the checkpoint (exact resume). ``BOS`` is never a target (it is given, not predicted).

Units that are not bytes (code points, or any family's own units) read an
:class:`EncodedStream` instead: the same layout in the ids of ``units``, encoded once when
the split is opened (4 bytes of memory per id).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

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

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Ids (int64) at the given stream positions, any shape."""
        flat = positions.reshape(-1)
        piece = self.piece_of(flat)
        offset = flat - self.offsets[piece] - 1  # -1: the BOS slot
        length = self.segments.lengths[piece]
        inside = (offset >= 0) & (offset < length)
        where = np.where(inside, self.segments.starts[piece] + offset, 0)
        ids = np.where(inside, self.store.data[where] if len(self.store.data) else 0,
                       np.where(offset < 0, BOS, EOS)).astype(np.int64)
        return ids.reshape(positions.shape)

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
        parts, sizes, counts = [], [], []
        data = store.data
        for start, length, ends in zip(self.segments.starts, self.segments.lengths,
                                       self.segments.ends_doc, strict=True):
            chars = unit.encode(bytes(data[start:start + length]))
            piece = [np.array([unit.bos]), chars] + ([np.array([unit.eos])] if ends else [])
            parts.extend(piece)
            sizes.append(sum(len(p) for p in piece))
            counts.append(unit.byte_lengths(np.concatenate(piece)))
        self.ids = np.concatenate(parts).astype(np.int32) if parts else \
            np.zeros(0, dtype=np.int32)
        self.sizes = np.concatenate(counts).astype(np.int32) if counts else \
            np.zeros(0, dtype=np.int32)
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])

    def gather(self, positions: np.ndarray) -> np.ndarray:
        return self.ids[positions].astype(np.int64)

    def byte_sizes(self, positions: np.ndarray) -> np.ndarray:
        return self.sizes[positions].astype(np.int64)


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
        return ids[:, :-1], targets_of(ids[:, 1:], self.stream.units)

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
