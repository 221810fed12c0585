"""BLT against the flat byte transformer at equal wall-clock, on enwik8-4M.

Trains an entropy model when BLT-entropy runs (preset ``entropy-small``; its minutes are
reported, and not counted in BLT's budget, as the BLT paper does), then each contender for
the same budget:
flat (``recipes/enwik8-small.toml``), BLT with entropy, space, fixed(4) and learned
patching (preset ``blt-small``; learned: target 4 bytes per patch). Reports val bpb on
the whole 200,000-byte val split, training bytes/s, mean patch length on val, and
generation bytes/s at batch 1 (512 bytes, greedy, medians of 3), eager and compiled
(``compile_decoding``; ``--no-compiled`` skips it). The shapes behind ``blt-small`` are
chosen by ``bench/blt_shapes.py``.

    python bench/blt.py --budget-minutes 10
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

from common import ROOT, SHARED, median, require, write_result
from untok.config import resolve
from untok.data.ingest import open_data
from untok.data.loader import TrainSampler, UnitStream
from untok.evaluate import evaluate
from untok.generate import SamplerConfig, compile_decoding, generate
from untok.models import load
from untok.train.trainer import train

VAL_BYTES = 200_000
CONTENDERS = {
    "flat": {"recipe": ROOT / "recipes" / "enwik8-small.toml"},
    "blt-entropy": {"preset": "blt-small", "set": ["model.patching.kind='entropy'"]},
    "blt-space": {"preset": "blt-small", "set": ["model.patching.kind='space'"]},
    "blt-fixed4": {"preset": "blt-small", "set": ["model.patching.kind='fixed'",
                                                  "model.patching.patch_size=4"]},
    "blt-learned": {"preset": "blt-small", "set": ["model.patching.kind='learned'"]},
    "bpe": {},  # BPE-4096 + the flat model's shape, as in bench/quality.py
}


def data_overrides(minutes: float) -> list[str]:
    return [f"data.path={str(require(SHARED / 'enwik8-4M'))!r}", f"data.val_bytes={VAL_BYTES}",
            f"train.minutes={minutes}", "train.eval_every=100000", "train.eval_bytes=65536"]


def train_entropy_model(minutes: float, out: Path) -> Path:
    config = resolve(preset_name="entropy-small", overrides=data_overrides(minutes))
    train(config, out, progress=True)
    return out / "last"


def generation_rate(model: torch.nn.Module, num_bytes: int, repeats: int = 3,
                    compiled: bool = False) -> float:
    """Median bytes/s of greedy generation at batch 1; ``compiled``: of a copy through
    ``compile_decoding``, after one short generation that compiles it."""
    if compiled:
        model = compile_decoding(copy.deepcopy(model))
        sum(1 for _ in generate(model, b"The ", max_bytes=16, sampler=SamplerConfig(temperature=0)))
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = sum(1 for _ in generate(model, b"The ", max_bytes=num_bytes,
                                    sampler=SamplerConfig(temperature=0)))
        rates.append(n / (time.perf_counter() - start))
    return median(rates)


def mean_patch_len(model: torch.nn.Module, store) -> float | None:
    if not hasattr(model, "patcher"):
        return None
    sampler = TrainSampler(UnitStream(store, "val"), model.config.context, 8, seed=0)
    with torch.no_grad():
        starts, _ = model.patcher(sampler.next_batch()[0])
    return starts.numel() / int(starts.sum())


def run(name: str, spec: dict, minutes: float, entropy_model: Path | None, out: Path,
        gen_bytes: int, eval_bytes: int | None, compiled: bool) -> dict:
    overrides = [*spec.get("set", []), *data_overrides(minutes)]
    if name == "blt-entropy":
        overrides.append(f"model.patching.entropy_model={str(entropy_model)!r}")
    config = resolve(preset_name=spec.get("preset"), recipe=spec.get("recipe"),
                     overrides=overrides)
    result = train(config, out / name, progress=True)
    model = load(out / name / "last")
    store = open_data(config.data.path, val_bytes=VAL_BYTES, progress=False)
    scores = evaluate(model, store, "val", progress=True, max_bytes=eval_bytes)
    row = {"val_bpb": scores["bpb"], "val_bytes": scores["bytes"], "steps": result.step,
           "train_bytes": result.units_seen, "train_seconds": result.seconds,
           "train_bytes_per_s": result.units_seen / result.seconds,
           "params": model.num_params(), "mean_patch_len": mean_patch_len(model, store),
           "generate_bytes_per_s": generation_rate(model, gen_bytes),
           "generate_compiled_bytes_per_s":
               generation_rate(model, gen_bytes, compiled=True) if compiled else None,
           "flops_per_byte": model.flops_per_byte()}
    if hasattr(model, "patcher"):
        row["patching"] = {k: getattr(model.config.patching, k) for k in
                           ("kind", "patch_size", "max_len", "threshold", "relative")}
    print(name, row, flush=True)
    return row


def run_bpe_row(minutes: float) -> dict:
    """The BPE baseline of bench/quality.py, in this table's columns (training FLOPs per
    byte: the model's per token over the val split's bytes per token)."""
    from quality import run_bpe, split_bytes

    train_part, val = split_bytes()
    row, _ = run_bpe(train_part, val, minutes)
    t = resolve(recipe=ROOT / "recipes" / "enwik8-small.toml").train
    shape = resolve(recipe=ROOT / "recipes" / "enwik8-small.toml").model
    tokens = row["steps"] * t.batch_size * shape.context
    row.update(train_bytes_per_s=tokens * row["bytes_per_token"] / (60 * minutes),
               mean_patch_len=row["bytes_per_token"], generate_bytes_per_s=None,
               generate_compiled_bytes_per_s=None,
               flops_per_byte=row["flops_per_token"] / row["bytes_per_token"])
    print("bpe", row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=10.0,
                        help="training wall-clock per contender")
    parser.add_argument("--entropy-minutes", type=float, default=5.0)
    parser.add_argument("--entropy-model", help="reuse this entropy model checkpoint")
    parser.add_argument("--generate-bytes", type=int, default=512)
    parser.add_argument("--no-compiled", dest="compiled", action="store_false",
                        help="skip compiled generation (compiling takes ~30 s per model)")
    parser.add_argument("--eval-bytes", type=int, help="score only the first N val bytes "
                        "(default: the whole val split)")
    parser.add_argument("--only", nargs="+", choices=list(CONTENDERS),
                        default=list(CONTENDERS))
    parser.add_argument("--result", default="blt",
                        help="results file name under bench/results (default blt)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        entropy_model, entropy_bpb = None, None
        if "blt-entropy" in args.only:
            entropy_model = Path(args.entropy_model) if args.entropy_model else \
                train_entropy_model(args.entropy_minutes, out / "entropy")
            entropy_bpb = evaluate(load(entropy_model), open_data(
                require(SHARED / "enwik8-4M"), val_bytes=VAL_BYTES, progress=False), "val",
                max_bytes=65536)["bpb"]
        rows = {name: run_bpe_row(args.budget_minutes) if name == "bpe" else
                run(name, CONTENDERS[name], args.budget_minutes, entropy_model, out,
                    args.generate_bytes, args.eval_bytes, args.compiled)
                for name in args.only}
    flat = rows.get("flat")
    table = ["| contender | params | val bpb | train bytes/s | mean patch (bytes) | train "
             "FLOPs/byte | generate bytes/s (eager / compiled) | vs flat (eager / compiled) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        patch = f"{r['mean_patch_len']:.2f}" if r["mean_patch_len"] else "1"
        rates = [r["generate_bytes_per_s"], r.get("generate_compiled_bytes_per_s")]
        bases = [flat and flat["generate_bytes_per_s"],
                 flat and flat.get("generate_compiled_bytes_per_s")]
        generated = " / ".join(f"{x:,.0f}" if x else "-" for x in rates)
        versus = " / ".join(f"{x / b:.2f}x" if x and b else "-"
                            for x, b in zip(rates, bases, strict=True))
        table.append(f"| {name} | {r['params'] / 1e6:.1f}M | {r['val_bpb']:.3f} | "
                     f"{r['train_bytes_per_s']:,.0f} | {patch} | "
                     f"{r['flops_per_byte'] / 1e6:.1f}M | {generated} | {versus} |")
    entropy = "" if entropy_bpb is None else \
        f"; entropy model (`entropy-small`, {args.entropy_minutes:g} min, not counted) at " \
        f"{entropy_bpb:.3f} val bpb"
    table.append(f"\n{args.budget_minutes:g} minutes of training each{entropy}. Generation: "
                 f"batch 1, greedy, {args.generate_bytes} bytes, medians of 3; compiled: "
                 "`compile_decoding` (BLT: its byte and global steps), compile time "
                 "not counted.")
    text = "\n".join(table)
    print(text)
    figures = {"budget_minutes": args.budget_minutes, "entropy_minutes": args.entropy_minutes,
               "entropy_model_val_bpb": entropy_bpb, "contenders": rows,
               "mean_patch_len_note": "on 8 val windows"}
    print(f"wrote {write_result(args.result, figures, text)}")


if __name__ == "__main__":
    main()
