"""Held-out scoring in bits per byte, and the numbers around it.

Evaluation is deterministic: the split is read as one unit stream and cut into fixed
windows of ``context`` units that advance by ``stride``; every byte is scored exactly once,
by the window that gives it the most history (at least ``context - stride`` units where the
stream is long enough). Only text targets count: ``BOS``/``EOS`` predictions are neither
added to the bits nor to the byte count.

A code-point model is scored per character and its bits are divided by the UTF-8 bytes of
those characters, so its bpb compares directly with a byte model's on the same text.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from untok.data.loader import UnitStream, eval_windows, open_stream
from untok.data.store import ByteStore
from untok.errors import DataError
from untok.hardware import autocast
from untok.units import ESCAPE_FIRST, unit_of

LN2 = math.log(2.0)


class _Totals:
    """Running sums of per-byte scores, optionally per document."""

    def __init__(self, num_docs: int) -> None:
        self.bits = np.zeros(num_docs)
        self.bytes = np.zeros(num_docs, dtype=np.int64)
        self.chars = np.zeros(num_docs, dtype=np.int64)
        self.units = 0
        self.correct = 0
        self.confidence_sum = 0.0
        self.confidence_min = math.inf
        self.confidence_max = -math.inf

    def add(self, nll: np.ndarray, correct: np.ndarray, sizes: np.ndarray,
            starts_char: np.ndarray, docs: np.ndarray) -> None:
        """Per scored target: nll (nats), argmax correct, UTF-8 bytes it stands for, whether
        it starts a character, and its document."""
        if nll.size == 0:
            return
        n = len(self.bits)
        self.bits += np.bincount(docs, weights=nll / LN2, minlength=n)
        self.bytes += np.bincount(docs, weights=sizes, minlength=n).astype(np.int64)
        self.chars += np.bincount(docs, weights=starts_char, minlength=n).astype(np.int64)
        self.units += nll.size
        self.correct += int(correct.sum())
        confidence = np.exp(-nll)
        self.confidence_sum += float(confidence.sum())
        self.confidence_min = min(self.confidence_min, float(confidence.min()))
        self.confidence_max = max(self.confidence_max, float(confidence.max()))

    def summary(self) -> dict[str, Any]:
        count = int(self.bytes.sum())
        if count == 0:
            raise DataError("nothing to evaluate: the split holds no bytes")
        bits = float(self.bits.sum())
        bpb = bits / count
        return {"bpb": bpb, "accuracy": self.correct / self.units, "perplexity": 2.0 ** bpb,
                "confidence_mean": self.confidence_sum / self.units,
                "confidence_min": self.confidence_min, "confidence_max": self.confidence_max,
                "bytes": count, "units": self.units, "bits": bits,
                "bits_per_char": bits / max(int(self.chars.sum()), 1)}


def char_starts(targets: np.ndarray, unit_name: str) -> np.ndarray:
    """Whether each target starts a character: a byte that is not a continuation byte, or
    a code point (an escape id counts as its raw byte would), so both units agree."""
    if unit_name == "byte":
        return (targets < 0x80) | (targets >= 0xC0)
    raw = targets - ESCAPE_FIRST + 0x80  # the raw byte of an escape id
    is_escape = (raw >= 0x80) & (raw <= 0xFF)
    return ~is_escape | (raw >= 0xC0)


def score(out: torch.Tensor | Any, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll in nats, argmax == target) per position of a model's output: logits
    Float[B, T, V], or a code-point model's scores (scored level by level)."""
    if isinstance(out, torch.Tensor):
        logp = F.log_softmax(out.float(), dim=-1)  # (B, T, V)
        nll = -logp.gather(-1, targets.clamp(max=logp.shape[-1] - 1)[..., None])[..., 0]
        return nll.cpu(), (logp.argmax(-1) == targets).cpu()
    return -out.log_prob(targets).cpu(), (out.greedy() == targets).cpu()


@torch.no_grad()
def evaluate_stream(model: nn.Module, stream: UnitStream, *, stride: int | None = None,
                    max_bytes: int | None = None, batch_size: int = 16,
                    device: torch.device | None = None, dtype: torch.dtype | None = None,
                    per_file: bool = False, progress: bool = False) -> dict[str, Any]:
    """Score a unit stream; see :func:`evaluate` for the result."""
    unit = stream.unit
    if unit.name != unit_of(model.config).name:
        raise DataError(f"the model reads {unit_of(model.config).name}s but the stream "
                        f"holds {unit.name}s")
    context = model.config.context
    stride = stride or max(context // 2, 1)
    device = device or next(model.parameters()).device
    length = len(stream) if max_bytes is None else min(len(stream), max_bytes + 1)
    windows = eval_windows(length, context, stride)
    piece_docs = stream.segments.docs
    totals = _Totals(stream.store.num_docs if per_file else 1)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    bar = tqdm(total=len(windows), desc="eval", unit="win", disable=not progress, leave=False)
    for first in range(0, len(windows), batch_size):
        batch = windows[first:first + batch_size]
        starts = np.array([s for s, _ in batch], dtype=np.int64)
        positions = starts[:, None] + np.arange(context + 1)[None, :]  # (B, T+1)
        valid = positions < length
        ids = stream.gather(np.minimum(positions, length - 1))
        ids = torch.from_numpy(np.where(valid, ids, unit.pad))
        inputs, targets = ids[:, :-1].to(device), ids[:, 1:]
        with autocast(device, dtype):
            out = model(inputs)
        nll, correct = score(out, targets.to(device))
        target_pos = positions[:, 1:]
        first_scored = np.array([f for _, f in batch])[:, None]
        sizes = unit.byte_lengths(targets.numpy())
        scored = (target_pos >= first_scored) & (sizes > 0) & valid[:, 1:]
        docs = piece_docs[stream.piece_of(target_pos[scored])] if per_file else \
            np.zeros(int(scored.sum()), dtype=np.int64)
        kept = targets.numpy()[scored]
        totals.add(nll.numpy()[scored], correct.numpy()[scored], sizes[scored],
                   char_starts(kept, unit.name), docs)
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    result = totals.summary()
    result["seconds"] = time.perf_counter() - started
    if per_file:
        names = stream.store.names()
        result["per_file"] = [
            {"name": names[d], "bytes": int(totals.bytes[d]),
             "bpb": float(totals.bits[d] / totals.bytes[d])}
            for d in np.flatnonzero(totals.bytes)]
    return result


def evaluate(model: nn.Module, store: ByteStore, split: str = "val", **options: Any
             ) -> dict[str, Any]:
    """Score ``split`` of ``store``: bpb, accuracy, perplexity (2^bpb), confidence
    (probability of the true next unit) mean/min/max, bytes and units scored, bits per
    character, and with ``per_file=True`` bpb per document. Options as
    :func:`evaluate_stream`."""
    return evaluate_stream(model, open_stream(store, split, unit_of(model.config).name),
                           **options)
