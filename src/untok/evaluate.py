"""Held-out scoring in bits per byte, and the numbers around it.

Evaluation is deterministic: the split is read as one unit stream and cut into fixed
windows of ``context`` units that advance by ``stride``; every byte is scored exactly once,
by the window that gives it the most history (at least ``context - stride`` units where the
stream is long enough). Only text targets count: ``BOS``/``EOS`` predictions are neither
added to the bits nor to the byte count.

Any unit is scored per unit through the model's :class:`~untok.scores.Scores`, and its
bits are divided by the UTF-8 bytes those units stand for (``units.byte_lengths``), so a
code-point or word model's bpb compares directly with a byte model's on the same text.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from untok.data.loader import UnitStream, eval_windows, open_stream
from untok.data.store import ByteStore
from untok.errors import DataError
from untok.hardware import autocast
from untok.models.registry import capabilities
from untok.reconstruction import evaluate_reconstruction
from untok.scores import Scores

LN2 = math.log(2.0)


class _Totals:
    """Running sums of per-byte scores, optionally per document."""

    def __init__(self, num_docs: int) -> None:
        self.bits = np.zeros(num_docs)
        self.bytes = np.zeros(num_docs, dtype=np.int64)
        self.chars = np.zeros(num_docs, dtype=np.int64)
        self.units = 0
        self.out_of_vocabulary = 0
        self.correct = 0
        self.confidence_sum = 0.0
        self.confidence_min = math.inf
        self.confidence_max = -math.inf

    def add(self, nll: np.ndarray, correct: np.ndarray, sizes: np.ndarray,
            chars: np.ndarray, known: np.ndarray, docs: np.ndarray) -> None:
        """Per scored target: nll (nats), argmax correct, UTF-8 bytes it stands for, the
        characters it starts, whether it is in the units' vocabulary, and its document."""
        if nll.size == 0:
            return
        n = len(self.bits)
        self.bits += np.bincount(docs, weights=nll / LN2, minlength=n)
        self.bytes += np.bincount(docs, weights=sizes, minlength=n).astype(np.int64)
        self.chars += np.bincount(docs, weights=chars, minlength=n).astype(np.int64)
        self.units += nll.size
        self.out_of_vocabulary += int((~known).sum())
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
        return {"metric": "bpb", "bpb": bpb, "accuracy": self.correct / self.units,
                "perplexity": 2.0 ** bpb,
                "confidence_mean": self.confidence_sum / self.units,
                "confidence_min": self.confidence_min, "confidence_max": self.confidence_max,
                "bytes": count, "units": self.units, "bits": bits,
                "bits_per_char": bits / max(int(self.chars.sum()), 1),
                "units_per_100_bytes": 100 * self.units / count,
                "out_of_vocabulary": self.out_of_vocabulary / self.units}


def score(out: Scores, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll in nats, whether the most likely unit is the target) per position of a
    model's scores."""
    return -out.log_prob(targets).cpu(), (out.greedy() == targets).cpu()


@torch.no_grad()
def evaluate_stream(model: nn.Module, stream: UnitStream, *, stride: int | None = None,
                    max_bytes: int | None = None, batch_size: int = 16,
                    device: torch.device | None = None, dtype: torch.dtype | None = None,
                    per_file: bool = False, progress: bool = False,
                    checked: bool = True) -> dict[str, Any]:
    """Score a unit stream; see :func:`evaluate` for the result. An autoencoder (a family
    that is not a language model) is scored by reconstruction instead
    (:func:`untok.reconstruction.evaluate_reconstruction`; ``checked``: its decoding
    checked against the encoder, which the trainer's validation skips)."""
    if not capabilities(model).language_model:
        return evaluate_reconstruction(model, stream, max_bytes=max_bytes,
                                       batch_size=batch_size, device=device, dtype=dtype,
                                       per_file=per_file, progress=progress,
                                       checked=checked)
    unit = stream.units
    if unit.name != model.units.name:
        raise DataError(f"the model reads {model.units.name} units but the stream holds "
                        f"{unit.name} units")
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
        sizes = np.where(valid[:, 1:], stream.byte_sizes(np.minimum(target_pos, length - 1)), 0)
        text = targets.numpy() < unit.num_content  # not BOS, EOS or PAD
        scored = (target_pos >= first_scored) & text & valid[:, 1:]
        if stream.masked:  # chat data: only the bytes it trains on
            scored &= stream.is_target(np.minimum(target_pos, length - 1))
        docs = piece_docs[stream.piece_of(target_pos[scored])] if per_file else \
            np.zeros(int(scored.sum()), dtype=np.int64)
        kept = targets.numpy()[scored]
        totals.add(nll.numpy()[scored], correct.numpy()[scored], sizes[scored],
                   unit.char_counts(kept), unit.in_vocabulary(kept), docs)
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
    """Score ``split`` of ``store``: ``metric`` (the key of the figure to minimise:
    ``bpb``), bpb, accuracy, perplexity (2^bpb), confidence
    (probability of the true next unit) mean/min/max, bytes and units scored, bits per
    character, and with ``per_file=True`` bpb per document. Options as
    :func:`evaluate_stream`."""
    return evaluate_stream(model, open_stream(store, split, model.units), **options)
