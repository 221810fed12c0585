"""What `untok demo` should train: candidates on the built-in corpus at the demo's budget,
then the winner's curve of val bpb against training minutes.

candidates  a handful of shapes and optimizer settings on the `stdlib` corpus (the Python
            standard library's sources), ``--minutes`` each (default 3, the demo's budget);
            val bpb on the demo's 131,072 held-out bytes, next to gzip / bzip2 / xz and xz
            given the whole train split, on exactly those bytes.
curve       the chosen candidate (``--curve`` or the best) at ``--curve-minutes`` budgets,
            so the demo can say what budget would change its verdict.

Every run trains in its own process pinned to one core (``--jobs`` at a time), so "minutes"
are one-core minutes: `untok demo` on two cores trains faster than these figures.

    python bench/demo.py
    python bench/demo.py --sections curve --curve "192 x 4" --curve-minutes 1 3 10 30
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from common import RESULTS, ROOT, command, train_all, training_rate, write_result

EVAL = ["train.eval_bytes=131072"]  # the demo's held-out bytes (untok.demo.EVAL_BYTES)


def shape(dim: int = 128, layers: int = 4, heads: int = 4, ngrams: bool = False,
          *train: str) -> list[str]:
    """Overrides of one candidate: every field that differs between candidates is set, so
    a row means the same whatever the `demo` preset says today."""
    grams = ["model.embedding.ngrams=[3,4,5]", "model.embedding.buckets=16384"] if ngrams \
        else ["model.embedding.ngrams=[]"]
    return [f"model.dim={dim}", f"model.num_layers={layers}", f"model.num_heads={heads}",
            *grams, *train]


CANDIDATES = {  # over recipes/demo.toml: context 128, batch 32, lr 3e-3, warmup 50
    "128 x 4": shape(),
    "192 x 4": shape(192, 4, 6),
    "96 x 4": shape(96),
    "128 x 2": shape(128, 2),
    "128 x 4, lr 6e-3": shape(128, 4, 4, False, "train.lr=6e-3"),
    "128 x 4, batch 16": shape(128, 4, 4, False, "train.batch_size=16"),
    "128 x 4, hash n-grams 3-5": shape(128, 4, 4, True),
    "128 x 4, context 256, batch 16": shape(128, 4, 4, False, "model.context=256",
                                            "train.batch_size=16"),
    "128 x 2, hash n-grams 3-5": shape(128, 2, 4, True),
    "128 x 3, hash n-grams 3-5": shape(128, 3, 4, True),
    "192 x 2, hash n-grams 3-5": shape(192, 2, 6, True),
    "96 x 2, hash n-grams 3-5": shape(96, 2, 4, True),
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def score(out: Path) -> dict:
    from untok.data.ingest import builtin_store
    from untok.demo import EVAL_BYTES
    from untok.evaluate import evaluate
    from untok.models import load

    model = load(out / "best")
    result = evaluate(model, builtin_store(progress=False), "val", max_bytes=EVAL_BYTES)
    return {"val_bpb": result["bpb"], "params": model.num_params(), **training_rate(out)}


def candidates_section(root: Path, names: list[str], minutes: float, jobs: int) -> dict:
    runs = {name: (root / slug(name), [*EVAL, *CANDIDATES[name]]) for name in names}
    train_all(runs, minutes, jobs, ROOT / "recipes" / "demo.toml")
    rows = {name: {"minutes": minutes, **score(out)} for name, (out, _) in runs.items()}
    for name, row in rows.items():
        print(name, row, flush=True)
    return rows


def curve_section(root: Path, name: str, budgets: list[float], jobs: int) -> dict:
    overrides = [*EVAL, *CANDIDATES[name]]
    runs = {f"{m:g} min": (root / f"curve-{m:g}", overrides) for m in budgets}
    order = dict(sorted(runs.items(), key=lambda kv: -float(kv[0].split()[0])))
    train_all(order, {k: float(k.split()[0]) for k in order}, jobs,
              ROOT / "recipes" / "demo.toml")
    return {"candidate": name, "points": [
        {"minutes": m, **score(root / f"curve-{m:g}")} for m in budgets]}


def render(figures: dict) -> str:
    base = figures["compressors"]
    lines = ["compressors on the same 131,072 val bytes: " + ", ".join(
        f"{k} {v:.3f}" for k, v in base.items()), ""]
    if "candidates" in figures:
        lines += [f"### candidates, {figures['minutes']:g} one-core minutes each", "",
                  "| candidate | params | steps | train bytes/s | val bpb |",
                  "|---|---|---|---|---|"]
        for name, row in sorted(figures["candidates"].items(),
                                key=lambda kv: kv[1]["val_bpb"]):
            lines.append(f"| {name} | {row['params'] / 1e6:.2f}M | {row['steps']} | "
                         f"{row['units_per_s']:,.0f} | {row['val_bpb']:.3f} |")
        lines.append("")
    if "curve" in figures:
        curve = figures["curve"]
        lines += [f"### {curve['candidate']}: val bpb against one-core training minutes", "",
                  "| minutes | steps | val bpb |", "|---|---|---|"]
        lines += [f"| {p['minutes']:g} | {p['steps']} | {p['val_bpb']:.3f} |"
                  for p in curve["points"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--sections", nargs="+", default=["candidates", "curve"],
                        choices=["candidates", "curve"])
    parser.add_argument("--minutes", type=float, default=3.0, help="budget per candidate")
    parser.add_argument("--candidates", nargs="+", choices=list(CANDIDATES),
                        default=list(CANDIDATES), help="which candidates (default all)")
    parser.add_argument("--curve", choices=list(CANDIDATES),
                        help="candidate of the curve (default: the best candidate)")
    parser.add_argument("--curve-minutes", type=float, nargs="+", default=[1, 3, 10, 30])
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "demo-bench")
    args = parser.parse_args()
    from untok.data.ingest import builtin_store
    from untok.demo import baselines

    previous = RESULTS / "demo.json"
    figures = json.loads(previous.read_text())["figures"] if previous.is_file() else {}
    figures["compressors"] = baselines(builtin_store(progress=False))
    if "candidates" in args.sections:
        rows = candidates_section(args.runs, args.candidates, args.minutes, args.jobs)
        if figures.get("minutes") != args.minutes:  # rows of another budget do not compare
            figures["candidates"] = {}
        figures["candidates"] = {**figures.get("candidates", {}), **rows}
        figures["minutes"] = args.minutes
        figures.setdefault("candidate_runs", []).append(
            {"command": command(), "date": time.strftime("%Y-%m-%d"), "rows": list(rows)})
    if "curve" in args.sections:
        name = args.curve or min(figures["candidates"],
                                 key=lambda n: figures["candidates"][n]["val_bpb"])
        figures["curve"] = curve_section(args.runs, name, args.curve_minutes, args.jobs)
        figures["curve"]["_run"] = {"command": command(), "date": time.strftime("%Y-%m-%d")}
    table = render(figures)
    print(table)
    write_result("demo", figures, table)


if __name__ == "__main__":
    main()
