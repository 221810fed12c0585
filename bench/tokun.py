"""tokun: chunk autoencoders per language, and the chunk language model at equal wall-clock.

1. Reconstruction: tokun-4, tokun-16 and tokun-4x4 trained ``--minutes`` each on the train
   lines of the 25 languages of ../shared/data/multilingual; strict accuracy (every byte
   of a character right) on each language's val lines, clean and with Gaussian noise of
   0.1 / 0.5 / 1.0 x the per-dimension std on the vectors; parameters and vector width.
2. Language models, ``--minutes`` each, one run: the flat byte model
   (recipes/enwik8-small.toml), BLT fixed(4) (blt-small) and the chunk LM
   (recipes/tokun-lm.toml, encoder trained jointly; and with the tokun-4 autoencoder's
   encoder frozen) on the multilingual split (overall bpb, per-language bits per
   character) and, without the frozen variant, on enwik8-4M (bpb); training and
   generation bytes/s.

Runs go two at a time, one core each (as in bench/tfree.py).

    python bench/tokun.py --minutes 10        # about an hour on 2 cores
    python bench/tokun.py --minutes 0.05 --max-eval 2000 --runs /tmp/tokun   # smoke
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import (
    RESULTS,
    ROOT,
    SHARED,
    command,
    require,
    train_all,
    training_rate,
    write_result,
)
from options import language_stores, multilingual_data
from tfree import generation_bytes_per_s
from untok.data.ingest import open_data
from untok.evaluate import evaluate
from untok.models import load

ENWIK8 = SHARED / "enwik8-4M"
ENWIK8_VAL = 200_000
AUTOENCODERS = ("tokun-4", "tokun-16", "tokun-4x4")
FLAT = ROOT / "recipes" / "enwik8-small.toml"
CHUNK_LM = ROOT / "recipes" / "tokun-lm.toml"
BLT_FIXED = ("preset = \"blt-small\"\n[model.patching]\nkind = \"fixed\"\npatch_size = 4\n")


def preset_recipe(root: Path, preset: str, body: str = "") -> Path:
    """A recipe file that is ``preset`` (plus ``body``), for the parallel launcher."""
    path = root / f"{preset}.toml"
    path.write_text(body or f"preset = \"{preset}\"\n")
    return path


def train_bytes_per_s(run: Path, units_per_byte: float) -> float:
    return training_rate(run)["units_per_s"] / units_per_byte


def reconstruction(root: Path, stores: dict, max_eval: int | None) -> dict:
    figures = {}
    for name in AUTOENCODERS:
        model = load(root / name / "last")
        languages = {lang: evaluate(model, store, "val", max_bytes=max_eval)
                     for lang, store in stores.items()}
        chars = sum(r["chars"] for r in languages.values())
        figures[name] = {
            "params": model.num_params(), "vector_dim": model.config.chunks.dim,
            "chars_per_vector": model.config.chunks.size,
            "steps": training_rate(root / name)["steps"],
            **{key: sum(r[key] * r["chars"] for r in languages.values()) / chars
               for key in ("strict_accuracy", "decoder_accuracy")},
            "wrong": sum(round((1 - r["strict_accuracy"]) * r["chars"])
                         for r in languages.values()),
            "decoder_wrong": sum(round((1 - r["decoder_accuracy"]) * r["chars"])
                                 for r in languages.values()),
            "chars": chars,
            "noise": {level: sum(r["noise"][level] * r["chars"] for r in languages.values())
                      / chars for level in ("0.1", "0.5", "1.0")},
            "languages": {lang: r["strict_accuracy"] for lang, r in languages.items()}}
        print(name, figures[name]["strict_accuracy"], flush=True)
    return figures


def language_model_row(run: Path, store, max_eval: int | None,
                       stores: dict | None = None) -> dict:
    model = load(run / "last")
    overall = evaluate(model, store, "val", max_bytes=max_eval)
    row = {"val_bpb": overall["bpb"], "bits_per_char": overall["bits_per_char"],
           "params": model.num_params(), "steps": training_rate(run)["steps"],
           "train_bytes_per_s": train_bytes_per_s(run, overall["units"] / overall["bytes"]),
           "generate_bytes_per_s": generation_bytes_per_s(model)}
    if stores:
        row["languages"] = {lang: evaluate(model, s, "val", max_bytes=max_eval)
                            ["bits_per_char"] for lang, s in stores.items()}
    print(run.name, row["val_bpb"], flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training per model")
    parser.add_argument("--max-eval", type=int, help="score only the first N val units of "
                        "each split (smoke runs; default: all of it)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "tokun",
                        help="where the runs are written")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="which parts to run (comma-separated: reconstruction, "
                        "language-models); the others keep their figures from the last "
                        "results file, with their own dates and commands")
    args = parser.parse_args()
    sections = args.sections.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    root = args.runs
    root.mkdir(parents=True, exist_ok=True)
    corpus, per_language, val_bytes = multilingual_data(root)
    open_data(corpus, val_bytes=val_bytes, progress=False)  # ingested once, here
    multi = [f"data.path={str(corpus)!r}", f"data.val_bytes={val_bytes}"]
    figures = previous_figures()
    runs = {}  # one pool, two at a time: tokun-4 first (the frozen chunk LM reads it)
    if "reconstruction" in sections:
        runs |= {name: ((root / name, multi), preset_recipe(root, name))
                 for name in AUTOENCODERS}
    if "language-models" in sections:
        runs |= language_model_runs(root, multi, "reconstruction" in sections)
    train_all({name: run for name, (run, _) in runs.items()}, args.minutes, jobs=2,
              recipe={name: recipe for name, (_, recipe) in runs.items()})
    stores = language_stores(root, per_language)
    if "reconstruction" in sections:
        figures["reconstruction"] = {"minutes": args.minutes, "command": command(),
                                     **reconstruction(root, stores, args.max_eval)}
    if "language-models" in sections:
        multi_store = open_data(corpus, val_bytes=val_bytes, progress=False)
        english_store = open_data(ENWIK8, val_bytes=ENWIK8_VAL, progress=False)
        figures["multilingual"] = {
            "minutes": args.minutes, "command": command(),
            **{name: language_model_row(root / run, multi_store, args.max_eval, stores)
               for name, run in MULTILINGUAL_ROWS.items()}}
        figures["enwik8"] = {
            "minutes": args.minutes, "command": command(),
            **{name: language_model_row(root / run, english_store, args.max_eval)
               for name, run in ENWIK8_ROWS.items()}}
    table = render(figures)
    print(table)
    print(f"wrote {write_result('tokun', figures, table)}")


def previous_figures() -> dict:
    path = RESULTS / "tokun.json"
    return json.loads(path.read_text())["figures"] if path.is_file() else {}


def language_model_runs(root: Path, multi: list[str], encoder_first: bool) -> dict:
    """The multilingual and enwik8 language-model runs, in the order the pool starts
    them; the frozen chunk LM takes the encoder of the tokun-4 run, which comes first
    (``encoder_first``: the reconstruction runs train it) or is trained here if missing."""
    english = [f"data.path={str(require(ENWIK8))!r}", f"data.val_bytes={ENWIK8_VAL}"]
    open_data(ENWIK8, val_bytes=ENWIK8_VAL, progress=False)
    blt = preset_recipe(root, "blt-fixed4", BLT_FIXED)
    encoder = root / "tokun-4" / "last"
    runs = {"tokun-lm": ((root / "tokun-lm", multi), CHUNK_LM),
            "flat": ((root / "flat", multi), FLAT)}
    if not encoder_first and not encoder.is_dir():
        runs = {"tokun-4": ((root / "tokun-4", multi), preset_recipe(root, "tokun-4"))} | runs
    frozen = [f"model.chunks.encoder={str(encoder)!r}", "model.chunks.train_encoder=false"]
    return runs | {
        "tokun-lm-frozen": ((root / "tokun-lm-frozen", [*multi, *frozen]), CHUNK_LM),
        "blt-fixed4": ((root / "blt-fixed4", multi), blt),
        "tokun-lm-enwik8": ((root / "tokun-lm-enwik8", english), CHUNK_LM),
        "flat-enwik8": ((root / "flat-enwik8", english), FLAT),
        "blt-fixed4-enwik8": ((root / "blt-fixed4-enwik8", english), blt)}


SECTIONS = ("reconstruction", "language-models")
MULTILINGUAL_ROWS = {"flat bytes (enwik8-small)": "flat", "BLT fixed(4) (blt-small)":
                     "blt-fixed4", "tokun-lm (encoder trained jointly)": "tokun-lm",
                     "tokun-lm (tokun-4 encoder, frozen)": "tokun-lm-frozen"}
ENWIK8_ROWS = {"flat bytes (enwik8-small)": "flat-enwik8",
               "BLT fixed(4) (blt-small)": "blt-fixed4-enwik8",
               "tokun-lm (encoder trained jointly)": "tokun-lm-enwik8"}


def rows_of(section: dict) -> dict:
    return {k: v for k, v in section.items() if k not in ("minutes", "command")}


def render(figures: dict) -> str:
    """The markdown tables of whichever sections ``figures`` holds."""
    lines: list[str] = []
    if "reconstruction" in figures:
        lines += render_reconstruction(figures["reconstruction"])
    for section, title in (("multilingual", "multilingual split (25 languages)"),
                           ("enwik8", "enwik8-4M")):
        if section in figures:
            lines += render_language_models(figures[section], title)
    if "multilingual" in figures:
        lines += render_languages(rows_of(figures["multilingual"]))
    return "\n".join(lines)


def render_reconstruction(recon: dict) -> list[str]:
    lines = [f"## Reconstruction ({recon['minutes']:g} CPU minutes each, one core; strict "
             "accuracy on the val lines of 25 languages)", "", f"`{recon['command']}`", "",
             "| model | params | chars per vector | vector dim | steps | decoder alone "
             "(wrong) | checked (wrong) | worst language | noise 0.1 | noise 0.5 | noise 1.0 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows_of(recon).items():
        worst = min(r["languages"], key=r["languages"].get)
        decoder, checked = f"{r['strict_accuracy']:.3%}", ""  # before checked decoding
        if "decoder_accuracy" in r:
            decoder = f"{r['decoder_accuracy']:.3%} ({r['decoder_wrong']})"
            checked = f"{r['strict_accuracy']:.3%} ({r['wrong']})"
        lines.append(f"| {name} | {r['params'] / 1e6:.2f}M | {r['chars_per_vector']} | "
                     f"{r['vector_dim']} | {r['steps']} | {decoder} | {checked} | "
                     f"{worst} {r['languages'][worst]:.2%} | {r['noise']['0.1']:.2%} | "
                     f"{r['noise']['0.5']:.2%} | {r['noise']['1.0']:.2%} |")
    return lines


def render_language_models(section: dict, title: str) -> list[str]:
    lines = ["", f"## Language models on the {title}, {section['minutes']:g} minutes each, "
             "one core", "", f"`{section['command']}`", "",
             "| model | val bpb | bits per char | params | steps | train bytes/s "
             "| generate bytes/s |", "|---|---|---|---|---|---|---|"]
    for name, r in rows_of(section).items():
        lines.append(f"| {name} | {r['val_bpb']:.3f} | {r['bits_per_char']:.3f} | "
                     f"{r['params'] / 1e6:.2f}M | {r['steps']} | "
                     f"{r['train_bytes_per_s']:,.0f} | {r['generate_bytes_per_s']:,.0f} |")
    return lines


def render_languages(rows: dict) -> list[str]:
    languages = sorted(next(iter(rows.values()))["languages"])
    lines = ["", "### Bits per character per language (multilingual runs)", "",
             "| language | " + " | ".join(rows) + " |", "|---|" + "---|" * len(rows)]
    for lang in languages:
        lines.append(f"| {lang} | " + " | ".join(f"{r['languages'][lang]:.3f}"
                                                 for r in rows.values()) + " |")
    return lines


if __name__ == "__main__":
    main()
