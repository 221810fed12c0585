"""Training speed: untok's flat transformer vs Hugging Face GPT-2 of the same shape.

All three train on the same enwik8-4M batches with the same AdamW settings, alternating
A B C A B C in one process (untok eager, untok compiled as ``untok train --compile`` does,
transformers eager); each repetition times ``--steps`` optimizer steps. Reports median
bytes/s, the ratio, MFU against the fp32 matmul peak measured in the same run, and the peak
resident memory of training each contender in a fresh subprocess.

    python bench/train_speed.py                       # shapes small and base
    python bench/train_speed.py --budget-minutes 10   # keep alternating for 10 minutes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from common import SHARED, median, require, write_result
from contenders import Stepper, gpt2_model, peak_rss_mb, shape, untok_model
from untok.data.ingest import open_data
from untok.data.loader import TrainSampler, UnitStream
from untok.hardware import measure_matmul_peak
from untok.models import build_model

BATCH = {"tiny": 4, "small": 16, "base": 4}


def compiled_untok_model(config) -> torch.nn.Module:
    model = untok_model(config)
    model.compile()  # what `untok train --compile` does
    return model


BUILDERS = {"untok": untok_model, "untok-compiled": compiled_untok_model,
            "transformers-gpt2": gpt2_model}


def batches(preset: str, count: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    store = open_data(require(SHARED / "enwik8-4M"), val_bytes=200_000, progress=False)
    sampler = TrainSampler(UnitStream(store, "train"), shape(preset).context, batch_size,
                           seed=0)
    return [sampler.next_batch() for _ in range(count)]


def worker(contender: str, preset: str, steps: int) -> None:
    """Train one contender for a few steps in this (fresh) process; print its peak memory."""
    torch.manual_seed(0)
    stepper = Stepper(BUILDERS[contender](shape(preset)))
    for inputs, targets in batches(preset, steps, BATCH[preset]):
        stepper.step(inputs, targets)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def memory_of(contender: str, preset: str) -> float:
    result = subprocess.run([sys.executable, __file__, "--worker", contender, "--shapes",
                             preset, "--steps", "2"], capture_output=True, text=True,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def bench_shape(preset: str, repeats: int, steps: int, deadline: float,
                peaks: list[float]) -> dict:
    """A/B timings of one shape; appends a matmul peak reading before every repetition."""
    torch.manual_seed(0)
    config = shape(preset)
    data = batches(preset, steps, BATCH[preset])
    steppers = {name: Stepper(build(config)) for name, build in BUILDERS.items()}
    units = BATCH[preset] * config.context * steps
    for stepper in steppers.values():  # warm up kernels and allocator, compile
        for inputs, targets in data[:2]:
            stepper.step(inputs, targets)
    rates: dict[str, list[float]] = {name: [] for name in steppers}
    while len(rates["untok"]) < repeats or time.perf_counter() < deadline:
        peaks.append(measure_matmul_peak(torch.device("cpu"), seconds=0.5))
        for name, stepper in steppers.items():  # A B A B ...
            start = time.perf_counter()
            for inputs, targets in data:
                stepper.step(inputs, targets)
            rates[name].append(units / (time.perf_counter() - start))
        if len(rates["untok"]) >= 3 * repeats:
            break
    flops_per_byte = build_model(config, "meta", init=False).flops_per_byte()
    result = {"preset": preset, "batch": BATCH[preset], "context": config.context,
              "params": {n: sum(p.numel() for p in s.model.parameters())
                         for n, s in steppers.items()},
              "flops_per_byte": flops_per_byte}
    for name, values in rates.items():
        rate = median(values)
        result[name] = {"bytes_per_s": rate, "bytes_per_s_runs": values,
                        "peak_rss_mb": memory_of(name, preset)}
    baseline = result["transformers-gpt2"]["bytes_per_s"]
    for name in rates:
        result[name]["ratio"] = result[name]["bytes_per_s"] / baseline
    result["ratio"] = result["untok"]["ratio"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["small", "base"], choices=list(BATCH))
    parser.add_argument("--repeats", type=int, default=3, help="minimum A/B repetitions")
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps per repetition")
    parser.add_argument("--budget-minutes", type=float, default=0.0,
                        help="keep alternating until this much time has passed per shape")
    parser.add_argument("--worker", choices=list(BUILDERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.shapes[0], args.steps)
        return

    peaks = [measure_matmul_peak(torch.device("cpu"))]
    shapes = {}
    for preset in args.shapes:
        deadline = time.perf_counter() + 60 * args.budget_minutes
        shapes[preset] = bench_shape(preset, args.repeats, args.steps, deadline, peaks)
    peak = max(peaks)  # every MFU is against the best reading of the whole run
    for r in shapes.values():
        for name in BUILDERS:
            r[name]["mfu"] = r[name]["bytes_per_s"] * r["flops_per_byte"] / peak
    rows = ["| shape | contender | params | bytes/s | vs transformers | MFU | peak RSS |",
            "|---|---|---|---|---|---|---|"]
    for preset, r in shapes.items():
        for name in BUILDERS:
            f = r[name]
            rows.append(f"| `{preset}` (batch {r['batch']} x {r['context']}) | {name} | "
                        f"{r['params'][name] / 1e6:.1f}M | {f['bytes_per_s']:,.0f} | "
                        f"**{f['ratio']:.2f}x** | {f['mfu']:.0%} | {f['peak_rss_mb']:.0f} MB |")
    rows.append(f"\nfp32 matmul peak measured in the same run: {peak / 1e9:.0f} GFLOP/s "
                f"(best of {len(peaks)} readings taken between repetitions).")
    table = "\n".join(rows)
    print(table)
    figures = {"matmul_peak_flops": peak, "matmul_peak_runs": peaks, "shapes": shapes}
    print(f"wrote {write_result('train_speed', figures, table)}")


if __name__ == "__main__":
    main()
