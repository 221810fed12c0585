"""``untok demo``: a byte model trained, measured and sampled with nothing downloaded.

The corpus is the Python standard library's own source code, which every Python
installation carries; it is ingested once into the cache.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import time
from pathlib import Path

import numpy as np

from untok.config import resolve
from untok.data.ingest import BUILTIN, builtin_store
from untok.data.loader import UnitStream
from untok.evaluate import evaluate_stream
from untok.generate import SamplerConfig, generate_text
from untok.train.checkpoint import load
from untok.train.trainer import train
from untok.units import NUM_BYTES

EVAL_BYTES = 131072
PROMPT = b"def "


def compressor_bpb(data: bytes) -> dict[str, float]:
    """Bits per byte of classic compressors on exactly ``data``."""
    sizes = {"gzip -9": len(gzip.compress(data, 9)), "bzip2 -9": len(bz2.compress(data, 9)),
             "xz -9e": len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))}
    return {name: 8 * size / len(data) for name, size in sizes.items()}


def stream_bytes(stream: UnitStream, limit: int) -> bytes:
    """The byte values among the first ``limit`` units of ``stream``."""
    ids = stream.window(0, min(limit, len(stream)))
    return ids[ids < NUM_BYTES].astype(np.uint8).tobytes()


def run_demo(minutes: float = 3.0, out: Path = Path("runs/demo"),
             progress: bool = True) -> dict:
    """Train the ``demo`` preset on the built-in corpus for ``minutes``, then report."""
    store = builtin_store(progress)
    split = store.split_bytes()
    print(f"corpus: Python {BUILTIN} sources, {store.num_docs:,} files, "
          f"{store.num_bytes / 1e6:.1f} MB (train {split['train'] / 1e6:.1f} MB, "
          f"val {split['val'] / 1e6:.2f} MB)")
    config = resolve(preset_name="demo", overrides=[
        f"data.path={str(store.paths['bin'].with_suffix(''))!r}", f"train.minutes={minutes}"])
    (out / "metrics.jsonl").unlink(missing_ok=True)
    from untok.models import build_model

    params = build_model(config.model, "meta", init=False).num_params()
    print(f"model: flat byte transformer, {params / 1e6:.2f}M parameters, "
          f"training for {minutes:g} min")
    started = time.perf_counter()
    result = train(config, out, progress=progress)
    model = load(out / "best")
    val = UnitStream(store, "val")
    scores = evaluate_stream(model, val, max_bytes=EVAL_BYTES)
    baselines = compressor_bpb(stream_bytes(val, EVAL_BYTES + 1))
    print(f"\ntrained {result.step} steps on {result.bytes_seen / 1e6:.1f} MB in "
          f"{(time.perf_counter() - started) / 60:.1f} min")
    print(f"val bpb on {scores['bytes']:,} held-out bytes (lower is better):")
    print(f"  {'untok':10s}{scores['bpb']:.3f}")
    for name, bpb in baselines.items():
        print(f"  {name:10s}{bpb:.3f}")
    sample = generate_text(model, PROMPT, max_bytes=300,
                           sampler=SamplerConfig(temperature=0.8, top_k=40), seed=0)
    print("\nsample (temperature 0.8, top-k 40):\n" + "-" * 60)
    print((PROMPT + sample).decode("utf-8", errors="replace"))
    print("-" * 60)
    print(f"checkpoint: {out / 'best'}")
    print(f"try: untok generate {out / 'best'} --prompt 'class ' --max-bytes 400")
    return {"val_bpb": scores["bpb"], "baselines": baselines, "steps": result.step,
            "checkpoint": str(out / "best")}
