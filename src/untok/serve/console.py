"""The training console's backend (``untok serve --runs DIR``): the runs under a folder,
their metrics as they are written, and training runs started, stopped and resumed as
``untok train`` processes.

A run is a folder of DIR holding ``metrics.jsonl`` (any run, started here or not). A run
started here also holds ``console.json`` (the form it was started with, written before the
process starts: the run is listed, ``starting``, until its first metrics) and
``console.log`` (what its process printed). Stopping sends SIGINT, so the trainer writes
its checkpoint before it exits.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from untok.config import PRESETS, resolve
from untok.data.ingest import data_exists
from untok.errors import UntokError

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MARKS = ("metrics.jsonl", "console.json")  # the files that make a folder a run
RECENT_SECONDS = 60.0  # a run started elsewhere counts as running while it wrote this lately
EXIT_STATUS = {0: "finished", 130: "stopped", 143: "stopped"}


@dataclass
class RunForm:
    """What the console's form asks for a new run."""

    name: str
    data: str
    preset: str | None = None
    recipe: str | None = None
    steps: int | None = None
    minutes: float | None = None
    overrides: list[str] = field(default_factory=list)

    def check(self, runs: Path) -> None:
        """A one-line :class:`UntokError` for anything that would make ``untok train`` fail
        at once (bad name, unknown preset, missing data or recipe, bad --set)."""
        if not RUN_NAME.match(self.name):
            raise UntokError(f"run name '{self.name}': use letters, digits, '.', '_' or '-'")
        if any((runs / self.name / mark).exists() for mark in MARKS):
            raise UntokError(f"a run named '{self.name}' already exists; choose another name")
        if bool(self.preset) == bool(self.recipe):
            raise UntokError("choose a preset or a recipe (one of them)")
        if self.preset and self.preset not in PRESETS:
            raise UntokError(f"unknown preset '{self.preset}'; see 'untok presets'")
        if self.recipe and not Path(self.recipe).is_file():
            raise UntokError(f"recipe not found: {self.recipe}")
        if not self.data or not data_exists(self.data):
            raise UntokError(f"data not found: '{self.data}' is no file, folder or byte store")
        if self.steps is None and self.minutes is None:
            raise UntokError("give a budget: steps or minutes")
        resolve(preset_name=self.preset, recipe=self.recipe, overrides=self.overrides)

    def argv(self, out: Path) -> list[str]:
        args = ["--preset", self.preset] if self.preset else \
            ["--recipe", str(Path(self.recipe).expanduser().resolve())]
        args += ["--data", str(Path(self.data).expanduser().resolve()), "--out", str(out)]
        args += ["--steps", str(self.steps)] if self.steps is not None else []
        args += ["--minutes", str(self.minutes)] if self.minutes is not None else []
        return [*args, *(a for o in self.overrides for a in ("--set", o))]


class Runs:
    """The runs under ``root`` and the training processes this server started."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise UntokError(f"runs folder not found: {self.root}; create it or pass another "
                             "--runs")
        self.processes: dict[str, subprocess.Popen] = {}

    def folder(self, name: str) -> Path:
        path = self.root / name
        if not RUN_NAME.match(name) or not any((path / f).is_file() for f in MARKS):
            raise UntokError(f"no run named '{name}' under {self.root}")
        return path

    def records(self, name: str, after: int = 0) -> list[dict[str, Any]]:
        """The metrics records of run ``name`` from record ``after`` on."""
        path = self.folder(name) / "metrics.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        out = []
        for line in lines[after:]:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written: read it next time
                break
        return out

    def status(self, name: str, records: list[dict[str, Any]]) -> tuple[str, str | None]:
        """(starting / running / finished / stopped / failed / incomplete, the error of a
        failed run)."""
        process = self.processes.get(name)
        if process is not None:
            code = process.poll()
            if code is None:
                return ("running" if records else "starting"), None
            if code in EXIT_STATUS:
                return EXIT_STATUS[code], None
            return "failed", last_line(self.root / name / "console.log")
        ends = [r for r in records if r.get("event") in ("start", "end")]
        if ends and ends[-1]["event"] == "end":
            return ("stopped" if ends[-1]["reason"] == "interrupted" else "finished"), None
        metrics = self.root / name / "metrics.jsonl"
        age = time.time() - metrics.stat().st_mtime if metrics.is_file() else RECENT_SECONDS
        return ("running" if age < RECENT_SECONDS else "incomplete"), None

    def summary(self, name: str) -> dict[str, Any]:
        records = self.records(name)
        status, error = self.status(name, records)
        starts = [r for r in records if r.get("event") == "start"]
        config = starts[-1]["config"] if starts else {}
        evals = [r for r in records if r.get("event") == "eval"]
        form = self.form(name)
        model = config.get("model", {})
        return {"name": name, "status": status, "error": error,
                "preset": (form or {}).get("preset") or (form or {}).get("recipe") or
                f"{model.get('family', '?')} {model.get('dim', '?')}x"
                f"{model.get('num_layers', '?')}",
                "data": Path(config.get("data", {}).get("path", "?")).name,
                "steps": max((r.get("step", 0) for r in records), default=0),
                "best_val_bpb": evals[-1]["best_val_bpb"] if evals else None,
                "metric": evals[-1]["metric"] if evals else None,
                "best_checkpoint": (self.root / name / "best").is_dir(),
                "controllable": name in self.processes, "records": len(records)}

    def form(self, name: str) -> dict[str, Any] | None:
        path = self.root / name / "console.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def list(self) -> list[dict[str, Any]]:
        """Every run's summary, the most recently active first."""
        found = {p.parent for mark in MARKS for p in self.root.glob(f"*/{mark}")}
        newest = sorted(found, key=lambda d: -max(
            (d / m).stat().st_mtime for m in MARKS if (d / m).is_file()))
        return [self.summary(d.name) for d in newest if RUN_NAME.match(d.name)]

    def start(self, form: RunForm) -> dict[str, Any]:
        form.check(self.root)
        out = self.root / form.name
        out.mkdir(exist_ok=True)
        (out / "console.json").write_text(json.dumps(form.__dict__, indent=2) + "\n")
        self._launch(form.name, ["train", *form.argv(out)])
        return {"name": form.name}

    def resume(self, name: str, steps: int | None = None, minutes: float | None = None
               ) -> dict[str, Any]:
        out = self.folder(name)
        if name in self.processes and self.processes[name].poll() is None:
            raise UntokError(f"run '{name}' is still running")
        if not (out / "last").is_dir():
            raise UntokError(f"run '{name}' has no checkpoint to resume from yet")
        budget = (["--steps", str(steps)] if steps else []) + \
            (["--minutes", str(minutes)] if minutes else [])
        self._launch(name, ["train", "--resume", str(out / "last"), *budget])
        return {"name": name}

    def stop(self, name: str) -> dict[str, Any]:
        process = self.processes.get(name)
        if process is None or process.poll() is not None:
            raise UntokError(f"run '{name}' is not running from this console")
        process.send_signal(signal.SIGINT)  # the trainer saves its checkpoint, then exits
        return {"name": name}

    def _launch(self, name: str, args: list[str]) -> None:
        log = open(self.root / name / "console.log", "ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "untok", *args, "--quiet"], stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.root)
        log.close()  # the child holds its own descriptor

    def close(self) -> None:
        """Stop every run this console started (each writes its checkpoint)."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in self.processes.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def last_line(path: Path) -> str | None:
    """The last non-empty line of a log file (a failed run's one-line error)."""
    if not path.is_file():
        return None
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].removeprefix("untok: error: ") if lines else None
