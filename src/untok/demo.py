"""``untok demo``: a byte model trained, measured and sampled with nothing downloaded.

The corpus is the Python standard library's own source code, which every Python
installation carries; it is ingested once into the cache. The whole demo (compressor
baselines, training, the final evaluation and the sample) fits the budget it is given.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from untok.config import resolve
from untok.data.ingest import BUILTIN, builtin_store
from untok.data.loader import UnitStream
from untok.data.store import ByteStore
from untok.errors import UntokError
from untok.files import cache_dir, write_atomic
from untok.generate import SamplerConfig, generate_text
from untok.models import load
from untok.train.trainer import train
from untok.units import NUM_BYTES

EVAL_BYTES = 131072
PROMPT = b"def "
SAMPLE_BYTES = 300
SAMPLE_SECONDS = 5.0  # kept back from training for the sample
XZ = lzma.PRESET_EXTREME | 9
# val bpb of the `demo` preset on the EVAL_BYTES above against one-core training minutes,
# from `python bench/demo.py` (bench/results/demo.json; a test keeps the two equal)
MEASURED_CURVE: dict[float, float] = {1: 2.362, 3: 2.043, 10: 1.916, 30: 1.816}
CURVE_MACHINE = "one core of a 2-core Intel Xeon VM"


def compressor_bpb(data: bytes) -> dict[str, float]:
    """Bits per byte of classic compressors on exactly ``data``."""
    sizes = {"gzip -9": len(gzip.compress(data, 9)), "bzip2 -9": len(bz2.compress(data, 9)),
             "xz -9e": len(lzma.compress(data, preset=XZ))}
    return {name: 8 * size / len(data) for name, size in sizes.items()}


def stream_bytes(stream: UnitStream, limit: int) -> bytes:
    """The byte values among the first ``limit`` units of ``stream``."""
    ids = stream.window(0, min(limit, len(stream)))
    return ids[ids < NUM_BYTES].astype(np.uint8).tobytes()


def conditional_xz_bpb(train: bytes, data: bytes) -> float:
    """xz -9e bits per byte of ``data`` after it has seen ``train``:
    size(train + data) - size(train), both compressed at once in two threads."""
    with ThreadPoolExecutor(2) as pool:  # lzma releases the GIL
        both, alone = pool.map(lambda b: len(lzma.compress(b, preset=XZ)),
                               (train + data, train))
    return 8 * (both - alone) / len(data)


def baselines(store: ByteStore) -> dict[str, float]:
    """gzip, bzip2, xz and xz given the whole train split, on the demo's held-out bytes;
    cached per store (xz over the train split takes a while)."""
    key = hashlib.sha256(f"{store.meta['sha256']}|{EVAL_BYTES}".encode()).hexdigest()[:16]
    path = cache_dir() / f"demo-baselines-{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    held_out = stream_bytes(UnitStream(store, "val"), EVAL_BYTES + 1)
    figures = compressor_bpb(held_out)
    figures["xz -9e given train"] = conditional_xz_bpb(store.split_data("train"), held_out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(figures))
    return figures


def verdict(bpb: float, figures: dict[str, float]) -> list[str]:
    """The result in words: which compressors the model beats, and what budget the
    measured curve says would beat the others."""
    beaten = [n for n, v in figures.items() if bpb < v]
    unbeaten = [n for n, v in figures.items() if bpb >= v]
    if not unbeaten:
        return [f"verdict: untok ({bpb:.3f} bpb) beats every compressor here, xz given the "
                "whole train split included."]
    if beaten:
        head = f"verdict: untok ({bpb:.3f} bpb) beats {_join(beaten)} but not {_join(unbeaten)}."
    else:
        head = f"verdict: untok ({bpb:.3f} bpb) beats none of the compressors yet."
    lines, later = [head], []
    for name in unbeaten:
        minutes = next((m for m, v in sorted(MEASURED_CURVE.items()) if v < figures[name]),
                       None)
        if minutes is None:
            later.append(f"{name} ({figures[name]:.3f})")
        else:
            lines.append(f"  {name} ({figures[name]:.3f}): passed after {minutes:g} minutes "
                         f"in the README's measurements ({MEASURED_CURVE[minutes]:.3f} bpb on "
                         f"{CURVE_MACHINE}): make demo MINUTES={minutes:g}")
    if later and MEASURED_CURVE:
        longest = max(MEASURED_CURVE)
        lines.append(f"  {_join(later)}: not passed within the {longest:g} minutes of the "
                     f"README's measurements ({MEASURED_CURVE[longest]:.3f} bpb then, on "
                     f"{CURVE_MACHINE}): it takes a longer run")
    elif later:
        lines.append(f"  {_join(later)}: no measured curve to say when")
    return lines


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def run_demo(minutes: float = 3.0, out: Path = Path("runs/demo"), progress: bool = True,
             force: bool = False) -> dict:
    """Train the ``demo`` preset on the built-in corpus, compare with classic compressors
    and sample from it, all within ``minutes`` of wall-clock."""
    started = time.perf_counter()
    out = Path(out)
    if (out / "last").exists() and not force:
        raise UntokError(f"{out} already holds a demo run; pass --force to replace it or "
                         "choose another --out")
    store = builtin_store(progress)
    split = store.split_bytes()
    print(f"corpus: Python {BUILTIN} sources, {store.num_docs:,} files, "
          f"{store.num_bytes / 1e6:.1f} MB (train {split['train'] / 1e6:.1f} MB, "
          f"val {split['val'] / 1e6:.2f} MB)")
    figures = baselines(store)
    remaining = 60 * minutes - (time.perf_counter() - started) - SAMPLE_SECONDS
    train_minutes = max(remaining, 3.0) / 60
    config = resolve(preset_name="demo", overrides=[
        f"data.path={str(store.paths['bin'].with_suffix(''))!r}",
        f"train.minutes={train_minutes}", f"train.eval_bytes={EVAL_BYTES}"])
    (out / "metrics.jsonl").unlink(missing_ok=True)
    from untok.models import build_model

    params = build_model(config.model, "meta", init=False).num_params()
    print(f"model: flat byte transformer, {params / 1e6:.2f}M parameters, "
          f"training for {train_minutes:.1f} of the {minutes:g} minutes")
    result = train(config, out, progress=progress)
    if result.stop_reason == "interrupted":
        raise KeyboardInterrupt
    if result.best_val_bpb is None:
        raise UntokError(f"the demo run stopped without a checkpoint ({result.stop_reason})")
    bpb = result.best_val_bpb
    model = load(out / "best")
    sample = generate_text(model, PROMPT, max_bytes=SAMPLE_BYTES,
                           sampler=SamplerConfig(temperature=0.8, top_k=40), seed=0)
    print(f"\ntrained {result.step} steps on {result.units_seen / 1e6:.1f} MB; "
          f"bits per byte on {EVAL_BYTES:,} held-out bytes (lower is better):")
    if result.step == 0:
        print("  (no step fitted the budget beside the evaluation: give more --minutes)")
    print(f"  {'untok':20s}{bpb:.3f}")
    for name, value in figures.items():
        print(f"  {name:20s}{value:.3f}")
    print("  (xz given train = size(train + held-out) - size(train): like the model, it has "
          "seen the train split)")
    print("\n".join(verdict(bpb, figures)))
    print("\nsample (temperature 0.8, top-k 40):\n" + "-" * 60)
    print((PROMPT + sample).decode("utf-8", errors="replace"))
    print("-" * 60)
    print(f"checkpoint: {out / 'best'}; the demo took "
          f"{(time.perf_counter() - started) / 60:.1f} of its {minutes:g} minutes")
    print(f"try: untok generate {out / 'best'} --prompt 'class ' --max-bytes 400")
    return {"val_bpb": bpb, "baselines": figures, "steps": result.step,
            "checkpoint": str(out / "best")}
