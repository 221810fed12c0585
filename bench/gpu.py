"""The one GPU check: training, generation and compression speed on one device, in bf16.

Training: the ``base`` and ``large`` presets against Hugging Face GPT-2 of the same shape
(SDPA attention, the same byte vocabulary, the same fused AdamW and clipping), each eager
and compiled, alternating A B C D for ``--repeats`` rounds of ``--steps`` steps; then
``blt-small`` and ``mmfree-small``. Reports median bytes/s and MFU: the model's training
FLOPs per byte (``flops_per_byte()``, the same count for GPT-2 of the same shape) times
bytes/s over the device's bf16 dense peak (the datasheet figure for known GPUs, named in
the results, else the bf16 matmul rate measured here). Generation: greedy decoding with
the KV cache at batch 1 and 64, eager and compiled (``compile_decoding``, CUDA graphs on
a GPU). Compression: ``untok.compress`` / ``decompress`` KB/s with batched chunks.

Sections run in order of importance within ``--minutes`` (default 7.5: the whole run fits
8 minutes on an H100/H200); one that would not fit is recorded as skipped, and the results
are rewritten after every section, so a run cut short keeps what it measured. Weights are
random (speed does not depend on them); batches are windows of enwik8-4M when the shared
data is there, else of this repository's own text.

    python bench/gpu.py            # on a GPU; writes bench/results/gpu.json and gpu.md
    python bench/gpu.py --smoke    # any machine, tiny shapes, well under a minute (CI)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import untok
from common import ROOT, SHARED, median, write_result
from contenders import gpt2_model, logits_of
from untok.config import ModelConfig, TrainConfig, resolve
from untok.generate import compile_decoding
from untok.hardware import (
    autocast,
    measure_matmul_peak,
    peak_flops,
    pick_device,
    synchronize,
    to_device,
)
from untok.models import build_model
from untok.train.distributed import Objective
from untok.train.optim import make_optimizer
from untok.units import BOS, PAD


@dataclass(frozen=True)
class Plan:
    train: dict[str, tuple[str, int]]  # row -> (preset, batch size), against GPT-2
    others: dict[str, tuple[str, int, tuple[bool, ...]]]  # untok only: + compiled or not
    generate: tuple[str, tuple[int, ...], int]  # preset, batch sizes, new bytes
    compress: tuple[str, int, int, int]  # preset, bytes, chunk size, chunks side by side
    steps: int  # optimizer steps per timed round
    repeats: int  # timed rounds


FULL = Plan(train={"large": ("large", 64), "base": ("base", 32)},
            others={"blt-small": ("blt-small", 64, (False,)),  # (data-dependent patches:
                    "mmfree-small": ("mmfree-small", 64, (False, True))},  # graph breaks)
            generate=("base", (1, 64), 256), compress=("small", 1 << 18, 4096, 64),
            steps=10, repeats=3)
SMOKE = Plan(train={"large": ("tiny", 2), "base": ("tiny", 2)},
             others={"blt-small": ("blt-tiny", 2, (False,)),
                     "mmfree-small": ("mmfree-tiny", 2, (False,))},
             generate=("tiny", (1, 4), 8), compress=("tiny", 2048, 512, 4),
             steps=1, repeats=1)
SECONDS_NEEDED = {"train": 90, "others": 45, "generate": 60, "compress": 30}  # to start one
COMPILE_SECONDS = 60  # a compiled contender starts only with this much budget left


def corpus() -> tuple[bytes, str]:
    """The training bytes and their name: enwik8-4M, or this repository's text."""
    path = SHARED / "enwik8-4M"
    if path.is_file():
        return path.read_bytes(), "enwik8-4M"
    files = sorted([*ROOT.glob("src/**/*.py"), *ROOT.glob("**/*.md")])
    return b"".join(p.read_bytes() for p in files), "the repository's own .py and .md files"


