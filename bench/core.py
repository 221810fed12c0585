"""Core figures of the flat byte transformer on this machine.

1. Training bytes/s and MFU of the ``small`` preset on enwik8-4M batches, against the fp32
   matmul peak measured in the same run.
2. Generation bytes/s at batch 1 (512 bytes, greedy), with and without the KV cache.
3. Val bpb of ``recipes/shakespeare-small.toml`` after ``--train-minutes`` of training on
   the standard split, scored on the whole val split.

    python bench/core.py                      # full run (10-minute training)
    python bench/core.py --train-minutes 1    # quick
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import ROOT, SHARED, median, median_seconds, require, write_result
from untok.config import replace, resolve
from untok.evaluate import evaluate
from untok.generate import SamplerConfig, generate
from untok.hardware import measure_matmul_peak
from untok.models import build_model, load
from untok.train.trainer import Trainer, train


def bench_training(repeats: int, peak: float) -> dict:
    data = require(SHARED / "enwik8-4M")
    config = resolve(preset_name="small", overrides=[
        f"data.path={str(data)!r}", "data.val_bytes=200000", "train.steps=1000"])
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(config, out, progress=False)
        times = median_seconds(lambda: trainer.train_step(1e-3), repeats, warmup=2)
    units = trainer.units_per_step
    rate = units / median(times)
    return {"preset": "small", "params": trainer.model.num_params(),
            "batch": config.train.batch_size, "context": config.model.context,
            "step_seconds": times, "bytes_per_s": rate,
            "flops_per_byte": trainer.model.flops_per_byte(),
            "mfu": rate * trainer.model.flops_per_byte() / peak}


def bench_generation(repeats: int, num_bytes: int = 512) -> dict:
    torch.manual_seed(0)
    model = build_model(resolve(preset_name="small").model).eval()
    prompt = b"The quick brown fox "
    greedy = SamplerConfig(temperature=0)
    results = {}
    for use_cache in (True, False):
        latencies: list[float] = []

        def run(use_cache: bool = use_cache, latencies: list[float] = latencies) -> None:
            last = time.perf_counter()
            for _ in generate(model, prompt, max_bytes=num_bytes, sampler=greedy,
                              use_cache=use_cache):
                now = time.perf_counter()
                latencies.append(now - last)
                last = now

        times = median_seconds(run, repeats if use_cache else max(1, repeats // 2))
        per_byte = np.array(latencies) * 1e3
        results["cache" if use_cache else "no_cache"] = {
            "seconds": times, "bytes_per_s": num_bytes / median(times),
            "latency_ms_p50": float(np.percentile(per_byte, 50)),
            "latency_ms_p90": float(np.percentile(per_byte, 90))}
    results["speedup"] = results["cache"]["bytes_per_s"] / results["no_cache"]["bytes_per_s"]
    results["bytes"] = num_bytes
    return results


def bench_quality(minutes: float) -> dict:
    require(SHARED / "tinyshakespeare.txt")
    recipe = ROOT / "recipes" / "shakespeare-small.toml"
    config = resolve(recipe=recipe, overrides=[
        f"data.path={str(SHARED / 'tinyshakespeare.txt')!r}"])
    config = replace(config, train={"minutes": minutes})
    with tempfile.TemporaryDirectory() as out:
        result = train(config, Path(out), progress=True)
        model = load(Path(out) / "best")
        from untok.data.ingest import open_data

        store = open_data(config.data.path, val_fraction=config.data.val_fraction)
        scores = evaluate(model, store, "val", progress=True)
    return {"recipe": "recipes/shakespeare-small.toml", "minutes": minutes,
            "params": model.num_params(), "steps": result.step,
            "bytes_seen": result.units_seen,
            "train_flops": result.units_seen * model.flops_per_byte(),
            "val_bytes": scores["bytes"], "val_bpb": scores["bpb"],
            "val_accuracy": scores["accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-minutes", type=float, default=10.0,
                        help="budget of the Shakespeare quality run (0 skips it)")
    args = parser.parse_args()

    peaks = [measure_matmul_peak(torch.device("cpu")) for _ in range(3)]
    peak = max(peaks)  # the best reading: slower ones measure the neighbours
    training = bench_training(args.repeats, peak)
    generation = bench_generation(args.repeats)
    quality = bench_quality(args.train_minutes) if args.train_minutes > 0 else None
    figures = {"matmul_peak_flops": peak, "matmul_peak_runs": peaks, "training": training,
               "generation": generation, "quality": quality}
    rows = [
        "| figure | value |", "|---|---|",
        f"| fp32 matmul peak (2048², best of 3 readings) | {peak / 1e9:.0f} GFLOP/s |",
        f"| training `small` ({training['params'] / 1e6:.1f}M, batch {training['batch']} x "
        f"{training['context']}) | {training['bytes_per_s']:,.0f} bytes/s, "
        f"MFU {training['mfu']:.0%} |",
        f"| generation batch 1, 512 bytes, KV cache | "
        f"{generation['cache']['bytes_per_s']:,.0f} bytes/s (p50 "
        f"{generation['cache']['latency_ms_p50']:.2f} ms, p90 "
        f"{generation['cache']['latency_ms_p90']:.2f} ms per byte) |",
        f"| generation batch 1, 512 bytes, no cache | "
        f"{generation['no_cache']['bytes_per_s']:,.0f} bytes/s "
        f"(cache is {generation['speedup']:.1f}x faster) |",
    ]
    if quality:
        rows.append(f"| Tiny Shakespeare val bpb after {quality['minutes']:g} min "
                    f"({quality['params'] / 1e6:.2f}M params, "
                    f"{quality['train_flops']:.1e} FLOPs) | {quality['val_bpb']:.3f} |")
    table = "\n".join(rows)
    print(table)
    print(f"wrote {write_result('core', figures, table)}")


if __name__ == "__main__":
    main()
