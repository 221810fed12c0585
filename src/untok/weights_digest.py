"""Naming a model by its weights: the SHA-256 a compressed file records, so that
decompression can tell whether it holds the model that coded it."""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_model
from torch import nn

# orders of the tied names tried for a file of an earlier format (7! would be 5,040 hashes)
MAX_TIED_GROUPS = 6


def weights_sha256(model: nn.Module) -> bytes:
    """SHA-256 of ``model``'s weights, the same for the same weights however they are saved
    or tied: every entry of its state dict in name order, as one JSON line of its name,
    dtype and shape, then its bytes (C order, as the machine holds them: little-endian on
    every platform torch supports). Names a model from format 6 of the container on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(json.dumps([name, str(flat.dtype), list(tensor.shape)]).encode() + b"\n")
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.digest()


def saved_weights_sha256s(model: nn.Module) -> set[bytes]:
    """The SHA-256s ``model.safetensors`` can have when untok saves ``model``: containers
    before format 6 name their model by it. safetensors lists the names of tied weights it
    leaves out in a hash map, so a model with two or more tied groups (a BLT and its entropy
    model) is written in any of their orders: one hash per order."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_model(model, str(path))
        saved = path.read_bytes()
    (size,) = struct.unpack_from("<Q", saved)
    header = json.loads(saved[8:8 + size])
    tied = list(header.pop("__metadata__", {}).items())
    hashes = {hashlib.sha256(saved).digest()}
    if len(tied) < 2 or len(tied) > MAX_TIED_GROUPS:
        return hashes
    for order in itertools.permutations(tied):
        text = json.dumps({"__metadata__": dict(order), **header}, separators=(",", ":"),
                          ensure_ascii=False)
        rewritten = text.encode().ljust(size, b" ")  # (the same length: only the order moved)
        hashes.add(hashlib.sha256(saved[:8] + rewritten + saved[8 + size:]).digest())
    return hashes