def windows(data: bytes, count: int, batch: int, context: int,
            seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of random windows: (inputs, targets) Long[batch, context] each."""
    array = np.frombuffer(data, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        starts = rng.integers(0, len(array) - context - 1, batch)
        ids = torch.from_numpy(np.stack([array[s:s + context + 1] for s in starts])).long()
        out.append((ids[:, :-1], ids[:, 1:]))
    return out


def model_config(preset: str) -> ModelConfig:
    return resolve(preset_name=preset).model


class GPT2Objective(nn.Module):
    """GPT-2's next-byte cross-entropy as a module call (what gets compiled)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits_of(self.model, inputs)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                               ignore_index=PAD)


class Contender:
    """A training objective (``objective(inputs, targets) -> loss``), its fused AdamW and
    one bf16 step as the trainer takes it; ``compiled`` compiles the objective as
    ``untok train --compile`` does."""

    def __init__(self, objective: nn.Module, device: torch.device, dtype: torch.dtype,
                 compiled: bool) -> None:
        self.objective, self.device, self.dtype = objective.to(device), device, dtype
        if compiled:
            self.objective.compile()
        self.optimizer = make_optimizer(self.objective, TrainConfig(), device)

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        inputs, targets = to_device(inputs, self.device), to_device(targets, self.device)
        with autocast(self.device, self.dtype):
            loss = self.objective(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.objective.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()  # no sync: the host runs ahead of the device

    def seconds(self, batches: list) -> float:
        synchronize(self.device)
        start = time.perf_counter()
        for inputs, targets in batches:
            loss = self.step(inputs, targets)
        synchronize(self.device)
        if not torch.isfinite(loss):
            raise SystemExit(f"training diverged (loss {float(loss)})")
        return time.perf_counter() - start


def race(builders: dict[str, Callable[[], Contender]], batches: list, plan: Plan,
         flops_per_byte: float, peak: float, deadline: float) -> dict:
    """Warm every contender up (compiling), then time them in alternation."""
    contenders, row = {}, {}
    for name, build in builders.items():
        if deadline - time.perf_counter() < (COMPILE_SECONDS if "compiled" in name else 5):
            row[name] = {"skipped": "time budget"}
            continue
        torch.manual_seed(0)
        started = time.perf_counter()
        contenders[name] = contender = build()
        contender.seconds(batches[:2])  # compiles here
        row[name] = {"warmup_seconds": time.perf_counter() - started, "runs": []}
    units = sum(t.numel() for _, t in batches[:plan.steps])
    for _ in range(plan.repeats):
        for name, contender in contenders.items():
            row[name]["runs"].append(units / contender.seconds(batches[:plan.steps]))
    for name in contenders:
        rate = median(row[name]["runs"])
        row[name].update(bytes_per_s=rate, mfu=rate * flops_per_byte / peak)
    if torch.cuda.is_available():
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
        torch.cuda.reset_peak_memory_stats()
    return row


def bench_training(plan: Plan, row_name: str, data: bytes, device, dtype, peak: float,
                   deadline: float, figures: dict, save: Callable) -> None:
    """One row of ``plan.train``: untok and GPT-2 of one shape, eager and compiled."""
    preset, batch = plan.train[row_name]
    config = model_config(preset)
    batches = windows(data, max(plan.steps, 2), batch, config.context)
    flops = build_model(config, "meta").flops_per_byte()  # GPT-2 of this shape: the same
    objectives = {"untok": lambda: Objective(build_model(config)),
                  "gpt2": lambda: GPT2Objective(gpt2_model(config))}
    builders = {f"{name}{kind}": (lambda make=make, kind=kind: Contender(
        make(), device, dtype, compiled=bool(kind)))
        for kind in ("", "-compiled") for name, make in objectives.items()}
    row = race(builders, batches, plan, flops, peak, deadline)
    row.update(preset=preset, batch_size=batch, context=config.context, flops_per_byte=flops)
    for kind in ("", "-compiled"):
        if "bytes_per_s" in row[f"untok{kind}"] and "bytes_per_s" in row[f"gpt2{kind}"]:
            row[f"ratio{kind or '-eager'}"] = row[f"untok{kind}"]["bytes_per_s"] / \
                row[f"gpt2{kind}"]["bytes_per_s"]
    figures["train"][row_name] = row
    save()


def bench_others(plan: Plan, data: bytes, device, dtype, peak: float, deadline: float,
                 figures: dict, save: Callable) -> None:
    for row_name, (preset, batch, modes) in plan.others.items():
        config = model_config(preset)
        batches = windows(data, max(plan.steps, 2), batch, config.context)
        flops = build_model(config, "meta").flops_per_byte()
        builders = {"untok-compiled" if compiled else "untok":
                    (lambda compiled=compiled, config=config: Contender(
                        Objective(build_model(config)), device, dtype, compiled))
                    for compiled in modes}
        try:
            row = race(builders, batches, plan, flops, peak, deadline)
        except Exception as exc:  # noqa: BLE001  (one family failing must not lose the rest)
            row = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        row.update(preset=preset, batch_size=batch, context=config.context)
        figures["others"][row_name] = row
        save()


def decode_rate(model: nn.Module, batch: int, new_bytes: int, device, dtype) -> float:
    """Bytes/s of greedy decoding ``new_bytes`` units for ``batch`` rows after a prompt."""
    prompt = torch.tensor([[BOS, *b"The quick brown fox "]] * batch, device=device)
    with torch.no_grad(), autocast(device, dtype):
        scores, state = model.step(model.new_state(batch), prompt)
        chosen = scores[:, -1].greedy()[:, None]
        synchronize(device)
        start = time.perf_counter()
        for _ in range(new_bytes):
            scores, state = model.step(state, chosen)
            chosen = scores[:, -1].greedy()[:, None]
        synchronize(device)
    return batch * new_bytes / (time.perf_counter() - start)


def bench_generation(plan: Plan, device, dtype, figures: dict, save: Callable) -> None:
    preset, batches, new_bytes = plan.generate
    torch.manual_seed(0)
    model = build_model(model_config(preset), device).eval()
    modes = {"eager": None, "compiled": "reduce-overhead" if device.type == "cuda" else None}
    for kind, mode in modes.items():
        if kind == "compiled":
            compile_decoding(model, mode=mode)
        for batch in batches:
            started = time.perf_counter()
            decode_rate(model, batch, 4, device, dtype)  # warm up (compiles this shape)
            warmup = time.perf_counter() - started
            runs = [decode_rate(model, batch, new_bytes, device, dtype)
                    for _ in range(plan.repeats)]
            figures["generate"][f"batch-{batch}-{kind}"] = {
                "bytes_per_s": median(runs), "runs": runs, "warmup_seconds": warmup,
                "mode": mode or "default"}
            save()
    rates = figures["generate"]
    for kind in modes:
        first, last = (rates[f"batch-{b}-{kind}"]["bytes_per_s"] for b in (batches[0],
                                                                            batches[-1]))
        rates[f"batch-ratio-{kind}"] = last / first
    rates["preset"], rates["new_bytes"] = preset, new_bytes


def bench_compression(plan: Plan, data: bytes, device, figures: dict) -> None:
    preset, size, chunk, batch = plan.compress
    torch.manual_seed(0)
    model = build_model(model_config(preset), device).eval()
    sample = data[:size]
    started = time.perf_counter()
    blob = untok.compress(sample, model, chunk_size=chunk, batch_size=batch)
    middle = time.perf_counter()
    if untok.decompress(blob, model) != sample:
        raise SystemExit("compression round trip failed on this device")
    ended = time.perf_counter()
    figures["compress"] = {"preset": preset, "bytes": len(sample), "chunk_size": chunk,
                           "chunks_side_by_side": batch,
                           "compress_kb_per_s": len(sample) / 1e3 / (middle - started),
                           "decompress_kb_per_s": len(sample) / 1e3 / (ended - middle)}


def table(figures: dict) -> str:
    peak = figures["peak"]
    lines = [f"Device: {figures['device']}; bf16 peak {peak['flops'] / 1e12:,.4g} TFLOP/s "
             f"({peak['source']}); bf16 matmul measured here "
             f"{figures['measured_matmul_flops'] / 1e12:,.4g} TFLOP/s. Data: {figures['data']}."
             f" Time: {figures.get('seconds', 0):.0f} s.", "",
             "| training (bf16) | batch x context | contender | bytes/s | MFU | warmup s |",
             "|---|---|---|---|---|---|"]
    for row_name, row in {**figures["train"], **figures["others"]}.items():
        for name in ("untok", "untok-compiled", "gpt2", "gpt2-compiled"):
            cell = row.get(name)
            if cell is None:
                continue
            if "bytes_per_s" not in cell:
                lines.append(f"| {row_name} | | {name} | {cell.get('skipped', '-')} | | |")
                continue
            lines.append(f"| {row_name} | {row['batch_size']} x {row['context']} | {name} | "
                         f"{cell['bytes_per_s']:,.0f} | {cell['mfu']:.1%} | "
                         f"{cell['warmup_seconds']:.0f} |")
        for key in ("ratio-eager", "ratio-compiled"):
            if key in row:
                lines.append(f"| {row_name} | | untok / gpt2 ({key[6:]}) | {row[key]:.2f}x | | |")
        if "error" in row:
            lines.append(f"| {row_name} | | error | {row['error'][:120]} | | |")
    lines += ["", "| generation | bytes/s | warmup s |", "|---|---|---|"]
    for name, cell in figures["generate"].items():
        if isinstance(cell, dict):
            lines.append(f"| {name} | {cell['bytes_per_s']:,.0f} | {cell['warmup_seconds']:.1f} |")
        elif name.startswith("batch-ratio"):
            lines.append(f"| {name} | {cell:.1f}x | |")
    if "compress" in figures:
        c = figures["compress"]
        lines += ["", "| compression | KB/s |", "|---|---|",
                  f"| compress ({c['preset']}, {c['chunks_side_by_side']} chunks of "
                  f"{c['chunk_size']} B) | {c['compress_kb_per_s']:,.1f} |",
                  f"| decompress | {c['decompress_kb_per_s']:,.1f} |"]
    if figures["skipped"]:
        lines += ["", f"Skipped (time budget): {', '.join(figures['skipped'])}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes and one step: checks the script on any machine")
    parser.add_argument("--minutes", type=float, default=7.5,
                        help="time budget; sections that would not fit are skipped")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    started = time.perf_counter()
    deadline = started + 60 * args.minutes
    plan = SMOKE if args.smoke else FULL
    device, dtype = pick_device(args.device), torch.bfloat16
    peak = peak_flops(device, dtype)
    data, data_name = corpus()
    figures: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "peak": {"flops": peak.flops, "source": peak.source}, "data": data_name,
        "measured_matmul_flops": measure_matmul_peak(device, dtype, seconds=0.5),
        "precision": "bf16", "smoke": args.smoke, "train": {}, "others": {}, "generate": {},
        "skipped": []}

    def save() -> None:
        figures["seconds"] = time.perf_counter() - started
        write_result("gpu", figures, table(figures))

    def train(row: str) -> Callable[[], None]:
        return lambda: bench_training(plan, row, data, device, dtype, peak.flops, deadline,
                                      figures, save)

    sections = {  # in order of importance: large carries the goals
        "train-large": train("large"),
        "generate": lambda: bench_generation(plan, device, dtype, figures, save),
        "train-base": train("base"),
        "others": lambda: bench_others(plan, data, device, dtype, peak.flops, deadline,
                                       figures, save),
        "compress": lambda: bench_compression(plan, data, device, figures),
    }
    for name, run in sections.items():
        needed = SECONDS_NEEDED[name.split("-")[0]]
        if not args.smoke and deadline - time.perf_counter() < needed:
            figures["skipped"].append(name)
        else:
            print(f"gpu bench: {name} ({time.perf_counter() - started:.0f} s)", flush=True)
            run()
        save()
    print(table(figures))


if __name__ == "__main__":
    main()
