"""Which coding settings `untok compress` uses by default: a measured sweep.

The shipped model codes the held-out file classes of ``compress_default.py`` under each
setting: the defaults (tail adaptation: the last MLP and the head, trained from the coding
steps' own states), the tail at other learning rates and intervals, every weight adapting
(a forward and backward pass of its own), shorter attention windows, more rows of shorter
chunks, and no adaptation. Every round codes each class once under every setting
(interleaved, so the machine's load is shared); reported per class: bits per byte,
compression KB/s (median over the rounds; a decompression costs the same steps) and the
median of each round's speed ratio to the defaults. The settings differ from the defaults
only where named, all with the eager step.

    python bench/compress_settings.py --repeats 3          # about 15 minutes
    python bench/compress_settings.py --bytes 8000 --classes licences   # quick look
"""

from __future__ import annotations

import dataclasses
import time

import torch

from common import median, write_result
from compress_default import class_files, parse_arguments
from untok.compression import DEFAULTS, compress
from untok.shipped import default_model
from untok.weights_digest import weights_sha256

SETTINGS = {
    "default": {},
    "static": {"adapt_lr": 0.0},
    "tail 1e-3": {"adapt_lr": 1e-3},
    "tail 1e-2": {"adapt_lr": 1e-2},
    "tail every 16": {"adapt_every": 16},
    "every weight, 1e-3 every 32": {"adapt_scope": "all", "adapt_lr": 1e-3, "adapt_every": 32},
    "window 32": {"window": 32},
    "window 48": {"window": 48},
    "256 rows, chunks >= 384": {"batch_size": 256, "min_chunk": 384},
    "256 rows, chunks >= 320": {"batch_size": 256, "min_chunk": 320},
    "256 rows, chunks >= 256": {"batch_size": 256, "min_chunk": 256},
}


def options(base: dict, changes: dict, length: int) -> dict:
    """The compress() options of a setting; ``min_chunk`` sets the chunk size the default
    rule would give with that minimum."""
    changes = dict(changes)
    minimum = changes.pop("min_chunk", None)
    merged = {**base, **changes}
    if minimum:
        merged["chunk_size"] = max(-(-length // merged["batch_size"]), minimum)
    return merged


def main() -> None:
    args = parse_arguments(__doc__)
    model = default_model()
    compress(b"warm up the step " * 8, model)
    # the eager step for every setting: a compiled step's one-off compile would land on
    # whichever setting first uses a batch shape (compress_default.py times the default)
    base = {**dataclasses.asdict(DEFAULTS), "compiled": False}
    figures = {"bytes": args.bytes, "defaults": base, "settings": SETTINGS,
               "model": describe(model), "classes": {}}
    for name, what, data in class_files(args):
        row = figures["classes"][name] = {"what": what}
        seconds = {setting: [] for setting in SETTINGS}
        for _ in range(args.repeats):  # (settings interleaved: the machine's noise shared)
            for setting, changes in SETTINGS.items():
                started = time.perf_counter()
                size = len(compress(data, model, **options(base, changes, len(data))))
                seconds[setting].append(time.perf_counter() - started)
                row[setting] = {"bpb": 8 * size / len(data)}
        for setting, times in seconds.items():
            row[setting]["kb_per_s"] = len(data) / 1e3 / median(times)
            row[setting]["speed_ratio"] = median(
                [first / other for first, other in zip(seconds["default"], times, strict=True)])
            print(f"{name} / {setting}: {row[setting]['bpb']:.3f} bpb, "
                  f"{row[setting]['kb_per_s']:.1f} KB/s, {row[setting]['speed_ratio']:.2f}x",
                  flush=True)
    table = render(figures)
    write_result("compress_settings", figures, table)
    print(table)


def describe(model: torch.nn.Module) -> str:
    """The shipped model measured: its shape, size and the SHA-256 its files name."""
    c = model.config
    return (f"{c.dim} x {c.num_layers}, {sum(p.numel() for p in model.parameters()):,} "
            f"parameters, weights {weights_sha256(model).hex()[:12]}")


def render(figures: dict) -> str:
    names = list(figures["settings"])
    lines = ["| file class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in figures["classes"].values():
        cells = [f"{row[n]['bpb']:.3f} ({row[n]['kb_per_s']:.1f} KB/s, "
                 f"{row[n]['speed_ratio']:.2f}x)" for n in names]
        lines.append(f"| {row['what']} | " + " | ".join(cells) + " |")
    lines += ["", f"Bits per byte (compression KB/s, median over the rounds of the speed "
              f"ratio to the default in the same round) of {figures['bytes']:,}-byte files, "
              f"coded by the shipped model of the time ({figures.get('model', 'not recorded')}); "
              f"the other settings as the defaults: {figures['defaults']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
