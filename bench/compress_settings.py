"""Which coding settings `untok compress` uses by default: a measured sweep.

The shipped model codes the held-out file classes of ``compress_default.py`` under each
setting: adaptation of every weight or of the MLPs only, attention over the model's whole
context or a shorter window. Reported per class: bits per byte and compression KB/s (a
decompression costs the same steps; ``compress_default.py`` checks both directions of the
defaults). The settings differ from the current defaults only where named.

    python bench/compress_settings.py                      # about 10 minutes
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
    "adapt all, context": {"adapt_scope": "all", "window": None},
    "adapt all, window 64": {"adapt_scope": "all", "window": 64},
    "adapt MLPs, context": {"adapt_scope": "mlp", "window": None},
    "adapt MLPs, window 64": {"adapt_scope": "mlp", "window": 64},
    "static, window 64": {"adapt_lr": 0.0, "window": 64},
}


def main() -> None:
    args = parse_arguments(__doc__)
    model = default_model()
    compress(b"warm up the step " * 8, model)
    base = dataclasses.asdict(DEFAULTS)
    figures = {"bytes": args.bytes, "defaults": base, "settings": SETTINGS, "classes": {}}
    for name, what, data in class_files(args):
        row = figures["classes"][name] = {"what": what}
        for setting, changes in SETTINGS.items():
            seconds, size = [], 0
            for _ in range(args.repeats):
                started = time.perf_counter()
                size = len(compress(data, model, **{**base, **changes}))
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
