"""Next-byte entropies precomputed next to a byte store (``untok data entropies``).

For every unit of each split's unit stream, the entropy (bits, float16) of an entropy
model's prediction of that unit, as BLT's entropy patcher would compute it with unlimited
history (a sliding window of the model's context)::

    NAME.entropy.json          entropy model sha256, newline_reset, units per split
    NAME.entropy-train.f16     one float16 per unit of the train stream
    NAME.entropy-val.f16

Training a BLT whose entropy model and settings match reads its patch boundaries from these
files instead of running the entropy model on every batch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from untok.config import PatchingConfig
from untok.data.loader import UnitStream
from untok.data.store import ByteStore
from untok.files import sha256_file, write_atomic
from untok.patching import Patcher, iter_entropies

SPLITS = ("train", "val")


def entropy_paths(store: ByteStore) -> dict[str, Path]:
    base = store.paths["bin"].with_suffix("")
    paths = {split: base.with_name(f"{base.name}.entropy-{split}.f16") for split in SPLITS}
    return {**paths, "meta": base.with_name(f"{base.name}.entropy.json")}


def compute_entropies(store: ByteStore, checkpoint: str | Path, *,
                      newline_reset: bool = False, chunk: int = 4096,
                      progress: bool = True) -> dict:
    """Score every split of ``store`` with the byte model at ``checkpoint``; write the files
    atomically (temporary names, the meta file renamed into place last)."""
    from untok.checkpoint import read_model_config, resolve_checkpoint
    from untok.models import load
    from untok.models.blt import check_entropy_shape

    checkpoint = resolve_checkpoint(checkpoint)
    check_entropy_shape(read_model_config(checkpoint), checkpoint)
    model = load(checkpoint)
    patcher = Patcher(PatchingConfig(kind="entropy", entropy_model=str(checkpoint),
                                     newline_reset=newline_reset), model)
    paths = entropy_paths(store)
    meta = {"entropy_sha256": sha256_file(checkpoint / "model.safetensors"),
            "entropy_model": str(checkpoint), "newline_reset": newline_reset, "units": {}}
    for split in SPLITS:
        stream = UnitStream(store, split)
        tmp = paths[split].with_name(paths[split].name + f".tmp-{os.getpid()}")
        try:
            _write_entropies(patcher, stream, tmp, chunk, progress)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, paths[split])
        meta["units"][split] = len(stream)
    write_atomic(paths["meta"], json.dumps(meta, indent=2) + "\n")
    return meta


def _write_entropies(patcher: Patcher, stream: UnitStream, path: Path, chunk: int,
                     progress: bool) -> None:
    values = np.memmap(path, dtype=np.float16, mode="w+", shape=(max(len(stream), 1),))
    bar = tqdm(total=len(stream), desc=f"entropies {stream.split}", unit="B",
               unit_scale=True, disable=not progress)
    position = 0
    read = lambda a, b: torch.from_numpy(stream.window(a, b - a))  # noqa: E731
    for scores in iter_entropies(patcher, read, len(stream), chunk):
        values[position:position + len(scores)] = scores.numpy()
        position += len(scores)
        bar.update(len(scores))
    bar.close()
    values.flush()


def open_entropies(store: ByteStore, patching: PatchingConfig) -> dict[str, np.ndarray] | None:
    """The precomputed entropies of ``store`` if they were made by this config's entropy
    model with the same settings, else None."""
    paths = entropy_paths(store)
    if patching.kind != "entropy" or not paths["meta"].is_file():
        return None
    try:
        meta = json.loads(paths["meta"].read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("entropy_sha256") != patching.entropy_sha256 or \
            meta.get("newline_reset") != patching.newline_reset:
        return None
    arrays = {}
    for split in SPLITS:
        units = meta["units"][split]
        if not paths[split].is_file() or paths[split].stat().st_size != 2 * max(units, 1):
            return None
        arrays[split] = np.memmap(paths[split], dtype=np.float16, mode="r")[:units]
    return arrays


def ensure_entropies(store: ByteStore, patching: PatchingConfig, progress: bool) -> None:
    """Entropy patching: compute ``store``'s entropy cache with the entropy model of
    ``patching`` unless one made by the same weights and settings is there (then it is
    reused). What training runs before its first step (``train.entropy_cache``)."""
    if patching.kind != "entropy" or open_entropies(store, patching) is not None:
        return
    began = time.perf_counter()
    meta = compute_entropies(store, patching.entropy_model,
                             newline_reset=patching.newline_reset, progress=progress)
    if progress:
        print(f"entropies of {sum(meta['units'].values()):,} units computed once in "
              f"{time.perf_counter() - began:.0f} s (reused while the entropy model is "
              "the same)", file=sys.stderr)
