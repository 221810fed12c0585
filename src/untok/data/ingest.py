"""Readers that turn files, folders, JSONL/CSV/Parquet and Hugging Face datasets into
documents, and :func:`ingest`, which streams them into a byte store.

Every reader yields ``(name, chunks)`` pairs, ``chunks`` an iterable of ``bytes``: a large
plain file is read in blocks and never sits in memory whole. A JSONL line that is a
conversation (``{"messages": [...]}``) or a segment list (``[{"content": ..., "has_loss":
...}, ...]``) is a document with chat codes, ``(name, [data], codes)`` (see
:mod:`untok.chat`); the store then keeps the codes in ``NAME.chat``.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import io
import json
import os
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from tqdm import tqdm

from untok.chat import LOSS_MODES, encode_conversation, encode_segments
from untok.data.store import SPLIT_RULES, ByteStore, StoreWriter, is_store, store_paths
from untok.errors import DataError, UntokError
from untok.files import cache_dir

BLOCK = 1 << 20
FORMATS = ("auto", "text", "jsonl", "json", "csv", "tsv", "parquet", "hf")
Document = tuple[str, Iterable[bytes]] | tuple[str, Iterable[bytes], bytes]


def _read_blocks(f: BinaryIO) -> Iterator[bytes]:
    while block := f.read(BLOCK):
        yield block


def _file_blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from _read_blocks(f)


def _text_of(record: Any, key: str, where: str) -> bytes:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with a '{key}' field")
    if key not in record:
        fields = ", ".join(sorted(map(str, record))[:8])
        raise DataError(f"{where}: no field '{key}' (fields: {fields}); choose one with "
                        "--field")
    value = record[key]
    if value is None:
        return b""
    return value.encode("utf-8", errors="surrogatepass") if isinstance(value, str) else \
        str(value).encode("utf-8")


def read_jsonl(stream: BinaryIO, name: str, field: str, chat_loss: str = "assistant"
               ) -> Iterator[Document]:
    """Documents of a JSONL stream: the ``field`` of each object, or a conversation (an
    object with ``messages`` and no ``field``) or a segment list, with its chat codes."""
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        where = f"{name}:{number}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{where}: invalid JSON ({exc})") from None
        if isinstance(record, list) or (isinstance(record, dict) and field not in record
                                         and "messages" in record):
            try:
                data, codes = encode_segments(record) if isinstance(record, list) else \
                    encode_conversation(record["messages"], chat_loss)
            except UntokError as exc:
                raise DataError(f"{where}: {exc}") from None
            yield where, [data], codes
        else:
            yield where, [_text_of(record, field, where)]


def read_json(stream: BinaryIO, name: str, field: str) -> Iterator[Document]:
    try:
        records = json.load(stream)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{name}: invalid JSON ({exc})") from None
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list):
        raise DataError(f"{name}: expected a JSON array of objects or one object")
    for number, record in enumerate(records):
        yield f"{name}[{number}]", [_text_of(record, field, f"{name}[{number}]")]


def read_csv(stream: BinaryIO, name: str, column: str, delimiter: str) -> Iterator[Document]:
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline="")
    csv.field_size_limit(sys.maxsize)
    reader = csv.DictReader(text, delimiter=delimiter)
    if reader.fieldnames is None or column not in reader.fieldnames:
        fields = ", ".join(reader.fieldnames or [])
        raise DataError(f"{name}: no column '{column}' (columns: {fields}); choose one with "
                        "--column")
    for number, row in enumerate(reader, 2):
        yield f"{name}:{number}", [(row[column] or "").encode("utf-8", "surrogateescape")]


def read_parquet(path: Path, column: str) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading Parquet needs pyarrow: pip install 'untok[data]'") from None
    parquet = pq.ParquetFile(path)
    if column not in parquet.schema_arrow.names:
        raise DataError(f"{path}: no column '{column}' (columns: "
                        f"{', '.join(parquet.schema_arrow.names)}); choose one with --column")
    row = 0
    for batch in parquet.iter_batches(columns=[column]):
        for value in batch.column(0).to_pylist():
            yield f"{path}:{row}", [(value or "").encode("utf-8", "surrogatepass")]
            row += 1


def read_hf_dataset(path: Path, column: str) -> Iterator[Document]:
    try:
        import datasets
    except ImportError:
        raise DataError("reading a saved Hugging Face dataset needs 'datasets': "
                        "pip install 'untok[data]'") from None
    loaded = datasets.load_from_disk(str(path))
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    for split_name, dataset in splits:
        if column not in dataset.column_names:
            raise DataError(f"{path}: no column '{column}' (columns: "
                            f"{', '.join(dataset.column_names)}); choose one with --column")
        for row, value in enumerate(dataset[column]):
            name = f"{path}/{split_name}:{row}" if split_name else f"{path}:{row}"
            yield name, [(value or "").encode("utf-8", "surrogatepass")]


def _is_hf_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / n).is_file() for n in
                                 ("dataset_info.json", "dataset_dict.json", "state.json"))


def detect_format(path: Path) -> str:
    if _is_hf_dataset(path):
        return "hf"
    suffix = path.suffix.lower()
    return {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv",
            ".tsv": "tsv", ".parquet": "parquet"}.get(suffix, "text")


def read_source(path: Path, fmt: str, field: str, chat_loss: str = "assistant"
                ) -> Iterator[Document]:
    """Documents of one file (or saved HF dataset) in format ``fmt``."""
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "text":
        yield str(path), _file_blocks(path)
    elif fmt == "parquet":
        yield from read_parquet(path, field)
    elif fmt == "hf":
        yield from read_hf_dataset(path, field)
    else:
        with open(path, "rb") as f:
            yield from read_stream(f, str(path), fmt, field, chat_loss)


def read_stream(stream: BinaryIO, name: str, fmt: str, field: str,
                chat_loss: str = "assistant") -> Iterator[Document]:
    if fmt in ("auto", "text"):
        yield name, _read_blocks(stream)
    elif fmt == "jsonl":
        yield from read_jsonl(stream, name, field, chat_loss)
    elif fmt == "json":
        yield from read_json(stream, name, field)
    elif fmt in ("csv", "tsv"):
        yield from read_csv(stream, name, field, "," if fmt == "csv" else "\t")
    else:
        raise DataError(f"format '{fmt}' cannot be read from standard input; save it to a file")


def walk(folder: Path, glob: str | None) -> list[Path]:
    """Files under ``folder``, recursively, sorted, skipping hidden files and folders.
    ``glob`` matches the file name or its path relative to ``folder``."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if glob is None or fnmatch.fnmatch(name, glob) or fnmatch.fnmatch(rel, glob):
                found.append(path)
    return found


