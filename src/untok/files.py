"""File helpers that every layer uses: the cache folder, file hashes, atomic writes.

This module imports nothing else of untok, so any module may import it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir() -> Path:
    """Where untok keeps derived files (``$UNTOK_CACHE``, default ``~/.cache/untok``)."""
    return Path(os.environ.get("UNTOK_CACHE", Path.home() / ".cache" / "untok"))


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 4 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary name beside ``path``, then rename it into place: a
    reader sees the old file or the new one, never half of it."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
