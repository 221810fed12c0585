"""`untok compress FILE` with no model given, on text its shipped model never trained on.

File classes (``--bytes`` of each, default 60,000): the standard val splits of the shared
corpora (Wikipedia markup, Shakespeare, 25 languages interleaved), and files found on this
machine outside the training mixture: licence texts (/usr/share/common-licenses), a Debian
changelog (/usr/share/doc), and Python source of an installed package (click). For each:
untok with the shipped model as ``untok compress`` runs it by default, the same model
static (no adaptation), and gzip -9, bzip2 -9, xz -9e, zstd -19 on the same bytes; KB/s of
both directions (every untok file is decompressed and checked equal). The compiled step's
one-off compile is timed apart (``compile_seconds``) and the speeds are of the coding after
it, as in a second run of the command (the compiled kernels are cached on disk). With
``--repeats N`` each of N rounds codes every class once in every way (the baseline too),
and the speeds are the medians over the rounds: a class's figure then spans the whole run,
not the one stretch of this shared machine's load when its turn came.

``--baseline-src DIR`` also codes every file with an earlier untok (``DIR``: the ``src``
directory of a checkout of an older commit) and its own shipped model and defaults, in a
subprocess of the same run: the ratios are measured, not taken from an older table.

    python bench/compress_default.py
    git worktree add /tmp/previous ac01405
    python bench/compress_default.py --baseline-src /tmp/previous/src
    python bench/compress_default.py --bytes 8000 --classes wikipedia   # quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from common import SHARED, median, require, write_result
from untok.compression import AUTO_COMPILE, DEFAULTS, compress, decompress, parse_header
from untok.compression_io import classic_sizes
from untok.hardware import measure_matmul_peak
from untok.shipped import default_model


def interleaved_languages(limit: int) -> bytes:
    """Val lines (the last 100 of each file) of every language, round robin."""
    lines = {p.stem: p.read_bytes().splitlines(keepends=True)[-100:]
             for p in sorted((SHARED / "multilingual").glob("*.txt"))}
    out = bytearray()
    for i in range(100):
        for rows in lines.values():
            out += rows[i] if i < len(rows) else b""
            if len(out) >= limit:
                return bytes(out[:limit])
    return bytes(out)


def installed_python(package: str) -> bytes:
    module = __import__(package)
    return b"".join(p.read_bytes() for p in sorted(Path(module.__file__).parent.rglob("*.py")))


def licences() -> bytes:
    root = Path("/usr/share/common-licenses")
    return b"".join((root / name).read_bytes() for name in ("GPL-3", "GFDL-1.3", "Apache-2.0")
                    if (root / name).is_file())


def changelog() -> bytes:
    path = Path("/usr/share/doc/apt/changelog.gz")
    return gzip.decompress(path.read_bytes()) if path.is_file() else b""


CLASSES = {
    "wikipedia": ("Wikipedia markup (enwik8-4M val)",
                  lambda: require(SHARED / "enwik8-4M").read_bytes()[-200_000:]),
    "shakespeare": ("plays (Tiny Shakespeare val)",
                    lambda: require(SHARED / "tinyshakespeare.txt").read_bytes()[-111_540:]),
    "languages": ("25 languages, interleaved (multilingual val)",
                  lambda: interleaved_languages(1 << 20)),
    "licences": ("licence texts (/usr/share/common-licenses)", licences),
    "changelog": ("a Debian changelog (/usr/share/doc/apt)", changelog),
    "python": ("Python source outside the mixture (the click package)",
               lambda: installed_python("click")),
}


def code_once(data: bytes, model: torch.nn.Module, options: dict) -> dict:
    """Size and seconds of compressing and decompressing ``data`` once (checked equal)."""
    started = time.perf_counter()
    blob = compress(data, model, **options)
    encode = time.perf_counter() - started
    started = time.perf_counter()
    decoded = decompress(blob, model)
    decode = time.perf_counter() - started
    if decoded != data:
        raise SystemExit(f"round trip failed with {options}")
    return {"bytes": len(blob), "encode_s": encode, "decode_s": decode}


def summary(samples: list[dict], length: int) -> dict:
    """Bits per byte and median KB/s of both directions over ``samples`` of one input."""
    return {"bytes": samples[0]["bytes"], "bpb": 8 * samples[0]["bytes"] / length,
            "compress_kb_per_s": length / 1e3 / median([s["encode_s"] for s in samples]),
            "decompress_kb_per_s": length / 1e3 / median([s["decode_s"] for s in samples]),
            "repeats": len(samples)}


def speeds(row: dict) -> str:
    return f"{row['compress_kb_per_s']:.1f} / {row['decompress_kb_per_s']:.1f}"


def render(figures: dict) -> str:
    baseline = "baseline" in figures
    lines = ["| file class | untok default | untok static | xz -9e | zstd -19 | bzip2 -9 | "
             "gzip -9 | default KB/s (comp / decomp) | compiled KB/s |"
             + (" previous bpb | previous KB/s | default vs previous |" if baseline
                else ""), "|---" * (12 if baseline else 9) + "|"]
    for row in figures["classes"].values():
        c, d, fast = row["classic_bpb"], row["default"], row["compiled"]
        line = (f"| {row['what']} | **{d['bpb']:.3f}** | {row['static']['bpb']:.3f} | "
                f"{c['xz -9e']:.3f} | {c['zstd -19']:.3f} | {c['bzip2 -9']:.3f} | "
                f"{c['gzip -9']:.3f} | {speeds(d)} | {speeds(fast)} |")
        if baseline:
            b = row["baseline"]
            line += (f" {b['bpb']:.3f} | {speeds(b)} | "
                     f"{d['compress_kb_per_s'] / b['compress_kb_per_s']:.2f}x / "
                     f"{d['decompress_kb_per_s'] / b['decompress_kb_per_s']:.2f}x |")
        lines.append(line)
    lines.append("")
    if baseline:
        lines.append(f"Previous: the untok of {figures['baseline']} with its shipped model and "
                     f"its defaults {figures['baseline_options']}, run in a subprocess in each "
                     "round.")
    short = [f"{row['what'].split(' (')[0]}: {row['input_bytes']:,}"
             for row in figures["classes"].values() if row["input_bytes"] < figures["bytes"]]
    lines.append(f"Bits per byte of the first {figures['bytes']:,} bytes of each class"
                 + (f" (shorter: {', '.join(short)} bytes, coded in fewer rows, hence slower)"
                    if short else "") + ". Default options: "
                 f"{figures['default_options']} (adaptation: "
                 f"{figures['default_adaptation']}; the step compiles from "
                 f"{figures['auto_compile']:,} bytes, so these files code eager; 'compiled': "
                 f"the same input with --compile); static: "
                 f"{figures['static_options']}. First call (compiling the step, coding "
                 f"{figures['warm_up_bytes']:,} bytes): {figures['compile_seconds']:.1f} s. "
                 f"Threads: {figures['threads']}. The machine's fp32 matmul peak, measured at "
                 "the start and the end of this run: " + " / ".join(
                     f"{g:.0f}" for g in figures.get("matmul_peak_gflops", [])) + " GFLOP/s.")
    return "\n".join(lines)


def parse_arguments(description: str) -> argparse.Namespace:
    """The options of the compression benches: file size, classes, repeats."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--bytes", type=int, default=60_000)
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), choices=list(CLASSES))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--baseline-src", default=None, metavar="DIR",
                        help="also code every file with the untok whose package is under DIR "
                             "(the src/ of an older checkout), its shipped model and defaults")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def previous(args: argparse.Namespace, name: str) -> dict:
    """The figures of class ``name`` coded by the untok under ``--baseline-src``."""
    env = {**os.environ, "PYTHONPATH": os.path.abspath(args.baseline_src)}
    command = [sys.executable, __file__, "--worker", "--classes", name, "--bytes",
               str(args.bytes), "--repeats", "1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True,
                          cwd=Path(__file__).parent)
    if done.returncode:
        raise SystemExit(f"the baseline failed on {name}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def worker(args: argparse.Namespace) -> None:
    """--worker: one class with this process's untok and its defaults, as a JSON line."""
    import untok

    model, options = default_model(), dataclasses.asdict(DEFAULTS)
    compress(b"warm up the step " * 200, model, **options)
    for _, _, data in class_files(args):
        print(json.dumps({"samples": [code_once(data, model, options)
                                      for _ in range(args.repeats)],
                          "options": options, "untok": str(Path(untok.__file__).parent)}))


def class_files(args: argparse.Namespace) -> Iterator[tuple[str, str, bytes]]:
    """(name, description, first ``--bytes`` bytes) of each class this machine has."""
    for name in args.classes:
        what, read = CLASSES[name]
        data = read()[:args.bytes]
        if len(data) < args.bytes // 2:
            print(f"skipping {name}: only {len(data):,} bytes on this machine")
            continue
        yield name, what, data


def main() -> None:
    args = parse_arguments(__doc__)
    if args.worker:
        return worker(args)
    model = default_model()
    default_options = dataclasses.asdict(DEFAULTS)  # what `untok compress` uses
    static_options = {**default_options, "adapt_lr": 0.0}
    compiled_options = {**default_options, "compiled": True}  # (the default from AUTO_COMPILE)
    peak_before = measure_matmul_peak(torch.device("cpu"))  # this shared machine's speed now
    started = time.perf_counter()  # the one-off compile, with 64 KiB to code
    warm_up = b"warm up the step " * 4000
    adaptation = parse_header(compress(warm_up, model, **compiled_options)
                              ).adaptation  # (what the defaults resolve to for this model)
    compile_seconds = time.perf_counter() - started
    figures = {"bytes": args.bytes, "default_options": default_options,
               "default_adaptation": dataclasses.asdict(adaptation),
               "warm_up_bytes": len(warm_up), "auto_compile": AUTO_COMPILE,
               "static_options": static_options, "compile_seconds": compile_seconds,
               "threads": torch.get_num_threads(), "classes": {}}
    runs = {"default": default_options, "compiled": compiled_options, "static": static_options}
    files = list(class_files(args))
    samples = {name: {kind: [] for kind in [*runs, "baseline"]} for name, _, _ in files}
    for round_ in range(args.repeats):  # (round robin: each median spans the whole run)
        for name, _, data in files:
            for kind, options in runs.items():
                samples[name][kind].append(code_once(data, model, options))
            if args.baseline_src:
                done = previous(args, name)
                samples[name]["baseline"] += done["samples"]
                figures.update(baseline=done["untok"], baseline_options=done["options"])
        print(f"round {round_ + 1} of {args.repeats} done", flush=True)
    for name, what, data in files:
        figures["classes"][name] = row = {
            "what": what, "input_bytes": len(data),
            "classic_bpb": {k: 8 * v / len(data) for k, v in classic_sizes(data).items() if v},
            **{kind: summary(kept, len(data)) for kind, kept in samples[name].items() if kept}}
        print(f"{name}: default {row['default']['bpb']:.3f}, static {row['static']['bpb']:.3f},"
              f" xz {row['classic_bpb']['xz -9e']:.3f} bpb; "
              f"{row['default']['compress_kb_per_s']:.1f} KB/s", flush=True)
    figures["matmul_peak_gflops"] = [peak_before / 1e9,
                                      measure_matmul_peak(torch.device("cpu")) / 1e9]
    write_result("compress_default", figures, render(figures))
    print(render(figures))


if __name__ == "__main__":
    main()