def expand_sources(sources: Iterable[str], glob: str | None) -> list[str | Path]:
    """Turn command-line sources into a list of files (``'-'`` stays for stdin)."""
    expanded: list[str | Path] = []
    for source in sources:
        if source == "-":
            expanded.append("-")
            continue
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(f"source not found: {source}")
        if path.is_dir() and not _is_hf_dataset(path):
            files = walk(path, glob)
            if not files:
                hint = f" matching '{glob}'" if glob else ""
                raise DataError(f"no files{hint} under {source}")
            expanded.extend(files)
        else:
            expanded.append(path)
    if not expanded:
        raise DataError("no sources given")
    return expanded


def ingest(sources: Iterable[str], out: str | Path, *, glob: str | None = None,
           fmt: str = "auto", field: str = "text", split: str = "auto",
           val_fraction: float = 0.1, val_bytes: int | None = None, seed: int = 0,
           progress: bool = True, stdin: BinaryIO | None = None, force: bool = False,
           chat_loss: str = "assistant") -> ByteStore:
    """Stream ``sources`` into the byte store ``out`` and return it opened.

    ``field`` names the JSON field or CSV/Parquet/dataset column holding the text; JSONL
    conversations and segment lists keep their loss mask (``chat_loss``: which bytes of a
    conversation are targets, ``assistant`` or ``all``). An existing store named ``out``
    is replaced only with ``force``; the folder ``out`` goes into must exist.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}")
    if chat_loss not in LOSS_MODES:
        raise DataError(f"unknown chat loss '{chat_loss}'; use one of {', '.join(LOSS_MODES)}")
    out = Path(out)
    if is_store(out) and not force:
        raise DataError(f"a byte store named {out} already exists; pass --force to replace "
                        "it or choose another -o")
    if not out.parent.is_dir():
        raise DataError(f"folder {out.parent} does not exist; create it first or choose "
                        "another -o")
    sources = list(sources)
    files = expand_sources(sources, glob)
    total = sum(p.stat().st_size for p in files if isinstance(p, Path) and p.is_file())
    bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=f"ingest {out.name}",
               disable=not progress or not total, leave=False)  # stdin: no size, no bar
    with StoreWriter(out) as writer:
        for source in files:
            if source == "-":
                stream = stdin or sys.stdin.buffer
                documents = read_stream(stream, "<stdin>", fmt, field, chat_loss)
            else:
                documents = read_source(source, fmt, field, chat_loss)
            for name, chunks, *codes in documents:
                size = writer.add(name, chunks, *codes)
                bar.update(size)
        bar.close()
        if writer.num_bytes == 0:
            raise DataError(f"no text found in {', '.join(sources)}: the corpus is empty")
        writer.commit({"sources": [str(s) for s in sources],
                       "options": {"glob": glob, "format": fmt, "field": field,
                                   "chat_loss": chat_loss}},
                      mode=split, val_fraction=val_fraction, val_bytes=val_bytes, seed=seed)
    return ByteStore(out)


BUILTIN = "stdlib"


def stdlib_sources() -> list[Path]:
    """The built-in corpus: the Python standard library's own ``.py`` sources (no tests,
    no site-packages), present on every Python installation."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    return [p for p in walk(root, "*.py") if not skip & set(p.relative_to(root).parts)]


