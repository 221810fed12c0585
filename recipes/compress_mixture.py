"""The training mixture of the model that ``untok compress`` ships with (see
``compress-default.toml``): the *train* parts of every shared corpus (their standard val
splits stay unseen, for the figures) plus Python standard-library source.

    python recipes/compress_mixture.py OUT_DIR     # writes four .txt files into OUT_DIR
    untok data ingest OUT_DIR -o compress-mix --split tails --val-fraction 0.02
    untok train --recipe recipes/compress-default.toml --data compress-mix
"""

from __future__ import annotations

import argparse
import sysconfig
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ENWIK8_VAL = 200_000  # the standard splits of ../shared/data/README.md
MULTILINGUAL_VAL_LINES = 100
STDLIB_EVERY = 4  # every 4th standard-library module (about 2.7 MB): code, not the bulk


def shakespeare_train() -> bytes:
    data = (SHARED / "tinyshakespeare.txt").read_bytes()
    return data[:len(data) * 9 // 10]


def enwik8_train() -> bytes:
    return (SHARED / "enwik8-4M").read_bytes()[:-ENWIK8_VAL]


def multilingual_train() -> bytes:
    parts = []
    for path in sorted((SHARED / "multilingual").glob("*.txt")):
        lines = path.read_bytes().splitlines(keepends=True)
        parts.append(b"".join(lines[:-MULTILINGUAL_VAL_LINES]))
    return b"".join(parts)


def stdlib_modules() -> list[Path]:
    """Every ``STDLIB_EVERY``-th module of this Python's standard library, tests excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py")
                   if not {"test", "tests", "site-packages", "idlelib"} & set(p.parts))
    return files[::STDLIB_EVERY]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    parts = {"shakespeare-train.txt": shakespeare_train(), "enwik8-train.txt": enwik8_train(),
             "multilingual-train.txt": multilingual_train(),
             "python-stdlib.txt": b"".join(p.read_bytes() for p in stdlib_modules())}
    for name, data in parts.items():
        (out / name).write_bytes(data)
        print(f"{name}: {len(data):,} bytes")


if __name__ == "__main__":
    main()
