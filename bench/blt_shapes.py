"""Where BLT's compute pays: BLT shapes against the flat byte model at equal wall-clock.

Each shape is `blt-small` with space patching (the best patcher of bench/blt.py) and some
of its sizes changed: the local layers' width and depth, the global model's width. Every
run trains for the same minutes on one core of its own, two at a time (flat included, so
that it runs under the same conditions), on the enwik8-4M standard split. Reports params,
training FLOPs per byte and the global model's share of them, steps, training bytes/s,
val bpb on the whole 200,000-byte val split, and greedy generation bytes/s at batch 1,
eager and compiled (`compile_decoding`), each against the flat model's.

    python bench/blt_shapes.py --minutes 10      # ~40 minutes on 2 cores
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from blt import VAL_BYTES, generation_rate, mean_patch_len
from common import ROOT, SHARED, require, train_all, training_rate, write_result
from untok.data.ingest import open_data
from untok.evaluate import evaluate
from untok.models import load


def shape(global_dim: int, heads: int, local_dim: int, decoder_layers: int) -> list[str]:
    """Space patching, the global width and heads, the local width and decoder depth (the
    encoder has one layer)."""
    return ["model.patching.kind='space'", f"model.dim={global_dim}",
            f"model.num_heads={heads}", f"model.local.dim={local_dim}",
            f"model.local.decoder_layers={decoder_layers}"]


SHAPES = {  # name: overrides of blt-small (None: the flat model's recipe)
    "flat (enwik8-small)": None,
    "global 256, local 128, 1+2 (blt-small before)": shape(256, 8, 128, 2),
    "global 256, local 96, 1+1": shape(256, 8, 96, 1),
    "global 256, local 64, 1+1": shape(256, 8, 64, 1),
    "global 192, local 96, 1+1 (blt-small now)": shape(192, 6, 96, 1),
    "global 384, local 96, 1+1": shape(384, 6, 96, 1),
}


def recipe(root: Path, flat: bool) -> Path:
    """The flat model's recipe, or blt-small, for the parallel launcher."""
    if flat:
        return ROOT / "recipes" / "enwik8-small.toml"
    path = root / "blt-small.toml"
    path.write_text('preset = "blt-small"\n[train]\neval_bytes = 65536\n')
    return path


def global_share(model: nn.Module) -> float | None:
    """The global model's (and pooling's) share of the training FLOPs per byte."""
    share = getattr(model, "global_flops_per_byte", None)
    return share() / model.flops_per_byte() if share else None


def measure(run: Path, store, gen_bytes: int, compiled: bool, eval_bytes: int | None
            ) -> dict:
    model = load(run / "last")
    rate = training_rate(run)
    return {"params": model.num_params(), "flops_per_byte": model.flops_per_byte(),
            "global_share": global_share(model), "steps": rate["steps"],
            "train_bytes_per_s": rate["units_per_s"],
            "val_bpb": evaluate(model, store, "val", progress=True, max_bytes=eval_bytes)["bpb"],
            "mean_patch_len": mean_patch_len(model, store),
            "generate_bytes_per_s": generation_rate(model, gen_bytes),
            "generate_compiled_bytes_per_s":
                generation_rate(model, gen_bytes, compiled=True) if compiled else None}


def render(rows: dict, minutes: float, gen_bytes: int) -> str:
    flat = rows["flat (enwik8-small)"]
    lines = ["| shape | params | train FLOPs/byte | global share | steps | train bytes/s | "
             "val bpb | mean patch | generate bytes/s (eager / compiled) | vs flat |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        share = f"{r['global_share']:.0%}" if r["global_share"] is not None else "-"
        patch = f"{r['mean_patch_len']:.2f}" if r["mean_patch_len"] else "1"
        rates = ("generate_bytes_per_s", "generate_compiled_bytes_per_s")
        generated = " / ".join(f"{r[k]:,.0f}" if r[k] else "-" for k in rates)
        versus = " / ".join(f"{r[k] / flat[k]:.2f}x" if r[k] else "-" for k in rates)
        lines.append(f"| {name} | {r['params'] / 1e6:.1f}M | {r['flops_per_byte'] / 1e6:.1f}M"
                     f" | {share} | {r['steps']} | {r['train_bytes_per_s']:,.0f} | "
                     f"{r['val_bpb']:.3f} | {patch} | {generated} | {versus} |")
    lines.append(f"\n{minutes:g} minutes of training each on one core, two runs at a time; "
                 "encoder one layer; "
                 "global share: of the training FLOPs per byte at the expected patch length; "
                 f"generation: batch 1, greedy, {gen_bytes} bytes, one thread, medians of 3, "
                 "compile time not counted.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="training per shape")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "blt-shapes",
                        help="where the runs are written")
    parser.add_argument("--generate-bytes", type=int, default=512)
    parser.add_argument("--no-compiled", dest="compiled", action="store_false",
                        help="skip compiled generation (compiling takes ~30 s per model)")
    parser.add_argument("--eval-bytes", type=int, help="score only the first N val bytes "
                        "(default: the whole val split)")
    parser.add_argument("--reuse", action="store_true",
                        help="measure the runs already in --runs again instead of training "
                        "them (after a change to generation)")
    parser.add_argument("--only", nargs="+", choices=list(SHAPES), default=list(SHAPES),
                        help="shapes to run (the flat model always runs)")
    args = parser.parse_args()
    root = args.runs
    root.mkdir(parents=True, exist_ok=True)
    store = open_data(require(SHARED / "enwik8-4M"), val_bytes=VAL_BYTES, progress=False)
    names = ["flat (enwik8-small)", *[n for n in args.only if n != "flat (enwik8-small)"]]
    folders = {name: root / f"shape{i}" for i, name in enumerate(names)}
    data = [f"data.path={str(SHARED / 'enwik8-4M')!r}", f"data.val_bytes={VAL_BYTES}"]
    todo = [n for n in names if not (args.reuse and (folders[n] / "last").is_dir())]
    train_all({name: (folders[name], [*data, *(SHAPES[name] or [])]) for name in todo},
              args.minutes, jobs=2,
              recipe={name: recipe(root, SHAPES[name] is None) for name in todo})
    torch.set_num_threads(1)  # generation measured as the runs trained: one core
    rows = {name: measure(folders[name], store, args.generate_bytes, args.compiled,
                          args.eval_bytes) for name in names}
    text = render(rows, args.minutes, args.generate_bytes)
    print(text)
    figures = {"minutes": args.minutes, "generate_bytes": args.generate_bytes,
               "shapes": {name: {"overrides": SHAPES[name], **row}
                          for name, row in rows.items()}}
    print(f"wrote {write_result('blt_shapes', figures, text)}")


if __name__ == "__main__":
    main()
