"""Coding speed of the shipped compression model's possible shapes (the lever behind its
second default): each shape of ``--shapes`` with random weights, otherwise the shipped
model's config, compresses the same bytes of enwik8 with every default of ``untok
compress``; rounds interleave the shapes, and the medians and the ratios to the first
shape are reported. Random weights code as fast as trained ones (the same operations);
the sizes they give mean nothing and are not reported.

    python bench/compress_shapes.py
    python bench/compress_shapes.py --shapes 192x4 128x4 --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from common import SHARED, median, require, write_result
from untok.compression import compress, decompress
from untok.hardware import measure_matmul_peak
from untok.models import build_model
from untok.shipped import default_model


def shape_model(base: torch.nn.Module, shape: str) -> torch.nn.Module:
    """``base``'s config at ``shape`` (WIDTHxLAYERS, heads of 32 channels), random weights."""
    dim, layers = map(int, shape.split("x"))
    config = dataclasses.replace(base.config, dim=dim, num_layers=layers, num_heads=dim // 32)
    torch.manual_seed(0)
    return build_model(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+",
                        default=["192x4", "160x4", "192x3", "160x3", "128x4", "128x3"])
    parser.add_argument("--bytes", type=int, default=60_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = require(SHARED / "enwik8-4M").read_bytes()[-args.bytes:]
    base = default_model()
    models = {shape: shape_model(base, shape) for shape in args.shapes}
    peak = [measure_matmul_peak(torch.device("cpu"))]
    speeds: dict[str, list[float]] = {shape: [] for shape in args.shapes}
    for model in models.values():  # (warm-up: first calls allocate)
        compress(data[:4000], model)
    for _ in range(args.repeats):
        for shape, model in models.items():
            start = time.perf_counter()
            blob = compress(data, model)
            speeds[shape].append(len(data) / 1e3 / (time.perf_counter() - start))
            assert decompress(blob, model) == data
    peak.append(measure_matmul_peak(torch.device("cpu")))
    first = median(speeds[args.shapes[0]])
    rows = [{"shape": shape, "params": sum(p.numel() for p in models[shape].parameters()),
             "kb_per_s": median(speeds[shape]), "runs_kb_per_s": speeds[shape],
             "ratio": median(speeds[shape]) / first} for shape in args.shapes]
    table = "\n".join(
        ["| shape (width x layers) | parameters | compress KB/s (median) | x first |",
         "|---|---|---|---|"]
        + [f"| {r['shape']} | {r['params'] / 1e6:.2f}M | {r['kb_per_s']:.1f} | "
           f"{r['ratio']:.2f}x |" for r in rows]
        + ["", f"{args.bytes:,} bytes of the enwik8-4M val split, every default of `untok "
               f"compress`, {args.repeats} interleaved rounds, {torch.get_num_threads()} "
               f"threads; fp32 matmul peak at the start / end: {peak[0] / 1e9:.0f} / "
               f"{peak[1] / 1e9:.0f} GFLOP/s."])
    print(table)
    print("wrote", write_result("compress_shapes", {"rows": rows, "peak": peak}, table))


if __name__ == "__main__":
    main()
