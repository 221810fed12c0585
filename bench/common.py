"""Shared helpers for benchmark scripts: machine description, timing, result files."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
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
SHARED = ROOT.parent / "shared" / "data"


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