def builtin_store(progress: bool = True) -> ByteStore:
    """The built-in ``stdlib`` corpus, ingested once into the cache (5% of files for val)."""
    files = stdlib_sources()
    key = hashlib.sha256(json.dumps([[str(p), p.stat().st_size] for p in files])
                         .encode()).hexdigest()[:16]
    cached = cache_dir() / "stores" / f"stdlib-{key}"
    if is_store(cached):
        return ByteStore(cached)
    cached.parent.mkdir(parents=True, exist_ok=True)
    return ingest([str(p) for p in files], cached, val_fraction=0.05, progress=progress)


def open_data(path: str | Path, *, val_fraction: float = 0.1,
              val_bytes: int | None = None, progress: bool = True,
              ingest_missing: bool = True) -> ByteStore | None:
    """Open a byte store, or ingest a text file / folder into a cached store first.

    ``stdlib`` (when no such file exists) names the built-in corpus. The cache key covers
    the path, size and modification time of every file and the split options, so editing
    the source re-ingests it. With ``ingest_missing=False``, what is not already a store
    (or cached) gives None instead of being ingested.
    """
    path = store_prefix(Path(path).expanduser())
    if is_store(path):
        return ByteStore(path)
    if str(path) == BUILTIN and not path.exists():
        return builtin_store(progress)
    if not path.exists():
        raise DataError(f"data not found: {path} is neither a byte store "
                        "(NAME.meta.json) nor a file or folder")
    _refuse_run_folder(path)
    files = walk(path, None) if path.is_dir() and not _is_hf_dataset(path) else [path]
    key = hashlib.sha256(json.dumps([
        [str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files
    ] + [val_fraction, val_bytes, SPLIT_RULES]).encode()).hexdigest()[:16]
    cached = cache_dir() / "stores" / f"{path.name}-{key}"
    if is_store(cached):
        return ByteStore(cached)
    if not ingest_missing:
        return None
    cached.parent.mkdir(parents=True, exist_ok=True)
    return ingest([str(path)], cached, val_fraction=val_fraction, val_bytes=val_bytes,
                  progress=progress)


def store_prefix(path: Path) -> Path:
    """``path`` without a store file's extension (``ml.bin`` -> ``ml``) when it names one
    of the files of a store, else ``path``."""
    for ext in ("bin", "idx", "names"):
        if path.name.endswith(f".{ext}"):
            prefix = path.with_name(path.name[:-len(ext) - 1])
            if is_store(prefix):
                return prefix
    return path


def data_exists(path: str) -> bool:
    """Whether ``path`` still names data: the built-in corpus, a file, folder or store."""
    found = store_prefix(Path(path).expanduser())
    return path == BUILTIN or found.exists() or is_store(found)


def _refuse_run_folder(path: Path) -> None:
    """A training run or checkpoint directory is not text to ingest."""
    if not path.is_dir():
        return
    marks = [path / "config.json", path / "best" / "config.json",
             path / "last" / "config.json", path / "metrics.jsonl"]
    if any(m.is_file() for m in marks):
        raise DataError(f"{path} is an untok training run or checkpoint, not data; pass the "
                        "byte store, text file or folder the run was trained on")


def absolute_data_path(path: str) -> str:
    """``path`` as an absolute path (``stdlib``, the built-in corpus, stays as it is), so a
    run config finds its data from any working directory."""
    resolved = Path(path).expanduser()
    if str(path) == BUILTIN and not resolved.exists():
        return path
    return str(resolved.resolve())


def remove_store(path: str | Path) -> None:
    for p in store_paths(path).values():
        p.unlink(missing_ok=True)
