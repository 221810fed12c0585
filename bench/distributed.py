"""Data-parallel training on this machine: one process against two under torchrun.

Training speed (same global batch, same model, enwik8-4M): one process with all threads,
one process with one thread, and two processes (DDP, then FSDP2) with one thread each, as
torchrun sets them. Bytes/s is the median of the logged rates after the first log line;
scaling efficiency = two-process rate / (2 x one-thread rate).

Parity: the `tiny` preset, global batch 8, 10 steps, one process against DDP and FSDP2 on
two: the largest difference in the logged losses (bpb) and in the final weights.

    python bench/distributed.py --steps 40
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import untok
from common import SHARED, require, write_result


def train(out: Path, data: Path, preset: str, steps: int, batch: int, *, nproc: int = 1,
          parallel: str = "ddp", threads: int | None = None, log_every: int = 0) -> list[dict]:
    command = [sys.executable, "-m", "untok", "train", "--data", str(data), "--preset", preset,
               "--steps", str(steps), "--out", str(out), "--quiet",
               "--set", f"train.batch_size={batch}",
               "--set", f"train.log_every={log_every or max(1, steps // 8)}",
               "--set", f"train.eval_every={steps + 1}", "--set", "train.eval_bytes=4096"]
    if nproc > 1:
        command += ["--nproc", str(nproc), "--parallel", parallel]
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in (out / "metrics.jsonl").open()]


def rate(records: list[dict]) -> float:
    rates = [r["units_per_s"] for r in records if "units_per_s" in r]
    return statistics.median(rates[1:] or rates)  # the first includes the warm-up


def losses(records: list[dict]) -> list[float]:
    return [r["loss_bpb"] for r in records if "loss_bpb" in r]


def speed(data: Path, preset: str, steps: int, batch: int, root: Path) -> dict:
    cores = os.cpu_count() or 1
    runs = {"1 process, all threads": {"threads": cores},
            "1 process, 1 thread": {"threads": 1},
            "2 processes DDP, 1 thread each": {"nproc": 2, "parallel": "ddp"},
            "2 processes FSDP2, 1 thread each": {"nproc": 2, "parallel": "fsdp"}}
    figures = {}
    for name, options in runs.items():
        records = train(root / name.replace(" ", "_").replace(",", ""), data, preset, steps,
                        batch, **options)
        figures[name] = {"bytes_per_s": rate(records), **options}
        print(f"{name}: {figures[name]['bytes_per_s']:,.0f} B/s", flush=True)
    one = figures["1 process, 1 thread"]["bytes_per_s"]
    for name in ("2 processes DDP, 1 thread each", "2 processes FSDP2, 1 thread each"):
        figures[name]["scaling_efficiency"] = figures[name]["bytes_per_s"] / (2 * one)
        figures[name]["vs_one_process_all_threads"] = (
            figures[name]["bytes_per_s"] / figures["1 process, all threads"]["bytes_per_s"])
    return figures


def parity(data: Path, root: Path) -> dict:
    single = train(root / "single", data, "tiny", 10, 8, threads=1, log_every=1)
    figures = {}
    for parallel in ("ddp", "fsdp"):
        records = train(root / parallel, data, "tiny", 10, 8, nproc=2, parallel=parallel,
                        log_every=1)
        weights = max((p - q).abs().max().item() for p, q in zip(
            untok.load(root / parallel / "last").parameters(),
            untok.load(root / "single" / "last").parameters(), strict=True))
        figures[parallel] = {
            "max_loss_diff_bpb": max(abs(a - b) for a, b in zip(losses(records),
                                                                losses(single), strict=True)),
            "max_weight_diff": weights}
    return figures


def render(figures: dict) -> str:
    rows = [f"Training speed, `{figures['preset']}` preset, global batch {figures['batch']}, "
            f"{figures['steps']} steps:", "", "| run | bytes/s | scaling efficiency |",
            "|---|---|---|"]
    for name, row in figures["speed"].items():
        efficiency = row.get("scaling_efficiency")
        rows.append(f"| {name} | {row['bytes_per_s']:,.0f} | "
                    f"{'' if efficiency is None else f'{efficiency:.0%}'} |")
    rows += ["", "Parity (tiny, global batch 8, 10 steps; two processes against one):", "",
             "| parallel | max loss difference (bpb) | max weight difference |", "|---|---|---|"]
    rows += [f"| {name} | {row['max_loss_diff_bpb']:.1e} | {row['max_weight_diff']:.1e} |"
             for name, row in figures["parity"].items()]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16, help="global batch (windows)")
    args = parser.parse_args()
    data = require(SHARED / "enwik8-4M")
    with tempfile.TemporaryDirectory() as tmp:
        figures = {"preset": args.preset, "steps": args.steps, "batch": args.batch,
                   "speed": speed(data, args.preset, args.steps, args.batch, Path(tmp)),
                   "parity": parity(data, Path(tmp) / "parity")}
    table = render(figures)
    print(table)
    print(f"wrote {write_result('distributed', figures, table)}")


if __name__ == "__main__":
    main()
