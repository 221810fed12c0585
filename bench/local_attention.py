"""Sliding-window attention: the dense masked SDPA call against the blockwise one
(:class:`untok.nn.attention.LocalWindow`), forward + backward, at the shapes untok's local
layers use, then one whole ``blt-small`` training step (space patching) with each, at
sequence lengths of 512, 1024 and 2048 bytes.

Medians of ``--repeats``, the two variants interleaved so that the machine's swings hit
both alike.

    python bench/local_attention.py
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import untok.models.blt as blt_module
from common import median, median_seconds, write_result
from untok.config import resolve
from untok.models import build_model
from untok.nn.attention import LocalWindow, local_causal_mask

# (batch, heads, length, head dim, window): the local layers of blt-small (also the shape of
# entropy-small's sliding window under it), the same over 2 KB, and blt-base's
SHAPES = [(16, 4, 512, 32, 128), (16, 4, 2048, 32, 128), (8, 6, 2048, 64, 512)]
NAMES = ["blt-small local (and entropy-small)", "blt-small local, 2 KB sequences",
         "blt-base local"]
STEP_BYTES, STEP_LENGTHS = 8192, (512, 1024, 2048)


def dense(q, k, v, size):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=local_causal_mask(
        q.shape[2], size, q.device))


def blockwise(q, k, v, size):
    return LocalWindow(size).attend(q, k, v)


def forward_backward(fn, shape) -> callable:
    B, H, T, d, size = shape
    q, k, v = (torch.randn(B, H, T, d, requires_grad=True) for _ in range(3))

    def run():
        fn(q, k, v, size).sum().backward()
    return run


class DenseWindow(LocalWindow):
    """The masked reference, for the whole-model comparison."""

    def attend(self, q, k, v, dropout=0.0):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.dense(q.shape[2],
                                                                             q.device),
                                              dropout_p=dropout)


def training_step(window_class, length: int, repeats: int) -> list[float]:
    """Seconds of one blt-small training step on 8,192 bytes cut into ``length``-byte
    sequences, with ``window_class`` in its local layers."""
    blt_module.LocalWindow = window_class
    try:
        torch.manual_seed(0)
        model = build_model(resolve(preset_name="blt-small", overrides=[
            "model.patching.kind='space'", f"model.context={length}"]).model)
        optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
        ids = torch.randint(0, 256, (STEP_BYTES // length, length + 1))

        def step():
            model.loss(ids[:, :-1], ids[:, 1:]).backward()
            optimizer.step()
            optimizer.zero_grad()
        return median_seconds(step, repeats, warmup=1)
    finally:
        blt_module.LocalWindow = LocalWindow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rows = []
    for name, shape in zip(NAMES, SHAPES, strict=True):
        times = {"dense": [], "blockwise": []}
        for _ in range(args.repeats):
            for label, fn in (("dense", dense), ("blockwise", blockwise)):
                times[label] += median_seconds(forward_backward(fn, shape), 1)
        rows.append({"name": name, "shape": shape,
                     **{f"{k}_ms": 1e3 * median(v) for k, v in times.items()}})
    steps = []
    for length in STEP_LENGTHS:
        times = {"dense": [], "blockwise": []}
        for _ in range(max(args.repeats // 3, 1)):
            times["dense"] += training_step(DenseWindow, length, 2)
            times["blockwise"] += training_step(LocalWindow, length, 2)
        steps.append({"length": length, **{f"{k}_ms": 1e3 * median(v)
                                           for k, v in times.items()}})
    figures = {"attention": rows, "blt_small_steps": steps}
    table = render(figures)
    print(table)
    print("wrote", write_result("local_attention", figures, table))


def render(f: dict) -> str:
    lines = ["## Sliding-window attention: dense mask vs blockwise (forward + backward, "
             "medians)", "",
             "| layer | batch x heads x length x head dim, window | dense ms | blockwise ms "
             "| speedup |", "|---|---|---|---|---|"]
    for r in f["attention"]:
        B, H, T, d, w = r["shape"]
        lines.append(f"| {r['name']} | {B} x {H} x {T} x {d}, {w} | {r['dense_ms']:.1f} | "
                     f"{r['blockwise_ms']:.1f} | {r['dense_ms'] / r['blockwise_ms']:.2f}x |")
    lines += ["", "Whole `blt-small` training step (8,192 bytes per batch, space patching, "
              "AdamW):", "", "| sequence length | dense ms | blockwise ms | speedup |",
              "|---|---|---|---|"]
    for r in f["blt_small_steps"]:
        lines.append(f"| {r['length']} | {r['dense_ms']:.0f} | {r['blockwise_ms']:.0f} | "
                     f"{r['dense_ms'] / r['blockwise_ms']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
