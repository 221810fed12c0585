"""Quality at equal wall-clock on the enwik8-4M standard split (val = the last 200,000 bytes).

Contenders, each with the same training budget:
- untok: the flat byte transformer of ``recipes/enwik8-small.toml``;
- BPE: a byte-level BPE tokenizer (``tokenizers``, vocabulary 4096) trained on the train
  split, and the same transformer shape trained on its token ids; val loss converted to
  bits per byte (total nats over val tokens / ln 2 / val bytes);
- gzip -9, bzip2 -9, xz -9e, zstd -19 on exactly the val bytes, and xz / zstd --long
  *conditioned on the train split* (size(train + val) - size(train)), the fair compressor
  baseline for a model that learned from the train split.

Writes ``bench/results/quality.json``, ``quality.md`` and ``quality.png`` (val bpb against
wall-clock time).

    python bench/quality.py --budget-minutes 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common import RESULTS, ROOT, SHARED, require, write_result
from contenders import compressors
from untok.config import replace, resolve
from untok.data.ingest import open_data
from untok.data.loader import eval_windows
from untok.evaluate import evaluate
from untok.models import build_model, load
from untok.train.optim import lr_at
from untok.train.trainer import train

VAL_BYTES = 200_000
BPE_VOCAB = 4096


def split_bytes() -> tuple[bytes, bytes]:
    data = require(SHARED / "enwik8-4M").read_bytes()
    return data[:-VAL_BYTES], data[-VAL_BYTES:]


def run_untok(minutes: float) -> tuple[dict, list[tuple[float, float]]]:
    config = resolve(recipe=ROOT / "recipes" / "enwik8-small.toml", overrides=[
        f"data.path={str(SHARED / 'enwik8-4M')!r}"])
    config = replace(config, train={"minutes": minutes})
    curve: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as out:
        result = train(config, out, progress=True)
        for line in (Path(out) / "metrics.jsonl").open():
            record = json.loads(line)
            if record.get("event") == "eval":
                curve.append((record["seconds"], record["val_bpb"]))
        model = load(Path(out) / "best")
        store = open_data(config.data.path, val_bytes=VAL_BYTES, progress=False)
        scores = evaluate(model, store, "val", progress=True)
    return {"val_bpb": scores["bpb"], "val_bytes": scores["bytes"], "steps": result.step,
            "params": model.num_params(), "train_bytes_seen": result.units_seen}, curve


def train_bpe(train_part: bytes):
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    text = train_part.decode("utf-8")
    chunks = (text[i:i + 65536] for i in range(0, len(text), 65536))
    tokenizer.train_from_iterator(chunks, vocab_size=BPE_VOCAB, min_frequency=2,
                                  show_progress=False)
    return tokenizer


def bpe_val_bpb(model: torch.nn.Module, val_ids: np.ndarray, val_bytes: int,
                context: int) -> float:
    """Total nats of the val tokens (sliding windows, each token scored once) -> bpb."""
    nats = 0.0
    model.eval()
    with torch.no_grad():
        for start, first in eval_windows(len(val_ids), context, context // 2):
            window = torch.from_numpy(val_ids[start:start + context + 1]).long()[None]
            logp = F.log_softmax(model(window[:, :-1]).logits.float(), -1)
            token_nll = -logp.gather(-1, window[:, 1:, None])[0, :, 0]
            positions = torch.arange(start + 1, start + window.shape[1])
            nats += float(token_nll[positions >= first].sum())
    model.train()
    return nats / math.log(2) / val_bytes


def run_bpe(train_part: bytes, val: bytes, minutes: float
            ) -> tuple[dict, list[tuple[float, float]]]:
    started = time.perf_counter()
    tokenizer = train_bpe(train_part)
    tokenize_seconds = time.perf_counter() - started
    train_ids = np.array(tokenizer.encode(train_part.decode("utf-8")).ids, dtype=np.int64)
    val_ids = np.array(tokenizer.encode(val.decode("utf-8")).ids, dtype=np.int64)
    config = resolve(recipe=ROOT / "recipes" / "enwik8-small.toml")
    shape = dataclasses.replace(config.model, vocab_size=BPE_VOCAB)
    t = replace(config, train={"minutes": minutes}).train
    torch.manual_seed(t.seed)
    model = build_model(shape)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2),
                                  weight_decay=t.weight_decay)
    rng = np.random.default_rng(t.seed)
    curve: list[tuple[float, float]] = []
    eval_fraction = min((t.eval_bytes or len(val)) / len(val), 1.0)
    eval_ids = val_ids[: max(int(len(val_ids) * eval_fraction), shape.context + 1)]
    eval_bytes = len(tokenizer.decode(eval_ids.tolist()).encode("utf-8"))
    step, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < 60 * minutes:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(t, step, elapsed / (60 * minutes))
        starts = rng.integers(0, len(train_ids) - shape.context - 1, size=t.batch_size)
        batch = torch.from_numpy(np.stack([train_ids[s:s + shape.context + 1]
                                           for s in starts]))
        # plain cross-entropy: every id is a real token here (untok's PAD id is not special)
        logits = model(batch[:, :-1]).logits
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % t.eval_every == 0:
            curve.append((time.perf_counter() - start,
                          bpe_val_bpb(model, eval_ids, eval_bytes, shape.context)))
            print(f"bpe step {step}: val bpb {curve[-1][1]:.4f}", flush=True)
    curve.append((time.perf_counter() - start,
                  bpe_val_bpb(model, eval_ids, eval_bytes, shape.context)))
    return {"val_bpb": bpe_val_bpb(model, val_ids, len(val), shape.context),
            "val_bytes": len(val), "val_tokens": int(len(val_ids)),
            "bytes_per_token": len(val) / len(val_ids), "steps": step,
            "params": model.num_params(), "tokenizer_seconds": tokenize_seconds,
            "vocab": BPE_VOCAB, "flops_per_token": model.flops_per_byte()}, curve


def plot(curves: dict[str, list[tuple[float, float]]], lines: dict[str, float]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        if curve:
            ax.plot([s / 60 for s, _ in curve], [b for _, b in curve], marker="o", label=name)
    for name, bpb in lines.items():
        ax.axhline(bpb, linestyle="--", linewidth=1, color="gray")
        ax.annotate(name, (0, bpb), textcoords="offset points", xytext=(4, 3), fontsize=8,
                    color="gray")
    ax.set_xlabel("training wall-clock (minutes, 2 CPU cores)")
    ax.set_ylabel("val bits per byte (enwik8-4M)")
    ax.set_title("Quality at equal compute")
    ax.legend()
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "quality.png"
    fig.savefig(path, dpi=110)
    return path


def render(figures: dict) -> str:
    """The Markdown table of one run's figures (the best val bpb in bold)."""
    minutes = f"{figures['budget_minutes']:g} min"
    untok, bpe = figures["untok"], figures["bpe"]
    results = {f"untok flat, enwik8-small recipe ({untok['params'] / 1e6:.1f}M params, "
               f"{minutes})": untok["val_bpb"],
               f"BPE {bpe['vocab']} + same transformer ({bpe['params'] / 1e6:.1f}M params, "
               f"{minutes})": bpe["val_bpb"],
               **figures["compressors"]}
    best = min(results.values())
    rows = ["| contender | val bpb |", "|---|---|"]
    rows += [f"| {name} | {'**' if bpb == best else ''}{bpb:.3f}{'**' if bpb == best else ''} |"
             for name, bpb in results.items()]
    return "\n".join(rows) + f"\n\nval = the last {figures['val_bytes']:,} bytes of " \
        "enwik8-4M; \"given train\" = size(train + val) - size(train)."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=10.0,
                        help="training wall-clock per model")
    args = parser.parse_args()
    train_part, val = split_bytes()
    baselines = compressors(train_part, val)
    untok_result, untok_curve = run_untok(args.budget_minutes)
    bpe_result, bpe_curve = run_bpe(train_part, val, args.budget_minutes)
    png = plot({"untok (bytes)": untok_curve, f"BPE {BPE_VOCAB}": bpe_curve},
               {"xz -9e given train": baselines["xz -9e given train"]})
    figures = {"budget_minutes": args.budget_minutes, "val_bytes": len(val),
               "untok": untok_result, "bpe": bpe_result, "compressors": baselines,
               "curves": {"untok": untok_curve, "bpe": bpe_curve}, "plot": png.name}
    table = render(figures)
    print(table)
    print(f"wrote {write_result('quality', figures, table)}")


if __name__ == "__main__":
    main()
