"""The byte store: a corpus on disk, read through memory maps.

A store named ``NAME`` is four files side by side (five for chat data)::

    NAME.bin        raw bytes of every document, back to back (no separators)
    NAME.idx        uint64 (start, length) per document
    NAME.names      one line per document: where it came from (file path, record number)
    NAME.meta.json  counts, sources, ingest options, split rule, SHA-256 of NAME.bin
    NAME.chat       only in a store with conversations ("chat": true in the meta file):
                    one uint8 code per byte of NAME.bin, role markers and the loss mask
                    (see untok.chat); a plain document in such a store is all targets

``NAME.meta.json`` is written last and renamed into place, so a store whose meta file
exists is complete. Opening checks sizes against the meta file; ``verify()`` re-hashes.

The train/val split is a deterministic rule stored in the meta file, not a copy of data:
``document`` mode sends a document to val when a hash of its index falls below the val
fraction (corpora of 100 documents or more); ``tails`` mode makes the last val fraction of
*every* document the val split (a few documents: every one of them, e.g. every language of
a multilingual folder, is represented in val); ``tail`` mode makes the last bytes of the
concatenated corpus the val split (one document, e.g. a single book, or an exact
``--val-bytes``).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from untok.errors import DataError
from untok.files import sha256_file

FORMAT_VERSION = 1
SPLIT_MODES = ("auto", "document", "tails", "tail")
MIN_DOCS_FOR_DOCUMENT_SPLIT = 100
SPLIT_RULES = 2  # version of the "auto" rule (cache keys of stores ingested on the fly)


def store_paths(prefix: str | Path) -> dict[str, Path]:
    """The files of the store ``prefix`` (a path without extension)."""
    prefix = Path(prefix)
    base = prefix.with_name(prefix.name.removesuffix(".meta.json"))
    return {ext: base.with_name(base.name + "." + ext)
            for ext in ("bin", "idx", "names", "chat", "meta.json")}


def is_store(path: str | Path) -> bool:
    return store_paths(path)["meta.json"].is_file()


def _mix64(values: np.ndarray, seed: int) -> np.ndarray:
    """SplitMix64 finaliser: a stable, well-spread hash of uint64 values."""
    with np.errstate(over="ignore"):
        z = values.astype(np.uint64) + np.uint64((0x9E3779B97F4A7C15 * (seed + 1)) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def document_val_mask(num_docs: int, rule: dict[str, Any]) -> np.ndarray:
    """Bool[num_docs]: the documents a ``document`` rule sends to val."""
    threshold = np.uint64(int(rule["val_fraction"] * 2**64) - 1)
    return _mix64(np.arange(num_docs, dtype=np.uint64), rule["seed"]) < threshold


def tails_val_lengths(lengths: np.ndarray, val_fraction: float) -> np.ndarray:
    """Int64[docs]: val bytes at the end of each document under a ``tails`` rule (at least
    one byte on each side of a document of two bytes or more; none of a shorter one)."""
    lengths = lengths.astype(np.int64)
    val = lengths - np.floor(lengths * (1.0 - val_fraction)).astype(np.int64)
    return np.where(lengths >= 2, np.clip(val, 1, np.maximum(lengths - 1, 1)), 0)


def split_sizes(lengths: np.ndarray, rule: dict[str, Any]) -> dict[str, int]:
    """Bytes of train and val under ``rule`` for documents of ``lengths``."""
    total = int(lengths.sum())
    if rule["mode"] == "document":
        val = int(lengths[document_val_mask(len(lengths), rule)].sum())
    elif rule["mode"] == "tails":
        val = int(tails_val_lengths(lengths, rule["val_fraction"]).sum())
    else:
        val = int(rule["val_bytes"])
    return {"train": total - val, "val": val}


def choose_split(lengths: np.ndarray, *, mode: str = "auto", val_fraction: float = 0.1,
                 val_bytes: int | None = None, seed: int = 0) -> dict[str, Any]:
    """The split rule for documents of the given lengths (stored in the meta file); an
    error when it would leave the train or the val split empty."""
    rule = _split_rule(lengths, mode, val_fraction, val_bytes, seed)
    sizes = split_sizes(lengths, rule)
    if len(lengths) and int(lengths.sum()) >= 2 and min(sizes.values()) == 0:
        empty = "val" if sizes["val"] == 0 else "train"
        hint = {"document": "use --split tails (the end of every document) or --split tail",
                "tails": "the documents are too short to split; use --split tail"}
        raise DataError(f"the {rule['mode']} split of {len(lengths)} document(s) leaves the "
                        f"{empty} split empty; "
                        f"{hint.get(rule['mode'], 'change --val-fraction or --val-bytes')}")
    return rule


def _split_rule(lengths: np.ndarray, mode: str, val_fraction: float,
                val_bytes: int | None, seed: int) -> dict[str, Any]:
    if mode not in SPLIT_MODES:
        raise DataError(f"unknown split mode '{mode}'; use one of {SPLIT_MODES}")
    if not 0.0 < val_fraction < 1.0:
        raise DataError("val fraction must be between 0 and 1 (exclusive)")
    if mode == "auto":
        if val_bytes is not None or len(lengths) <= 1:
            mode = "tail"
        else:
            mode = "document" if len(lengths) >= MIN_DOCS_FOR_DOCUMENT_SPLIT else "tails"
    if mode in ("document", "tails"):
        if val_bytes is not None:
            raise DataError("--val-bytes needs the tail split; use --val-fraction instead")
        rule = {"mode": mode, "val_fraction": val_fraction}
        return {**rule, "seed": seed} if mode == "document" else rule
    total = int(lengths.sum())
    if val_bytes is None:  # at least one byte on each side when there are two
        val_bytes = min(max(total - int(total * (1.0 - val_fraction)), 1), total - 1)
        return {"mode": "tail", "val_bytes": max(val_bytes, 0)}
    if not 0 < val_bytes < total:
        raise DataError(f"val split of {val_bytes} bytes does not fit a corpus of {total} "
                        "bytes; lower --val-bytes or --val-fraction")
    return {"mode": "tail", "val_bytes": int(val_bytes)}


@dataclass(frozen=True)
class Segments:
    """Pieces of the store that form one split: ``starts``/``lengths`` index ``NAME.bin``,
    ``ends_doc`` says whether the piece ends its document, ``docs`` its document index."""

    starts: np.ndarray
    lengths: np.ndarray
    ends_doc: np.ndarray
    docs: np.ndarray

    @property
    def num_bytes(self) -> int:
        return int(self.lengths.sum())


class ByteStore:
    """A read-only, memory-mapped byte store."""

    def __init__(self, path: str | Path) -> None:
        self.paths = store_paths(path)
        self.name = self.paths["bin"].with_suffix("").name
        meta_path = self.paths["meta.json"]
        if not meta_path.is_file():
            raise DataError(f"no byte store at {meta_path.with_suffix('').with_suffix('')}: "
                            f"{meta_path} is missing; create one with 'untok data ingest'")
        try:
            self.meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"corrupt byte store meta file {meta_path}: {exc}") from None
        if self.meta.get("format") != "untok-bytestore":
            raise DataError(f"{meta_path} is not an untok byte store meta file")
        if self.meta.get("version", 0) > FORMAT_VERSION:
            raise DataError(f"{meta_path} was written by a newer untok; upgrade untok")
        self.num_docs = int(self.meta["documents"])
        self.num_bytes = int(self.meta["bytes"])
        self._check_sizes()
        self.index = self._map(self.paths["idx"], np.uint64).reshape(-1, 2)
        self.data = self._map(self.paths["bin"], np.uint8)
        # Uint8[num_bytes]: chat codes (marker kind | TARGET bit), or None for plain text
        self.codes = self._map(self.paths["chat"], np.uint8) if self.is_chat else None
        self._segments: dict[str, Segments] = {}

    @property
    def is_chat(self) -> bool:
        """Whether the store holds chat codes (markers and a loss mask) beside its bytes."""
        return bool(self.meta.get("chat"))

    def _check_sizes(self) -> None:
        sizes = [("bin", self.num_bytes), ("idx", 16 * self.num_docs)]
        for ext, expected in sizes + ([("chat", self.num_bytes)] if self.is_chat else []):
            path = self.paths[ext]
            if not path.is_file():
                raise DataError(f"byte store file {path} is missing; re-run 'untok data ingest'")
            if path.stat().st_size != expected:
                raise DataError(f"byte store file {path} has {path.stat().st_size} bytes, "
                                f"meta says {expected}: the store is corrupt or was "
                                "modified; re-run 'untok data ingest'")

    @staticmethod
    def _map(path: Path, dtype: type) -> np.ndarray:
        if path.stat().st_size == 0:
            return np.zeros(0, dtype=dtype)
        return np.memmap(path, dtype=dtype, mode="r")

    @property
    def starts(self) -> np.ndarray:
        return self.index[:, 0].astype(np.int64)

    @property
    def lengths(self) -> np.ndarray:
        return self.index[:, 1].astype(np.int64)

    def document(self, i: int) -> bytes:
        start, length = (int(v) for v in self.index[i])
        return bytes(self.data[start:start + length])

    def names(self) -> list[str]:
        path = self.paths["names"]
        if not path.is_file():
            return [f"doc{i}" for i in range(self.num_docs)]
        return path.read_text(encoding="utf-8", errors="replace").splitlines()

    def val_mask(self) -> np.ndarray:
        """Bool[num_docs]: documents that belong to val (document mode)."""
        return document_val_mask(self.num_docs, self.meta["split"])

    def segments(self, split: str) -> Segments:
        """The pieces of ``split`` ('train', 'val' or 'all'), in corpus order."""
        if split not in ("train", "val", "all"):
            raise DataError(f"unknown split '{split}'; use train, val or all")
        if split not in self._segments:
            self._segments[split] = self._compute_segments(split)
        return self._segments[split]

    def _compute_segments(self, split: str) -> Segments:
        starts, lengths = self.starts, self.lengths
        docs = np.arange(self.num_docs, dtype=np.int64)
        ends = np.ones(self.num_docs, dtype=bool)
        rule = self.meta["split"]
        if split == "all":
            keep = lengths > 0
        elif rule["mode"] == "document":
            keep = (self.val_mask() == (split == "val")) & (lengths > 0)
        elif rule["mode"] == "tails":
            val = tails_val_lengths(lengths, rule["val_fraction"])
            if split == "train":
                lengths, ends = lengths - val, val == 0
            else:
                starts, lengths = starts + lengths - val, val
            keep = lengths > 0
        else:
            cut = self.num_bytes - rule["val_bytes"]
            first_val = np.clip(cut - starts, 0, lengths)  # bytes of each doc before the cut
            if split == "train":
                lengths, ends = first_val, first_val == lengths
            else:
                starts, lengths = starts + first_val, lengths - first_val
            keep = lengths > 0
        return Segments(starts[keep], lengths[keep], ends[keep], docs[keep])

    def with_split(self, rule: dict[str, Any]) -> ByteStore:
        """The same store read with another split rule (e.g. the one a run trained with)."""
        other = copy.copy(self)
        other.meta = {**self.meta, "split": rule}
        other._segments = {}
        return other

    def split_data(self, split: str, separator: bytes = b"") -> bytes:
        """The bytes of ``split`` in corpus order, its pieces joined by ``separator``."""
        segments = self.segments(split)
        return separator.join(bytes(self.data[s:s + n]) for s, n in
                              zip(segments.starts, segments.lengths, strict=True))

    def split_bytes(self) -> dict[str, int]:
        return {s: self.segments(s).num_bytes for s in ("train", "val")}

    def verify(self) -> None:
        """Re-hash ``NAME.bin`` and compare with the checksum in the meta file."""
        if sha256_file(self.paths["bin"]) != self.meta["sha256"]:
            raise DataError(f"checksum mismatch in {self.paths['bin']}: the store is corrupt")


class StoreWriter:
    """Streams documents into a new store; nothing appears under the final names until
    :meth:`commit`, and an exception (or :meth:`abort`) leaves no files behind."""

    def __init__(self, path: str | Path) -> None:
        self.paths = store_paths(path)
        suffix = f".tmp{os.getpid()}"
        self._tmp = {ext: p.with_name(p.name + suffix) for ext, p in self.paths.items()}
        self._bin = open(self._tmp["bin"], "wb")
        self._idx = open(self._tmp["idx"], "wb")
        self._names = open(self._tmp["names"], "w", encoding="utf-8")
        self._chat: Any = None  # opened by the first document with chat codes
        self._digest = hashlib.sha256()
        self.num_bytes = 0
        self.num_docs = 0

    def add(self, name: str, chunks: Any, codes: bytes | None = None) -> int:
        """Append one document given as an iterable of byte chunks, with its chat codes
        (one per byte, see :mod:`untok.chat`) when it is a conversation; returns its
        length."""
        start = self.num_bytes
        for chunk in chunks:
            self._bin.write(chunk)
            self._digest.update(chunk)
            self.num_bytes += len(chunk)
        length = self.num_bytes - start
        if codes is not None and len(codes) != length:
            raise ValueError(f"{len(codes)} chat codes for a document of {length} bytes")
        if codes is not None and self._chat is None:  # earlier plain documents: all targets
            self._chat = open(self._tmp["chat"], "wb")
            self._write_targets(start)
        if self._chat is not None and codes is not None:
            self._chat.write(codes)
        elif self._chat is not None:
            self._write_targets(length)
        self._idx.write(np.array([start, length], dtype=np.uint64).tobytes())
        self._names.write(name.replace("\n", " ") + "\n")
        self.num_docs += 1
        return length

    def _write_targets(self, count: int) -> None:
        """``count`` codes of plain text that is a training target."""
        from untok.chat import TARGET, TEXT

        for done in range(0, count, 1 << 20):
            self._chat.write(bytes([TEXT | TARGET]) * min(1 << 20, count - done))

    def _files(self) -> list[Any]:
        return [self._bin, self._idx, self._names] + ([self._chat] if self._chat else [])

    def commit(self, meta: dict[str, Any], **split_options: Any) -> dict[str, Any]:
        """Close the files, choose the split, write the meta file and rename everything
        into place. ``split_options`` go to :func:`choose_split`. Returns the meta."""
        for f in self._files():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        lengths = np.fromfile(self._tmp["idx"], dtype=np.uint64).reshape(-1, 2)[:, 1]
        split = choose_split(lengths.astype(np.int64), **split_options)
        full_meta = {"format": "untok-bytestore", "version": FORMAT_VERSION,
                     "documents": self.num_docs, "bytes": self.num_bytes,
                     "sha256": self._digest.hexdigest(), "split": split, **meta}
        if self._chat is not None:
            full_meta["chat"] = True
        self._tmp["meta.json"].write_text(json.dumps(full_meta, indent=2) + "\n")
        self.paths["meta.json"].unlink(missing_ok=True)  # an old store stops looking valid
        self.paths["chat"].unlink(missing_ok=True)
        exts = ("bin", "idx", "names") + (("chat",) if self._chat else ()) + ("meta.json",)
        for ext in exts:  # meta last: it marks completion
            os.replace(self._tmp[ext], self.paths[ext])
        return full_meta

    def abort(self) -> None:
        for f in self._files():
            f.close()
        for p in self._tmp.values():
            p.unlink(missing_ok=True)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is not None:
            self.abort()
