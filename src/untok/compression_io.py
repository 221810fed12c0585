"""Compressing and decompressing files (``untok compress`` / ``untok decompress``): the
container of :mod:`untok.compression`, read from and written to files or stdin/stdout
without ever leaving a half-written output."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import sys
import tempfile
import time
from pathlib import Path

from untok.compression import SUFFIX, compress, decompress, names_model, parse_header
from untok.errors import UntokError
from untok.hardware import pick_device
from untok.models import load
from untok.shipped import default_model, shipped_model


def _read_input(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UntokError(f"cannot read {path}: {exc.strerror}") from None


def _write_output(path: str, data: bytes, overwrite: bool) -> None:
    """Write to ``path`` (``-`` = stdout) through a temporary file renamed into place."""
    if path == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    final = Path(path)
    if final.exists() and not overwrite:
        raise UntokError(f"{path} already exists; pass --force to overwrite it")
    try:
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    except OSError as exc:
        raise UntokError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise UntokError(f"cannot write {path}: {exc.strerror}") from None


def default_output(source: str, decompressing: bool) -> str:
    """``FILE`` -> ``FILE.utk`` and back; stdin -> stdout."""
    if source == "-":
        return "-"
    if not decompressing:
        return source + SUFFIX
    if not source.endswith(SUFFIX) or source == SUFFIX:
        raise UntokError(f"cannot name the output: {source} does not end in {SUFFIX}; "
                         "pass -o FILE")
    return source[:-len(SUFFIX)]


def classic_sizes(data: bytes) -> dict[str, int | None]:
    """Compressed sizes of ``data`` under gzip -9, bzip2 -9, xz -9e and zstd -19 (None when
    the ``zstandard`` package is not installed): what ``untok compress --compare`` prints."""
    sizes: dict[str, int | None] = {
        "gzip -9": len(gzip.compress(data, 9, mtime=0)),
        "bzip2 -9": len(bz2.compress(data, 9)),
        "xz -9e": len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)),
        "zstd -19": None}
    try:
        import zstandard
    except ImportError:
        return sizes
    sizes["zstd -19"] = len(zstandard.ZstdCompressor(level=19).compress(data))
    return sizes


def compress_file(source: str, checkpoint: str | None, output: str | None = None, *,
                  device: str = "auto", overwrite: bool = False, progress: bool = True,
                  compare: bool = False, **options) -> dict:
    """Compress the file ``source`` (``-`` = stdin) with the model in ``checkpoint`` (None:
    the shipped default model) and :func:`untok.compression.compress`'s ``options``; returns
    sizes, bits per byte and speed (and with ``compare`` the sizes of :func:`classic_sizes`
    under ``"compare"``)."""
    output = output or default_output(source, decompressing=False)
    if output != "-" and Path(output).exists() and not overwrite:
        raise UntokError(f"{output} already exists; pass --force to overwrite it")
    data = _read_input(source)
    device = pick_device(device)
    model = default_model(device) if checkpoint is None else load(checkpoint, device)
    start = time.perf_counter()
    blob = compress(data, model, progress=progress, **options)
    seconds = time.perf_counter() - start
    _write_output(output, blob, overwrite)
    stats = {"bytes": len(data), "compressed_bytes": len(blob),
             "bpb": 8 * len(blob) / max(len(data), 1), "seconds": seconds,
             "kb_per_second": len(data) / 1024 / seconds}
    if compare:
        stats["compare"] = classic_sizes(data)
    return stats


def decompress_file(source: str, checkpoint: str | None, output: str | None = None, *,
                    device: str | None = None, overwrite: bool = False,
                    progress: bool = True) -> dict[str, float]:
    """Decompress ``source`` (``-`` = stdin) with the model in ``checkpoint`` (None: the
    shipped model the file names, the default or an earlier one: see
    :func:`untok.shipped.shipped_model`); the output is written only after its SHA-256
    matches the one recorded at compression. ``device`` defaults to the kind of device the
    file was compressed on."""
    output = output or default_output(source, decompressing=True)
    if output != "-" and Path(output).exists() and not overwrite:
        raise UntokError(f"{output} already exists; pass --force to overwrite it")
    blob = _read_input(source)
    header = parse_header(blob)
    device = pick_device(device or header.device)
    model = load(checkpoint, device) if checkpoint is not None else \
        shipped_model(lambda m: names_model(header, m), device)
    start = time.perf_counter()
    data = decompress(blob, model, progress=progress)
    seconds = time.perf_counter() - start
    _write_output(output, data, overwrite)
    return {"bytes": len(data), "compressed_bytes": len(blob), "seconds": seconds,
            "kb_per_second": len(data) / 1024 / seconds}
