"""Options of the flat model, each against the default it replaces, at equal wall-clock.

enwik8        `recipes/enwik8-small.toml` (192 x 4 layers, context 128) as the baseline, then
              one change each: wave embeddings, the mse objective, differential attention,
              the Q-learning lr controller instead of AdamW's cosine schedule. Val bpb on the
              whole 200,000-byte val split of enwik8-4M.
multilingual  byte unit vs code-point unit, same shape and context (128 units), trained on
              the train lines of all 25 languages of ../shared/data/multilingual (all lines
              but the last 100 of each), evaluated per language on its last 100 lines:
              bits per UTF-8 byte, bits per character, and training text bytes/s.

Every run trains in its own process pinned to one core (``--jobs`` runs at a time, default
2 on a 2-core machine), for ``--minutes`` each; evaluation runs afterwards.

    python bench/options.py --minutes 10
    python bench/options.py --sections multilingual --minutes 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from common import RESULTS, ROOT, SHARED, command, require, train_all, training_rate, write_result

ENWIK8_ROWS = {
    "baseline (table, ce, standard, AdamW+cosine)": [],
    "wave embedding": ["model.embedding='wave'"],
    "mse objective": ["model.head='distance'"],
    "differential attention": ["model.attention='differential'"],
    "qlearn lr controller": ["train.lr_controller='qlearn'"],
}
MULTILINGUAL_ROWS = {"byte": [], "codepoint": ["model.unit='codepoint'"]}
VAL_LINES = 100
ENWIK8_VAL = 200_000


def slug(name: str) -> str:
    return name.split(" (")[0].replace(" ", "-")


def multilingual_data(work: Path) -> tuple[Path, dict[str, Path], int]:
    """train+val file for training (val at the end), and one val file per language."""
    folder = require(SHARED / "multilingual")
    train_parts, val_parts, per_language = [], [], {}
    for path in sorted(folder.glob("*.txt")):
        lines = path.read_bytes().splitlines(keepends=True)
        train_parts.append(b"".join(lines[:-VAL_LINES]))
        val = b"".join(lines[-VAL_LINES:])
        val_parts.append(val)
        per_language[path.stem] = work / f"val-{path.stem}.txt"
        write_once(per_language[path.stem], b"\n" + val)  # the leading byte is "train"
    corpus = work / "multilingual-train-val.txt"
    write_once(corpus, b"".join(train_parts) + b"".join(val_parts))
    return corpus, per_language, sum(map(len, val_parts))


def language_stores(root: Path, per_language: dict[str, Path]) -> dict:
    """One byte store per language whose val split is its val lines (of
    :func:`multilingual_data`)."""
    from untok.data.ingest import ingest

    return {lang: ingest([str(path)], root / f"store-{lang}", split="tail", force=True,
                         val_bytes=path.stat().st_size - 1, progress=False)
            for lang, path in per_language.items()}


def write_once(path: Path, data: bytes) -> None:
    """Write ``data`` unless the file already holds it (its cached store stays valid)."""
    if not (path.is_file() and path.read_bytes() == data):
        path.write_bytes(data)


def runs_on(root: Path, rows: dict[str, list[str]], data: Path, val_bytes: int
            ) -> dict[str, tuple[Path, list[str]]]:
    """Each row's output directory and overrides for training on ``data``; the data is
    ingested here, once, rather than by the parallel runs."""
    from untok.data.ingest import open_data

    open_data(data, val_bytes=val_bytes, progress=False)
    return {name: (root / slug(name), [f"data.path={str(data)!r}",
                                       f"data.val_bytes={val_bytes}", *overrides])
            for name, overrides in rows.items()}


def enwik8_runs(root: Path) -> dict[str, tuple[Path, list[str]]]:
    return runs_on(root, ENWIK8_ROWS, require(SHARED / "enwik8-4M"), ENWIK8_VAL)


def enwik8_section(root: Path) -> dict:
    from untok.data.ingest import open_data
    from untok.evaluate import evaluate
    from untok.models import load

    runs = enwik8_runs(root)
    store = open_data(require(SHARED / "enwik8-4M"), val_bytes=ENWIK8_VAL, progress=False)
    rows = {}
    for name, (out, _) in runs.items():
        model = load(out / "last")
        result = evaluate(model, store, "val")
        rate = training_rate(out)
        rows[name] = {"val_bpb": result["bpb"], "params": model.num_params(),
                      "train_bytes_per_s": rate["units_per_s"], "steps": rate["steps"]}
        print(name, rows[name], flush=True)
    return rows


def multilingual_runs(root: Path) -> dict[str, tuple[Path, list[str]]]:
    root.mkdir(parents=True, exist_ok=True)
    corpus, _, val_bytes = multilingual_data(root)
    return runs_on(root, MULTILINGUAL_ROWS, corpus, val_bytes)


def multilingual_section(root: Path) -> dict:
    from untok.data.ingest import open_data
    from untok.data.loader import open_stream
    from untok.evaluate import evaluate
    from untok.models import load

    runs = multilingual_runs(root)
    corpus, per_language, val_bytes = multilingual_data(root)
    store = open_data(corpus, val_bytes=val_bytes, progress=False)
    train_bytes = store.split_bytes()["train"]
    stores = language_stores(root, per_language)
    figures = {}
    for name, (out, _) in runs.items():
        model = load(out / "last")
        units = len(open_stream(store, "train", model.units))
        rate = training_rate(out)
        bytes_per_unit = train_bytes / units  # (the stream counts BOS/EOS too: about 1e-5)
        languages = {}
        for lang, lang_store in stores.items():
            result = evaluate(model, lang_store, "val")
            languages[lang] = {"bpb": result["bpb"], "bits_per_char": result["bits_per_char"],
                               "bytes": result["bytes"], "units": result["units"]}
        overall = evaluate(model, store, "val")
        figures[name] = {"params": model.num_params(), "steps": rate["steps"],
                         "train_units_per_s": rate["units_per_s"],
                         "train_bytes_per_s": rate["units_per_s"] * bytes_per_unit,
                         "val_bpb": overall["bpb"], "val_bits_per_char":
                         overall["bits_per_char"], "languages": languages}
        print(name, {k: v for k, v in figures[name].items() if k != "languages"}, flush=True)
    return figures


def render(figures: dict) -> str:
    lines = []
    if "enwik8" in figures:
        rows = {k: v for k, v in figures["enwik8"].items() if k != "_run"}
        base = next(iter(rows.values()))
        lines += ["### enwik8-4M: one option at a time against the default",
                  "", "| run | params | steps | train bytes/s | val bpb | vs baseline |",
                  "|---|---|---|---|---|---|"]
        for name, row in rows.items():
            lines.append(f"| {name} | {row['params'] / 1e6:.2f}M | {row['steps']} | "
                         f"{row['train_bytes_per_s']:,.0f} | {row['val_bpb']:.3f} | "
                         f"{row['val_bpb'] - base['val_bpb']:+.3f} |")
        lines.append("")
    if "multilingual" in figures:
        rows = {k: v for k, v in figures["multilingual"].items() if k != "_run"}
        names = list(rows)
        lines += ["### multilingual: byte unit vs code-point unit", "",
                  "| | " + " | ".join(f"{n} params | {n} steps | {n} train bytes/s"
                                       for n in names) + " |",
                  "|---|" + "---|" * (3 * len(names)),
                  "| all | " + " | ".join(f"{rows[n]['params'] / 1e6:.2f}M | "
                                         f"{rows[n]['steps']} | "
                                         f"{rows[n]['train_bytes_per_s']:,.0f}"
                                         for n in names) + " |", "",
                  "| language | " + " | ".join(f"{n} bpb | {n} bits/char" for n in names)
                  + " | winner (bpb) |", "|---|" + "---|" * (2 * len(names) + 1)]
        for lang in rows[names[0]]["languages"]:
            cells, bpbs = [], {}
            for n in names:
                row = rows[n]["languages"][lang]
                cells.append(f"{row['bpb']:.3f} | {row['bits_per_char']:.3f}")
                bpbs[n] = row["bpb"]
            lines.append(f"| {lang} | " + " | ".join(cells) + f" | {min(bpbs, key=bpbs.get)} |")
        lines.append("| **all val** | " + " | ".join(
            f"{rows[n]['val_bpb']:.3f} | {rows[n]['val_bits_per_char']:.3f}" for n in names)
            + " | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per run")
    parser.add_argument("--sections", nargs="+", default=["enwik8", "multilingual"],
                        choices=["enwik8", "multilingual"])
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                        help="runs trained at a time, one core each")
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "enwik8-small.toml",
                        help="the shape and optimizer every run starts from")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "options",
                        help="where the runs are written")
    args = parser.parse_args()
    figures = {"minutes": args.minutes, "jobs": args.jobs}
    sections = {"enwik8": (enwik8_runs, enwik8_section),
                "multilingual": (multilingual_runs, multilingual_section)}
    runs = {}
    for name in args.sections:
        runs.update(sections[name][0](args.runs / name))
    # one queue: no core idles between sections
    train_all(runs, args.minutes, args.jobs, args.recipe)
    for name in args.sections:
        figures[name] = sections[name][1](args.runs / name)
        figures[name]["_run"] = {"command": command(), "date": time.strftime("%Y-%m-%d"),
                                 "minutes": args.minutes}
    previous = RESULTS / "options.json"  # keep the sections this call did not rerun
    if previous.is_file():
        kept = json.loads(previous.read_text())["figures"]
        figures = {**{k: v for k, v in kept.items() if k in sections}, **figures}
    table = render(figures)
    print(table)
    write_result("options", figures, table)


if __name__ == "__main__":
    main()
