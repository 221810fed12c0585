"""Generation speed at batch 1: untok (KV cache) vs Hugging Face ``generate(use_cache=True)``.

Contenders: untok eager, untok with its decoding step compiled (``compile_decoding``; the
one-off compile time is reported separately) and transformers eager. Same shape (the
``small`` preset, context raised to 1024 so that 512 new bytes fit GPT-2's
learned positions), same prompt, greedy decoding, 512 new bytes; A B alternation, medians
of bytes/s and per-byte latency (p50, p90), and peak resident memory of each contender
generating in a fresh subprocess. Weights are random: speed does not depend on them.

    python bench/generate_speed.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time

import numpy as np
import torch

from common import median, write_result
from contenders import gpt2_model, peak_rss_mb, shape, untok_model
from untok.generate import SamplerConfig, compile_decoding, generate

PROMPT = b"The quick brown fox jumps over the lazy dog. "


def gpt2_generate(model: torch.nn.Module, num_bytes: int) -> list[float]:
    """Greedy ``generate`` with a streamer that stamps every new token's arrival."""
    from transformers.generation.streamers import BaseStreamer

    stamps: list[float] = []

    class Stamps(BaseStreamer):
        def put(self, value: torch.Tensor) -> None:
            stamps.append(time.perf_counter())

        def end(self) -> None:
            pass

    ids = torch.tensor([[256, *PROMPT]])
    model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=num_bytes,
                   min_new_tokens=num_bytes, do_sample=False, use_cache=True,
                   streamer=Stamps(), pad_token_id=258)
    return stamps  # first stamp: the prompt itself


def untok_generate(model: torch.nn.Module, num_bytes: int) -> list[float]:
    stamps = [time.perf_counter()]
    for _ in generate(model, PROMPT, max_bytes=num_bytes, sampler=SamplerConfig(temperature=0)):
        stamps.append(time.perf_counter())
    return stamps


def compiled_untok_model(config) -> torch.nn.Module:
    return compile_decoding(untok_model(config))


RUNNERS = {"untok": (untok_model, untok_generate),
           "untok-compiled": (compiled_untok_model, untok_generate),
           "transformers-gpt2": (gpt2_model, gpt2_generate)}


def build(name: str, preset: str, context: int) -> torch.nn.Module:
    torch.manual_seed(0)
    config = dataclasses.replace(shape(preset), context=context)
    return RUNNERS[name][0](config).eval()


def measure(name: str, model: torch.nn.Module, num_bytes: int) -> dict:
    start = time.perf_counter()
    stamps = RUNNERS[name][1](model, num_bytes)
    seconds = time.perf_counter() - start
    gaps = np.diff(stamps) * 1e3
    return {"seconds": seconds, "bytes": len(stamps) - 1, "latencies_ms": gaps}


def memory_of(name: str, preset: str, num_bytes: int, context: int) -> float:
    result = subprocess.run([sys.executable, __file__, "--worker", name, "--shape", preset,
                             "--bytes", str(num_bytes), "--context", str(context)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bytes", type=int, default=512, help="new bytes per generation")
    parser.add_argument("--shape", default="small", help="untok preset giving the shape")
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--budget-minutes", type=float, default=0.0,
                        help="keep alternating until this much time has passed")
    parser.add_argument("--worker", choices=list(RUNNERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        measure(args.worker, build(args.worker, args.shape, args.context), args.bytes)
        print(json.dumps({"peak_rss_mb": peak_rss_mb()}))
        return

    models = {name: build(name, args.shape, args.context) for name in RUNNERS}
    warmup_seconds = {name: measure(name, model, 16)["seconds"]  # includes compiling
                      for name, model in models.items()}
    runs: dict[str, list[dict]] = {name: [] for name in models}
    deadline = time.perf_counter() + 60 * args.budget_minutes
    while len(runs["untok"]) < args.repeats or time.perf_counter() < deadline:
        for name, model in models.items():  # A B A B ...
            runs[name].append(measure(name, model, args.bytes))
    figures: dict = {"bytes": args.bytes, "context": args.context, "shape": args.shape}
    for name, results in runs.items():
        assert all(r["bytes"] == args.bytes for r in results), f"{name} stopped early"
        latencies = np.concatenate([r["latencies_ms"] for r in results])
        rates = [r["bytes"] / r["seconds"] for r in results]
        figures[name] = {"bytes_per_s": median(rates), "bytes_per_s_runs": rates,
                         "latency_ms_p50": float(np.percentile(latencies, 50)),
                         "latency_ms_p90": float(np.percentile(latencies, 90)),
                         "warmup_seconds": warmup_seconds[name],
                         "peak_rss_mb": memory_of(name, args.shape, args.bytes,
                                                  args.context)}
    baseline = figures["transformers-gpt2"]["bytes_per_s"]
    figures["ratio"] = figures["untok"]["bytes_per_s"] / baseline
    figures["ratio_compiled"] = figures["untok-compiled"]["bytes_per_s"] / baseline
    rows = ["| contender | bytes/s | vs transformers | p50 ms/byte | p90 ms/byte | "
            "first call (16 bytes) | peak RSS |", "|---|---|---|---|---|---|---|"]
    for name in RUNNERS:
        f = figures[name]
        rows.append(f"| {name} | {f['bytes_per_s']:,.0f} | "
                    f"**{f['bytes_per_s'] / baseline:.2f}x** | {f['latency_ms_p50']:.2f} | "
                    f"{f['latency_ms_p90']:.2f} | {f['warmup_seconds']:.1f} s | "
                    f"{f['peak_rss_mb']:.0f} MB |")
    rows.append(f"\nBatch 1, greedy, {args.bytes} new bytes, `{args.shape}` shape, context "
                f"{args.context}, medians of {len(runs['untok'])} alternating runs; the "
                "first call of untok-compiled includes compiling its decoding step.")
    table = "\n".join(rows)
    print(table)
    print(f"wrote {write_result('generate_speed', figures, table)}")


if __name__ == "__main__":
    main()
