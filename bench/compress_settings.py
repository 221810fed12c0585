"""Which coding settings `untok compress` uses by default: a measured sweep.

The shipped model codes the held-out file classes of ``compress_default.py`` under each
setting: adaptation of the tail (the last MLP and the head, from the coding steps' own
states) at three learning rates and two intervals, or of every weight (a forward and
backward pass of its own), more rows of shorter chunks, and no adaptation. Reported per
class: bits per byte and compression KB/s (a decompression costs the same steps;
``compress_default.py`` checks both directions of the defaults, compiled). The settings
differ from the current defaults only where named, all with the eager step.

    python bench/compress_settings.py                      # about 6 minutes
    python bench/compress_settings.py --bytes 8000 --classes licences   # quick look
"""

from __future__ import annotations

import dataclasses
import time

from common import median, write_result
from compress_default import class_files, parse_arguments
from untok.compression import DEFAULTS, compress
from untok.shipped import default_model

SETTINGS = {
    "tail 3e-3, every 16": {"adapt_scope": "tail", "adapt_lr": 3e-3, "adapt_every": 16},
    "tail 3e-3, every 32": {"adapt_scope": "tail", "adapt_lr": 3e-3, "adapt_every": 32},
    "tail 1e-3, every 32": {"adapt_scope": "tail", "adapt_lr": 1e-3, "adapt_every": 32},
    "tail 1e-2, every 32": {"adapt_scope": "tail", "adapt_lr": 1e-2, "adapt_every": 32},
    "tail 3e-3, every 32, 128 rows": {"adapt_scope": "tail", "adapt_lr": 3e-3,
                                      "adapt_every": 32, "batch_size": 128, "min_chunk": 512},
    "all 1e-3, every 32": {"adapt_scope": "all", "adapt_lr": 1e-3, "adapt_every": 32},
    "static": {"adapt_lr": 0.0},
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
    figures = {"bytes": args.bytes, "defaults": base, "settings": SETTINGS, "classes": {}}
    for name, what, data in class_files(args):
        row = figures["classes"][name] = {"what": what}
        for setting, changes in SETTINGS.items():
            seconds, size = [], 0
            for _ in range(args.repeats):
                started = time.perf_counter()
                size = len(compress(data, model, **options(base, changes, len(data))))
                seconds.append(time.perf_counter() - started)
            row[setting] = {"bpb": 8 * size / len(data),
                            "kb_per_s": len(data) / 1e3 / median(seconds)}
            print(f"{name} / {setting}: {row[setting]['bpb']:.3f} bpb, "
                  f"{row[setting]['kb_per_s']:.1f} KB/s", flush=True)
    table = render(figures)
    write_result("compress_settings", figures, table)
    print(table)


def render(figures: dict) -> str:
    names = list(figures["settings"])
    lines = ["| file class | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in figures["classes"].values():
        cells = [f"{row[n]['bpb']:.3f} ({row[n]['kb_per_s']:.1f} KB/s)" for n in names]
        lines.append(f"| {row['what']} | " + " | ".join(cells) + " |")
    lines += ["", f"Bits per byte (compression KB/s) of {figures['bytes']:,}-byte files; "
              f"the other settings as the defaults: {figures['defaults']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
