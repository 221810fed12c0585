"""The MatMul-free backbone: packed size, packed-product formulations, constant-memory
generation, and quality at equal wall-clock.

    python bench/mmfree.py                              # every section
    python bench/mmfree.py --sections pack generate     # a subset

pack      BitLinear weights of `mmfree-small` packed vs fp32, and the time of one BitLinear
          product (256 -> 768) by each formulation, at 1 and 4096 rows (medians of 20).
generate  bytes/s and peak RSS generating 1k, 8k and 32k bytes at batch 1 (greedy, random
          weights, a fresh process per run): mmfree-small against the transformer of equal
          parameters (`small`) with a 256-byte sliding KV cache and with a cache holding
          all 32k bytes.
quality   val bpb on the enwik8-4M standard split after --budget-minutes of training, flat
          transformer and MatMul-free of the same shape (`recipes/enwik8-small.toml`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import ROOT, SHARED, median, require, write_result
from contenders import peak_rss_mb
from untok.config import resolve
from untok.models import build_model

LENGTHS = (1024, 8192, 32768)
GENERATORS = {
    "mmfree-small": ("mmfree-small", None),
    "transformer-small (256-byte window)": ("small", 256),
    "transformer-small (32k cache)": ("small", 32768),
}


def pack_section() -> dict:
    from untok.nn.bitlinear import BitLinear, PackedBitLinear, quantize_activations, unpack_ternary

    model = build_model(resolve(preset_name="mmfree-small").model)
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    fp32 = sum(4 * m.weight.numel() for m in layers)
    packed = sum(PackedBitLinear.from_bitlinear(m).packed.numel() + 4 for m in layers)
    torch.manual_seed(0)
    layer = BitLinear(256, 768)
    torch.nn.init.normal_(layer.weight, std=0.05)
    pl = PackedBitLinear.from_bitlinear(layer)

    def int_mm(x):
        codes, _ = quantize_activations(pl.norm(x))
        return torch._int_mm(codes.to(torch.int8), pl.codes_t())

    def float_transient(x):  # int8 codes widened to fp32 for this call only
        codes, _ = quantize_activations(pl.norm(x))
        return codes @ pl.codes_t().float()

    def unpack_each_call(x):  # nothing resident but the packed bytes
        codes, _ = quantize_activations(pl.norm(x))
        return codes @ unpack_ternary(pl.packed, 256).t().float()

    formulations = {"fake-quant fp32 (training path)": layer,
                    "int8 codes x int8 activations, torch._int_mm": int_mm,
                    "int8 codes widened to fp32 per call": float_transient,
                    "unpack 2-bit codes per call, fp32": unpack_each_call,
                    "PackedBitLinear (as shipped)": pl}
    timings = {}
    with torch.no_grad():
        for rows in (1, 4096):
            x = torch.randn(rows, 256)
            for name, fn in formulations.items():
                for _ in range(3):
                    fn(x)
                runs = []
                for _ in range(20):
                    start = time.perf_counter()
                    fn(x)
                    runs.append((time.perf_counter() - start) * 1e6)
                timings.setdefault(name, {})[rows] = median(runs)
    return {"bitlinear_fp32_bytes": fp32, "bitlinear_packed_bytes": packed,
            "ratio": packed / fp32, "layers": len(layers), "product_us": timings}


@torch.inference_mode()
def generate_worker(name: str, length: int) -> None:
    """Greedy decoding over byte values only (random weights could pick EOS and stop)."""
    preset, context = GENERATORS[name]
    config = resolve(preset_name=preset).model
    if context:
        config = dataclasses.replace(config, context=context)
    torch.manual_seed(0)
    model = build_model(config).eval()
    start = time.perf_counter()
    scores, state = model.step(model.new_state(1), torch.tensor([[256, *b"The "]]))
    for _ in range(length):
        scores, state = model.step(state, scores.logits[:, -1:, :256].argmax(-1))
    n, seconds = length, time.perf_counter() - start
    print(json.dumps({"bytes": n, "bytes_per_s": n / seconds, "peak_rss_mb": peak_rss_mb(),
                      "params": model.num_params()}))


def generate_section(lengths: tuple[int, ...]) -> dict:
    results: dict = {}
    for length in lengths:
        for name in GENERATORS:
            out = subprocess.run([sys.executable, __file__, "--worker", name, "--length",
                                  str(length)], capture_output=True, text=True, check=True)
            results.setdefault(name, {})[length] = json.loads(out.stdout.splitlines()[-1])
            print(name, length, results[name][length], flush=True)
    return results


def quality_section(minutes: float, eval_bytes: int | None, backbones: list[str]) -> dict:
    from untok.data.ingest import open_data
    from untok.evaluate import evaluate
    from untok.models import load
    from untok.train.trainer import train

    rows = {}
    for name in backbones:
        backbone = name
        config = resolve(recipe=ROOT / "recipes" / "enwik8-small.toml", overrides=[
            f"data.path={str(require(SHARED / 'enwik8-4M'))!r}", f"train.minutes={minutes}",
            f"model.backbone={backbone!r}", "train.eval_every=100000"])
        with tempfile.TemporaryDirectory() as out:
            result = train(config, out, progress=True)
            model = load(Path(out) / "last")
            store = open_data(config.data.path, val_bytes=config.data.val_bytes,
                              progress=False)
            bpb = evaluate(model, store, "val", progress=True, max_bytes=eval_bytes)["bpb"]
        rows[name] = {"val_bpb": bpb, "params": model.num_params(), "steps": result.step,
                      "train_bytes_per_s": result.units_seen / result.seconds}
        print(name, rows[name], flush=True)
    return rows


def render(figures: dict) -> str:
    lines = []
    if "pack" in figures:
        p = figures["pack"]
        lines += [f"BitLinear weights of `mmfree-small`: {p['bitlinear_fp32_bytes'] / 1e6:.2f}"
                  f" MB fp32 -> {p['bitlinear_packed_bytes'] / 1e6:.3f} MB packed "
                  f"(**{p['ratio']:.3f}**, scales included).", "",
                  "| one BitLinear product 256 -> 768 | 1 row | 4096 rows |", "|---|---|---|"]
        lines += [f"| {name} | {t[1]:,.0f} us | {t[4096]:,.0f} us |"
                  for name, t in p["product_us"].items()]
        lines.append("")
    if "generate" in figures:
        g = figures["generate"]
        lengths = sorted({int(n) for r in g.values() for n in r})
        lines += ["| generating, batch 1 | " + " | ".join(f"{n:,} bytes" for n in
                                                       lengths) + " |",
                  "|---|" + "---|" * len(lengths)]
        for name, r in g.items():
            cells = [f"{r[n]['bytes_per_s']:,.0f} B/s, {r[n]['peak_rss_mb']:.0f} MB"
                     for n in lengths]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if "quality" in figures:
        q = figures["quality"]
        lines += ["| enwik8-small shape, equal wall-clock | params | val bpb | train bytes/s |",
                  "|---|---|---|---|"]
        lines += [f"| {name} | {r['params'] / 1e6:.1f}M | {r['val_bpb']:.3f} | "
                  f"{r['train_bytes_per_s']:,.0f} |" for name, r in q.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=["pack", "generate", "quality"],
                        choices=("pack", "generate", "quality"))
    parser.add_argument("--budget-minutes", type=float, default=10.0)
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--eval-bytes", type=int, help="score only the first N val bytes")
    parser.add_argument("--quality-backbones", nargs="+", default=["transformer", "mmfree"],
                        choices=("transformer", "mmfree"))
    parser.add_argument("--worker", choices=list(GENERATORS), help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        generate_worker(args.worker, args.length)
        return
    figures: dict = {}
    if "pack" in args.sections:
        figures["pack"] = pack_section()
    if "generate" in args.sections:
        figures["generate"] = generate_section(tuple(args.lengths))
    if "quality" in args.sections:
        figures["quality"] = quality_section(args.budget_minutes, args.eval_bytes,
                                             args.quality_backbones)
    table = render(figures)
    print(table)
    print(f"wrote {write_result('mmfree', figures, table)}")


if __name__ == "__main__":
    main()
