"""Scoring an autoencoder (a family with ``language_model = False``): strict
reconstruction accuracy, its robustness to noise, and text <-> vectors.

The split is read as one character stream cut into windows of ``context`` characters
(chunk-aligned, no overlap); every text character (not BOS/EOS/PAD) is scored once. A
character counts as right only if every one of its code bytes is decoded right (strict
accuracy). With ``noise``, Gaussian noise of each level x the per-dimension standard
deviation of the batch's chunk vectors is added before decoding.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from untok.data.loader import UnitStream
from untok.errors import CheckpointError, DataError
from untok.hardware import autocast
from untok.models.registry import capabilities, load
from untok.nn.checked_decoding import CheckedDecoding
from untok.nn.chunk_autoencoder import reconstruction_loss

NOISE_LEVELS = (0.1, 0.5, 1.0)


def noisy(vectors: torch.Tensor, level: float, generator: torch.Generator) -> torch.Tensor:
    """``vectors`` Float[..., E] plus Gaussian noise of ``level`` x each dimension's
    standard deviation over all of them."""
    if level == 0:
        return vectors
    std = vectors.flatten(0, -2).float().std(0, correction=0)  # (E,)
    noise = torch.randn(vectors.shape, generator=generator, device=vectors.device)
    return vectors + (level * std * noise).to(vectors.dtype)


@torch.no_grad()
def evaluate_reconstruction(model: nn.Module, stream: UnitStream, *,
                            max_bytes: int | None = None, batch_size: int = 16,
                            device: torch.device | None = None,
                            dtype: torch.dtype | None = None, per_file: bool = False,
                            progress: bool = False,
                            noise: Sequence[float] = NOISE_LEVELS,
                            checked: bool = True) -> dict[str, Any]:
    """Strict accuracy (``metric``: ``reconstruction_bits``, the cross-entropy in bits
    per code byte, lower is better), byte accuracy, characters and UTF-8 bytes scored,
    ``noise`` {level: strict accuracy}, and with ``per_file`` the accuracy per document.
    Strict and byte accuracy are of the decoding checked against the encoder
    (:mod:`untok.nn.checked_decoding`; ``checked = False``: of the decoder alone, which
    ``decoder_accuracy`` always is)."""
    units, context = stream.units, model.config.context
    device = device or next(model.parameters()).device
    length = len(stream) if max_bytes is None else min(len(stream), max_bytes)
    starts = np.arange(0, length, context)
    docs_of_piece = stream.segments.docs
    num_docs = stream.store.num_docs if per_file else 1
    chars, right = np.zeros(num_docs, np.int64), np.zeros(num_docs, np.int64)
    text_bytes, nats, code_bytes, bytes_right, decoder_right = 0, 0.0, 0, 0, 0
    check = CheckedDecoding(model.autoencoder.encoder) if checked else None
    noisy_right = dict.fromkeys(noise, 0)
    generator = torch.Generator(device=device).manual_seed(0)
    was_training = model.training
    model.eval()
    began = time.perf_counter()
    for first in tqdm(range(0, len(starts), batch_size), desc="eval", unit="batch",
                      disable=not progress, leave=False):
        positions = starts[first:first + batch_size, None] + np.arange(context)  # (B, T)
        valid = positions < length
        clipped = np.minimum(positions, length - 1)
        ids = np.where(valid, stream.gather(clipped), units.pad)
        text = valid & (ids < units.num_content)  # (B, T)
        inputs = torch.from_numpy(ids).to(device)
        with autocast(device, dtype):
            data, _ = model.chunk_bytes(inputs)
            vectors = model.autoencoder.encode(data)
            logits = model.decode_logits(vectors)
        keep = torch.from_numpy(text).to(device).view(data.shape[:-1])  # (B, S, G)
        nats += float(reconstruction_loss(logits, data, keep)) * int(keep.sum()) * data.shape[-1]
        code_bytes += int(keep.sum()) * data.shape[-1]
        read = logits.argmax(-1)  # (B, S, G, W): what the decoder alone reads
        decoder_right += int(((read == data).all(-1) & keep).sum())
        byte_ok = (check(vectors, logits) if check else read) == data
        bytes_right += int((byte_ok & keep[..., None]).sum())
        char_ok = byte_ok.all(-1).flatten(1).cpu().numpy()[text]
        docs = docs_of_piece[stream.piece_of(positions[text])] if per_file else \
            np.zeros(int(text.sum()), np.int64)
        chars += np.bincount(docs, minlength=num_docs)
        right += np.bincount(docs, weights=char_ok, minlength=num_docs).astype(np.int64)
        text_bytes += int(stream.byte_sizes(clipped)[text].sum())
        for level in noise:
            with autocast(device, dtype):
                decoded = model.decode_logits(noisy(vectors, level, generator)).argmax(-1)
            noisy_right[level] += int(((decoded == data).all(-1) & keep).sum())
    model.train(was_training)
    total = int(chars.sum())
    if total == 0:
        raise DataError("nothing to evaluate: the split holds no characters")
    result = {"metric": "reconstruction_bits", "strict_accuracy": int(right.sum()) / total,
              "decoder_accuracy": decoder_right / total,
              "byte_accuracy": bytes_right / code_bytes,
              "reconstruction_bits": nats / code_bytes / math.log(2), "chars": total,
              "bytes": text_bytes, "units": total,
              "noise": {str(level): n / total for level, n in noisy_right.items()},
              "seconds": time.perf_counter() - began}
    if per_file:
        names = stream.store.names()
        result["per_file"] = [{"name": names[d], "chars": int(chars[d]),
                               "strict_accuracy": float(right[d] / chars[d])}
                              for d in np.flatnonzero(chars)]
    return result


def load_autoencoder(path: str, device: torch.device | str = "cpu") -> nn.Module:
    """The autoencoder of checkpoint ``path``; a one-line error for a language model."""
    model = load(path, device)
    if capabilities(model).language_model:
        raise CheckpointError(f"{path} holds a '{model.config.family}' language model, not "
                              "an autoencoder: train one with `untok train --preset "
                              "tokun-16 --data DATA`")
    return model


@torch.no_grad()
def round_trip(model: nn.Module, text: bytes, noise: float = 0.0, seed: int = 0
               ) -> dict[str, Any]:
    """Encode ``text`` into chunk vectors and decode them (with ``noise`` x the vectors'
    per-dimension std added): the vectors, the text decoded, and how many characters
    came back right."""
    if not text:
        raise DataError("nothing to encode: give some text")
    units = model.units
    ids = torch.from_numpy(units.encode(text))[None].to(next(model.parameters()).device)
    vectors = model.encode(ids)  # (1, S, E)
    generator = torch.Generator(device=ids.device).manual_seed(seed)
    decoded = model.decode(noisy(vectors, noise, generator))[0, :ids.shape[1]]
    return {"chunks": vectors.shape[1], "chunk_chars": model.config.chunks.size,
            "dim": vectors.shape[2], "vectors": vectors[0].tolist(),
            "decoded": units.decode(decoded[decoded < units.num_content].cpu().numpy()),
            "chars": ids.shape[1], "chars_right": int((decoded == ids[0]).sum())}


@torch.no_grad()
def decode_vectors(model: nn.Module, vectors: list[list[float]]) -> bytes:
    """The text of chunk vectors (as :func:`round_trip` gives them), padding dropped."""
    tensor = torch.tensor(vectors, dtype=torch.float32)
    if tensor.ndim != 2 or tensor.shape[1] != model.config.chunks.dim:
        raise DataError(f"expected a list of chunk vectors of {model.config.chunks.dim} "
                        f"numbers each, got shape {tuple(tensor.shape)}")
    ids = model.decode(tensor[None].to(next(model.parameters()).device))[0]
    units = model.units
    return units.decode(ids[ids < units.num_content].cpu().numpy())
