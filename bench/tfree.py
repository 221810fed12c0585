"""T-Free against the flat byte model and BPE-4096 + transformer, and fertility by language.

Quality (``--minutes`` of training each, one after the other, the whole enwik8-4M val
split): T-Free (``recipes/enwik8-tfree.toml``, and a compact shape with a quarter of the
BPE model's embedding + head parameters), the flat byte model
(``recipes/enwik8-small.toml``) and the BPE-4096 baseline of ``bench/quality.py``: val
bpb, embedding + head parameters, training bytes/s, greedy generation bytes/s.

Multilingual (``--minutes`` each, T-Free and the flat byte model side by side on one core
each): trained on all 25 languages of ``shared/data/multilingual``, val bpb and bits per
character per language (the standard split: the last 100 lines of each).

Fertility (no training of a model): over the 25 languages of ``shared/data/multilingual``,
units per 100 UTF-8 bytes and per space-separated word of the last 10% of each file, for
T-Free words, byte-level BPE-4096 and BPE-32k trained on the first 90% of all 25 files,
and UTF-8 bytes.

    python bench/tfree.py --minutes 10              # quality and fertility
    python bench/tfree.py --fertility-only          # seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT, SHARED, command, require, train_all, training_rate, write_result
from options import language_stores, multilingual_data
from quality import VAL_BYTES, run_bpe, split_bytes
from untok.config import resolve
from untok.data.ingest import open_data
from untok.evaluate import evaluate
from untok.generate import SamplerConfig, generate
from untok.models import load
from untok.train.trainer import train
from untok.words import split

LANGUAGES = SHARED / "multilingual"


def generation_bytes_per_s(model, num_bytes: int = 200) -> float:
    start = time.perf_counter()
    n = sum(len(p) for p in generate(model, b"The ", max_bytes=num_bytes,
                                     sampler=SamplerConfig(temperature=0)))
    return n / (time.perf_counter() - start)


def embedding_and_head(model) -> int:
    """Parameters of the input embedding and the output head (a tied one counted once)."""
    seen, total = set(), 0
    for name in ("embed", "head"):
        for p in getattr(model, name).parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def run_model(config, max_eval: int | None) -> dict:
    """Train an untok config for its minutes; the figures of the best checkpoint (scored on
    the whole val split, or its first ``max_eval`` units)."""
    with tempfile.TemporaryDirectory() as out:
        result = train(config, out, progress=True)
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").open()]
        model = load(Path(out) / "best")
    store = open_data(config.data.path, val_bytes=VAL_BYTES, progress=False)
    scores = evaluate(model, store, "val", progress=True, max_bytes=max_eval)
    units_per_byte = scores["units"] / scores["bytes"]
    rates = [r["units_per_s"] for r in records if "units_per_s" in r]
    return {"val_bpb": scores["bpb"], "val_bytes": scores["bytes"],
            "units_per_100_bytes": 100 * units_per_byte, "accuracy": scores["accuracy"],
            "steps": result.step, "params": model.num_params(),
            "embedding_head_params": embedding_and_head(model),
            "train_bytes_per_s": statistics.median(rates[1:] or rates) / units_per_byte
            if rates else float("nan"),  # (a smoke run may make no step)
            "generate_bytes_per_s": generation_bytes_per_s(model)}


# a quarter of the BPE-4096 x 192 table: 128 x (766 + 767) = 196,224 <= 196,608
COMPACT = ["model.dim=128", "model.num_heads=4", "model.words.hash_size=766"]


def quality(minutes: float, max_eval: int | None) -> dict:
    data = require(SHARED / "enwik8-4M")
    common = [f"data.path={str(data)!r}", f"data.val_bytes={VAL_BYTES}",
              f"train.minutes={minutes}"]
    tfree = ROOT / "recipes" / "enwik8-tfree.toml"
    figures = {
        "T-Free (tfree-small, v 4096)": run_model(resolve(recipe=tfree, overrides=common),
                                                  max_eval),
        "T-Free compact (128 wide, v 766)": run_model(
            resolve(recipe=tfree, overrides=[*common, *COMPACT]), max_eval)}
    flat = resolve(recipe=ROOT / "recipes" / "enwik8-small.toml", overrides=common)
    figures["flat bytes (enwik8-small)"] = run_model(flat, max_eval)
    train_part, val = split_bytes()
    bpe, _ = run_bpe(train_part, val, minutes)
    shape = flat.model
    bpe["embedding_head_params"] = bpe["vocab"] * shape.dim  # tied: one table
    bpe["train_bytes_per_s"] = bpe["steps"] * flat.train.batch_size * shape.context * \
        bpe["bytes_per_token"] / (60 * minutes)
    figures["BPE-4096 + transformer"] = bpe
    return figures


def multilingual(minutes: float, root: Path, max_eval: int | None) -> dict:
    """T-Free and the flat byte model trained side by side (one core each) on the train
    lines of all 25 languages; val bpb and bits per character per language."""
    root.mkdir(parents=True, exist_ok=True)
    corpus, per_language, val_bytes = multilingual_data(root)
    open_data(corpus, val_bytes=val_bytes, progress=False)  # ingested once, here
    data = [f"data.path={str(corpus)!r}", f"data.val_bytes={val_bytes}"]
    recipes = {"T-Free": ROOT / "recipes" / "enwik8-tfree.toml",
               "flat bytes": ROOT / "recipes" / "enwik8-small.toml"}
    runs = {name: (root / name.replace(" ", "-"), data) for name in recipes}
    train_all(runs, minutes, jobs=2, recipe=recipes)
    stores = language_stores(root, per_language)
    figures = {}
    for name, (out, _) in runs.items():
        model = load(out / "last")
        languages = {}
        for lang, store in stores.items():
            r = evaluate(model, store, "val", max_bytes=max_eval)
            languages[lang] = {"bpb": r["bpb"], "bits_per_char": r["bits_per_char"]}
        overall = evaluate(model, open_data(corpus, val_bytes=val_bytes, progress=False),
                           "val", max_bytes=max_eval)
        figures[name] = {"val_bpb": overall["bpb"], "bits_per_char": overall["bits_per_char"],
                         "steps": training_rate(out)["steps"], "languages": languages}
        print(name, overall["bpb"], flush=True)
    return figures


def fertility() -> dict:
    from tokenizers import ByteLevelBPETokenizer

    files = sorted(require(LANGUAGES).glob("*.txt"))
    texts = {f.stem: f.read_bytes() for f in files}
    cut = {lang: data.rfind(b"\n", 0, int(len(data) * 0.9)) + 1 for lang, data in texts.items()}
    train_text = [texts[lang][:cut[lang]].decode("utf-8") for lang in texts]
    tokenizers = {}
    for vocab in (4096, 32768):
        tokenizer = ByteLevelBPETokenizer()
        tokenizer.train_from_iterator(train_text, vocab_size=vocab, min_frequency=2,
                                      show_progress=False)
        tokenizers[f"BPE-{vocab // 1024}k"] = tokenizer
    rows = {}
    for lang, data in texts.items():
        held = data[cut[lang]:]
        spaced = max(len(held.split()), 1)
        counts = {"T-Free words": len(split(held)), "UTF-8 bytes": len(held)}
        for name, tokenizer in tokenizers.items():
            counts[name] = len(tokenizer.encode(held.decode("utf-8", errors="replace")).ids)
        rows[lang] = {name: {"per_100_bytes": 100 * n / len(held), "per_word": n / spaced}
                      for name, n in counts.items()}
    return rows


def spread(rows: dict, name: str, key: str, languages: list[str] | None = None) -> float:
    values = [rows[lang][name][key] for lang in (languages or rows)]
    return max(values) / min(values)


def render(figures: dict) -> str:
    out = []
    if "quality" in figures:
        q = figures["quality"]
        out += [f"Equal wall-clock, {figures['minutes']:g} minutes of training each, whole "
                f"enwik8-4M val split ({VAL_BYTES:,} bytes):", "",
                "| model | val bpb | embedding + head params | params | train bytes/s | "
                "generate bytes/s |", "|---|---|---|---|---|---|"]
        for name, r in q.items():
            out.append(f"| {name} | **{r['val_bpb']:.3f}** | "
                       f"{r['embedding_head_params'] / 1e6:.2f}M | {r['params'] / 1e6:.2f}M | "
                       f"{r['train_bytes_per_s']:,.0f} | "
                       f"{r.get('generate_bytes_per_s', float('nan')):,.0f} |")
        out.append("")
    if "multilingual" in figures:
        m = figures["multilingual"]
        names = list(m)
        run = figures.get("multilingual_run")
        out += [f"Multilingual: {figures['minutes']:g} minutes each, side by side on one core "
                "each, trained on all 25 languages (all lines but the last 100), val = the "
                "last 100 lines of each: bits per UTF-8 byte / bits per character"
                + (f" (run of {run['date']}: `{run['command']}`)" if run else ""), "",
                "| language | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for lang in m[names[0]]["languages"]:
            out.append(f"| {lang} | " + " | ".join(
                f"{m[n]['languages'][lang]['bpb']:.3f} / "
                f"{m[n]['languages'][lang]['bits_per_char']:.3f}" for n in names) + " |")
        out.append("| **all** | " + " | ".join(
            f"**{m[n]['val_bpb']:.3f}** / {m[n]['bits_per_char']:.3f} ({m[n]['steps']} steps)"
            for n in names) + " |")
        out.append("")
    rows = figures["fertility"]
    names = list(next(iter(rows.values())))
    out += ["Fertility: units per 100 UTF-8 bytes / per space-separated word, last 10% of "
            "each language file:", "",
            "| language | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for lang, row in rows.items():
        out.append(f"| {lang} | " + " | ".join(
            f"{row[n]['per_100_bytes']:.1f} / {row[n]['per_word']:.2f}" for n in names) + " |")
    spaced = [lang for lang in rows if rows[lang]["UTF-8 bytes"]["per_word"] < 25]
    out += ["", "Highest / lowest language, per 100 bytes (all 25) and per space-separated "
            f"word ({len(spaced)} languages written with spaces):", ""]
    for n in names:
        out.append(f"- {n}: {spread(rows, n, 'per_100_bytes'):.2f}x per 100 bytes, "
                   f"{spread(rows, n, 'per_word', spaced):.2f}x per word")
    return "\n".join(out)


def previous_multilingual() -> dict:
    """The multilingual section of the last results file (and when and how it ran)."""
    path = RESULTS / "tfree.json"
    if not path.is_file():
        return {}
    last = json.loads(path.read_text())
    if "multilingual" not in last["figures"]:
        return {}
    run = last["figures"].get("multilingual_run") or {"date": last["date"][:10],
                                                      "command": last["command"]}
    return {"multilingual": last["figures"]["multilingual"], "multilingual_run": run}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training per model")
    parser.add_argument("--fertility-only", action="store_true")
    parser.add_argument("--max-eval", type=int, help="score only the first N val units of "
                        "the untok models (smoke runs; default: the whole split)")
    parser.add_argument("--no-multilingual", action="store_true",
                        help="skip the multilingual quality row")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "tfree-multilingual",
                        help="where the multilingual runs are written")
    args = parser.parse_args()
    figures: dict = {"minutes": args.minutes, "fertility": fertility()}
    if not args.fertility_only:
        figures["quality"] = quality(args.minutes, args.max_eval)
        if not args.no_multilingual:
            figures["multilingual"] = multilingual(args.minutes, args.runs, args.max_eval)
            figures["multilingual_run"] = {"date": time.strftime("%Y-%m-%d"),
                                           "command": command()}
        else:  # the last run's multilingual figures stay, with their own date and command
            figures.update(previous_multilingual())
    table = render(figures)
    print(table)
    name = "tfree_fertility" if args.fertility_only else "tfree"
    print(f"wrote {write_result(name, figures, table)}")


if __name__ == "__main__":
    main()
