"""Lossless compression of the standard val splits with untok models trained on the train
splits, next to the classic compressors on the same bytes.

For each corpus (enwik8-4M: val = the last 200,000 bytes; Tiny Shakespeare: val = the last
111,540 bytes) and each training budget (``--minutes``, default 10 and 60):

- the model is trained on the train split with ``recipes/<corpus>-small.toml`` (10 minutes)
  or ``recipes/<corpus>-60min.toml`` (any other budget), unless ``--runs`` already holds it
  (``RUNS/<corpus>-<minutes>``), so a long training can run beforehand;
- ``untok.compress`` codes the val split, ``untok.decompress`` restores it (checked equal):
  compressed bpb = 8 x file size / val bytes, with encode and decode KB/s, once with the
  model as it is and once adapting to the file as it codes (``--adapt-lr``);
- the model's eval bpb on the same bytes (sliding windows: what the file would cost with a
  full context everywhere), its size, and the bytes it saves against xz given train;
- gzip -9, bzip2 -9, xz -9e, zstd -19 on the val bytes, and xz / zstd --long conditioned on
  the train split (size(train + val) - size(train)).

It also measures why encoding uses ``step`` and not a batched ``forward``: on the first
chunk, the share of positions where the two give different integer frequencies.

    python bench/compress.py --runs runs/compress              # trains what is missing
    python bench/compress.py --runs runs/compress --minutes 10 --val-bytes 20000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import ROOT, SHARED, require, write_result
from contenders import compressors
from untok.compression import compress, decompress, quantize
from untok.config import replace, resolve
from untok.data.ingest import open_data
from untok.evaluate import evaluate
from untok.models import load
from untok.train.trainer import train
from untok.units import BOS

CORPORA = {  # name: (file, recipe stem, val bytes of the standard split)
    "enwik8-4M": ("enwik8-4M", "enwik8", 200_000),
    "tinyshakespeare": ("tinyshakespeare.txt", "shakespeare", 111_540),
}


def split(corpus: str) -> tuple[bytes, bytes]:
    file, _, val_bytes = CORPORA[corpus]
    data = require(SHARED / file).read_bytes()
    return data[:-val_bytes], data[-val_bytes:]


def trained_model(corpus: str, minutes: float, runs: Path) -> Path:
    """The checkpoint of ``corpus`` trained for ``minutes``, trained now if missing."""
    out = runs / f"{corpus}-{minutes:g}"
    if (out / "best" / "config.json").is_file():
        return out / "best"
    file, stem, val_bytes = CORPORA[corpus]
    recipe = ROOT / "recipes" / f"{stem}-{'small' if minutes == 10 else '60min'}.toml"
    config = resolve(recipe=recipe, overrides=[f"data.path={str(SHARED / file)!r}"])
    train(replace(config, train={"minutes": minutes}), out, progress=True)
    return out / "best"


@torch.inference_mode()
def forward_step_mismatch(model: torch.nn.Module, data: bytes) -> dict[str, float]:
    """How often a batched forward and the one-unit step disagree on the integer
    frequencies (a forward-encoded file would then fail to decode)."""
    ids = torch.tensor([[BOS, *data[:-1]]])
    forward = model(ids).byte_logits[0]
    state = model.new_state(1)
    step = torch.cat([model.step(state, ids[:, t:t + 1])[0].byte_logits[0]
                      for t in range(ids.shape[1])])
    differs = (quantize(forward) != quantize(step)).any(-1)
    return {"positions": len(data), "share_differing": float(differs.mean()),
            "max_abs_logit_diff": float((forward - step).abs().max())}


def measure(model: torch.nn.Module, val: bytes, chunk_size: int, batch_size: int,
            adapt_lr: float, adapt_every: int) -> dict:
    """Compressed size and speed on ``val`` (round trip checked)."""
    start = time.perf_counter()
    blob = compress(val, model, chunk_size=chunk_size, batch_size=batch_size,
                    adapt_lr=adapt_lr, adapt_every=adapt_every, progress=True)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    restored = decompress(blob, model, progress=True)
    decode_s = time.perf_counter() - start
    assert restored == val, "round trip failed"
    return {"adapt_lr": adapt_lr, "adapt_every": adapt_every, "compressed_bytes": len(blob),
            "bpb": 8 * len(blob) / len(val), "encode_kb_per_s": len(val) / 1024 / encode_s,
            "decode_kb_per_s": len(val) / 1024 / decode_s}


def describe(model: torch.nn.Module, corpus: str, val: bytes) -> dict:
    """Size of the model, and its eval bpb on the same val bytes (sliding windows: what
    the file would cost with a full context everywhere and no adaptation)."""
    file, _, val_bytes = CORPORA[corpus]
    store = open_data(SHARED / file, val_bytes=val_bytes, progress=False)
    return {"params": model.num_params(),
            "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
            "eval_bpb": evaluate(model, store, "val", max_bytes=len(val), progress=False)["bpb"]}


def chunk_sweep(model: torch.nn.Module, val: bytes, sizes: list[int], batch_size: int,
                default_size: int, default_run: dict) -> list[dict]:
    """bpb and encode speed for other chunk sizes (batch large enough for every chunk)."""
    rows = [{"chunk_size": default_size, "chunks": -(-len(val) // default_size),
             "bpb": default_run["bpb"], "encode_kb_per_s": default_run["encode_kb_per_s"]}]
    for size in sizes:
        chunks = -(-len(val) // size)
        start = time.perf_counter()
        blob = compress(val, model, chunk_size=size, batch_size=max(batch_size, chunks))
        seconds = time.perf_counter() - start
        rows.append({"chunk_size": size, "chunks": chunks, "bpb": 8 * len(blob) / len(val),
                     "encode_kb_per_s": len(val) / 1024 / seconds})
    return sorted(rows, key=lambda row: row["chunk_size"])


def render(figures: dict) -> str:
    rows = []
    for corpus, result in figures["corpora"].items():
        xz_given = result["compressors"]["xz -9e given train"]
        rows += [f"**{corpus}** val, {result['val_bytes']:,} bytes (goal: untok <= "
                 f"{0.85 * xz_given:.2f} bpb = 0.85 x xz -9e given train)", "",
                 "| contender | bpb | encode KB/s | decode KB/s |", "|---|---|---|---|"]
        for minutes, model in result["untok"].items():
            for row in model["runs"]:
                how = f"adapting, lr {row['adapt_lr']:g}" if row["adapt_lr"] else "static"
                rows.append(f"| untok, trained {minutes} min, {how} ({model['params'] / 1e6:.1f}M"
                            f" params; eval bpb {model['eval_bpb']:.3f}) | **{row['bpb']:.3f}**"
                            f" | {row['encode_kb_per_s']:.1f} | {row['decode_kb_per_s']:.1f} |")
        rows += [f"| {name} | {bpb:.3f} | | |" for name, bpb in result["compressors"].items()]
        rows.append("")
    if figures.get("chunk_sweep"):
        rows += [f"Chunk size ({figures['chunk_sweep_model']}, static, all chunks in one "
                 "batch):", "", "| chunk size | chunks | bpb | encode KB/s |", "|---|---|---|---|"]
        rows += [f"| {r['chunk_size']:,} | {r['chunks']} | {r['bpb']:.3f} | "
                 f"{r['encode_kb_per_s']:.1f} |" for r in figures["chunk_sweep"]]
        rows.append("")
    mismatch = figures["forward_step_mismatch"]
    rows.append(f"Encoding with a batched forward instead of `step`: integer frequencies differ "
                f"at {mismatch['share_differing']:.1%} of {mismatch['positions']:,} positions "
                f"(max logit difference {mismatch['max_abs_logit_diff']:.1e}).")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "compress",
                        help="where the trained models are (or get trained)")
    parser.add_argument("--minutes", type=float, nargs="+", default=[10, 60],
                        help="training budgets to compare")
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    parser.add_argument("--val-bytes", type=int, help="compress only the first N val bytes")
    parser.add_argument("--chunk-size", type=int, default=16384)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--adapt-lr", type=float, nargs="+", default=[0.0, 3e-4],
                        help="adaptation learning rates to run (0 = static model)")
    parser.add_argument("--adapt-every", type=int, default=32)
    parser.add_argument("--chunk-sweep", type=int, nargs="*", default=[4096, 65536],
                        help="other chunk sizes to encode with (static), on the first corpus "
                             "and the longest-trained model: cold starts against batching")
    args = parser.parse_args()
    figures: dict = {"chunk_size": args.chunk_size, "batch_size": args.batch_size,
                     "corpora": {}}
    for corpus in args.corpora:
        train_part, val = split(corpus)
        val = val[:args.val_bytes] if args.val_bytes else val
        result = {"val_bytes": len(val), "compressors": compressors(train_part, val),
                  "untok": {}}
        for minutes in args.minutes:
            model = load(trained_model(corpus, minutes, args.runs))
            if "forward_step_mismatch" not in figures:
                figures["forward_step_mismatch"] = forward_step_mismatch(
                    model, val[:min(len(val), 4 * model.config.context)])
            entry = {**describe(model, corpus, val), "runs": []}
            for lr in args.adapt_lr:
                row = measure(model, val, args.chunk_size, args.batch_size, lr,
                              args.adapt_every)
                xz_given = result["compressors"]["xz -9e given train"]
                row["bytes_saved_vs_xz_given_train"] = (xz_given - row["bpb"]) * len(val) / 8
                entry["runs"].append(row)
                print(f"{corpus} {minutes:g} min, adapt lr {lr:g}: {row['bpb']:.3f} bpb",
                      flush=True)
            result["untok"][f"{minutes:g}"] = entry
        if args.chunk_sweep and "chunk_sweep" not in figures:
            figures["chunk_sweep"] = chunk_sweep(model, val, args.chunk_sweep, args.batch_size,
                                                 args.chunk_size, entry["runs"][0])
            figures["chunk_sweep_model"] = f"{corpus}, {minutes:g} min"
        figures["corpora"][corpus] = result
    table = render(figures)
    print(table)
    print(f"wrote {write_result('compress', figures, table)}")


if __name__ == "__main__":
    main()
