"""Shared helpers for benchmark scripts: machine description, timing, result files."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from untok import __version__
from untok.hardware import cpu_name

ROOT = Path(__file__).resolve().parents[1]
# tests point this elsewhere so that smoke runs never overwrite the published results
RESULTS = Path(os.environ.get("UNTOK_BENCH_RESULTS", ROOT / "bench" / "results"))
# UNTOK_SHARED_DATA: the corpora elsewhere (e.g. carried to a GPU machine)
SHARED = Path(os.environ.get("UNTOK_SHARED_DATA") or ROOT.parent / "shared" / "data")


def machine() -> dict[str, Any]:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__,
            "untok": __version__, "platform": platform.platform()}


def command() -> str:
    return " ".join(shlex.quote(a) for a in ["python", *sys.argv])


def median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Run ``fn`` ``warmup`` times, then time it ``repeats`` times; return every duration."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_result(name: str, figures: dict[str, Any], table: str) -> Path:
    """Write ``bench/results/NAME.json`` (machine, command, figures) and ``NAME.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"name": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": command(),
              "machine": machine(), "figures": figures}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(
        f"{table}\n\nMachine: {record['machine']['cpu']}, {record['machine']['cores']} cores, "
        f"torch {record['machine']['torch']}. Command: `{record['command']}`\n")
    return path


def require(path: Path) -> Path:
    if not path.exists():
        sys.exit(f"missing reference data {path}; see ../shared/data/README.md")
    return path


def launch(name: str, overrides: list[str], out: Path, minutes: float, core: int,
           recipe: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "untok", "train", "--recipe", str(recipe),
               "--minutes", str(minutes),
               "--out", str(out), "--overwrite", "--quiet",
               "--set", "train.eval_every=100000"]
    for item in overrides:
        command += ["--set", item]
    if sys.platform.startswith("linux"):
        command = ["taskset", "-c", str(core % os.cpu_count()), *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print(f"train {name}: {' '.join(command)}", flush=True)
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)


def train_all(runs: dict[str, tuple[Path, list[str]]], minutes: float | dict[str, float],
              jobs: int, recipe: Path | dict[str, Path]) -> None:
    """Train every run, ``jobs`` at a time, each in its own process on its own core, for
    ``minutes`` from ``recipe`` (one for all, or one per run name)."""
    pending = list(runs.items())
    active: list[tuple[str, subprocess.Popen, int]] = []
    while pending or active:
        while pending and len(active) < jobs:
            busy = {core for _, _, core in active}
            core = min(set(range(jobs)) - busy)
            name, (out, overrides) = pending.pop(0)
            budget = minutes[name] if isinstance(minutes, dict) else minutes
            start = recipe[name] if isinstance(recipe, dict) else recipe
            active.append((name, launch(name, overrides, out, budget, core, start), core))
        time.sleep(2)
        for item in list(active):
            if item[1].poll() is not None:
                if item[1].returncode:
                    sys.exit(f"training {item[0]} failed (exit {item[1].returncode})")
                active.remove(item)


def training_rate(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    rates = [r["units_per_s"] for r in records if "units_per_s" in r]
    steps = [r["step"] for r in records if "step" in r]
    return {"units_per_s": median(rates[1:] or rates or [float("nan")]),  # skip warm-up
            "steps": max(steps)}
