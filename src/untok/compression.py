"""Lossless compression with any untok byte model: its next-byte distribution drives a range
coder (``constriction``), and the compressed size is the model's bits per byte, paid in full.

Both sides run the same arithmetic: the model's one-unit ``step`` over the same chunks in the
same batches with the same number of threads, and one function (:func:`quantize`) turns its
logits into integer frequencies. A batched ``forward`` is not used for encoding: it differs
from ``step`` in the last bits of the logits, and any difference can flip an integer
frequency (``bench/compress.py`` measures how often). The container is described in
``docs/compression.md``.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from constriction import stream
from safetensors.torch import save_model
from torch import nn
from tqdm.auto import tqdm

from untok.errors import UntokError
from untok.generate import compile_decoding
from untok.models.registry import capabilities, require
from untok.shipped import default_model
from untok.units import BOS, NUM_BYTES, PAD

SUFFIX = ".utk"
MAGIC = b"\x89UTK\r\n\x1a\n"  # PNG-style: a high bit, then line endings that text mode mangles
FORMAT_VERSION = 2  # 2 adds the flags byte (a compiled step); version 1 files still decode
PRECISION = 24  # frequencies are integers summing to 2**PRECISION
DEVICES = ("cpu", "cuda", "mps")
# magic, version, precision, device, model SHA-256, length, data SHA-256, chunk size,
# chunks per batch, threads, adaptation learning rate and interval, flags; then the CRC-32
HEADER = struct.Struct("<8sHBB32sQ32sIHHfHB")
HEADERS = {1: struct.Struct("<8sHBB32sQ32sIHHfH"), 2: HEADER}  # by format version
COMPILED = 1  # flags: the step was torch.compile'd (static shapes); the decoder compiles too
CHUNK = struct.Struct("<IBI")  # payload bytes, method (CODED or STORED), CRC-32 of the original
CODED, STORED = 0, 1  # a chunk the model would expand is stored as it is
CRC = struct.Struct("<I")


class CompressionError(UntokError):
    """A container that is damaged, truncated, or needs another model to decode."""


@dataclass(frozen=True)
class Header:
    model_sha256: bytes
    length: int
    sha256: bytes
    chunk_size: int
    batch_size: int
    threads: int
    device: str
    adaptation: Adaptation
    compiled: bool = False  # the one-unit step ran compiled (compile_decoding)
    version: int = FORMAT_VERSION

    @property
    def num_chunks(self) -> int:
        return -(-self.length // self.chunk_size)

    def chunk_bounds(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.length)


def quantize(logits: torch.Tensor) -> np.ndarray:
    """Integer frequencies Int64[B, 256] from next-unit logits Float[B, V].

    Only the 256 byte values are coded (specials are never emitted). Every byte gets at least
    1, the frequencies sum to exactly ``2**PRECISION``, and the rounding remainder goes to the
    most likely byte. Computed in float64 on the CPU: identical logits give identical
    frequencies on both sides.
    """
    total = 1 << PRECISION
    probs = logits[:, :NUM_BYTES].detach().to("cpu", torch.float64).softmax(-1)
    if not torch.isfinite(probs).all():
        raise CompressionError("the model gave non-finite logits (NaN or inf); its weights "
                               "are damaged or it was trained into divergence")
    freqs = (probs * (total - NUM_BYTES)).floor().long() + 1
    top = probs.argmax(-1, keepdim=True)
    freqs.scatter_add_(1, top, total - freqs.sum(-1, keepdim=True))
    return freqs.numpy()


def weights_sha256(model: nn.Module) -> bytes:
    """SHA-256 of the model's weights as untok saves them (``model.safetensors``): for a model
    loaded from a checkpoint it equals the hash of that file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        save_model(model, path)
        return hashlib.sha256(Path(path).read_bytes()).digest()


@contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _progress_bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not enabled)


# -- the shared coding loop ------------------------------------------------------------------

class _Row:
    """One chunk in a batch: ``pick`` gets the chunk's next byte given the model's integer
    frequencies Float64[1, 256] for it, by encoding the known byte (``encode``), decoding
    it (``words`` given) or reading it from a stored chunk (neither)."""

    def __init__(self, raw: bytes = b"", *, encode: bool = False,
                 words: np.ndarray | None = None) -> None:
        self.raw, self.position = bytearray(raw), 0
        self.symbols = np.frombuffer(self.raw, np.uint8).astype(np.int32) if encode else None
        self.encoder = stream.queue.RangeEncoder() if encode else None
        self.decoder = stream.queue.RangeDecoder(words) if words is not None else None

    def pick(self, freqs: np.ndarray) -> int:
        if self.decoder is not None:
            self.raw.append(int(self.decoder.decode(_CODER, freqs)[0]))
        elif self.encoder is not None:
            self.encoder.encode(self.symbols[self.position:self.position + 1], _CODER, freqs)
        self.position += 1
        return self.raw[self.position - 1]


_CODER = stream.model.Categorical(perfect=False)


@dataclass(frozen=True)
class Adaptation:
    """Online learning while coding: after every ``every`` bytes of a batch, one Adam step
    with learning rate ``lr`` on those bytes (0 = the model stays as it is). Both sides make
    the same updates, so the model keeps learning from the file as it codes it."""

    lr: float = 0.0
    every: int = 32


class _Stepper:
    """The model that codes, the same on both sides: ``model`` itself, or a copy of it
    when the step is compiled or adapts. An adapting copy is reset to ``model``'s weights at
    the start of every batch, in place, so a compiled step is compiled once per file."""

    def __init__(self, model: nn.Module, header: Header) -> None:
        self.source, self.header = model, header
        copied = header.compiled or header.adaptation.lr
        self.model = copy.deepcopy(model) if copied else model
        if header.compiled:
            compile_decoding(self.model)

    def learner(self, rows: int, steps: int) -> _Learner | None:
        if not self.header.adaptation.lr:
            return None
        self.model.load_state_dict(self.source.state_dict())  # (copies into the same tensors)
        return _Learner(self.model, self.header.adaptation, rows, steps)

    def run(self, rows: list[_Row], lengths: list[int], bar: tqdm) -> None:
        """Step over ``len(rows)`` chunks side by side, each from a fresh state and a BOS,
        asking every unfinished row for its next byte. Finished rows are fed byte 0, so
        every step has the same shape on both sides; a compiled step always gets
        ``batch_size`` rows (a short last batch is padded with empty ones)."""
        if self.header.compiled and len(rows) < self.header.batch_size:
            padding = self.header.batch_size - len(rows)
            rows, lengths = [*rows, *[_Row()] * padding], [*lengths, *[0] * padding]
        model, steps = self.model, max(lengths)
        device = next(model.parameters()).device
        state = model.new_state(len(rows))
        units = torch.full((len(rows), 1), BOS, device=device)
        next_units = [0] * len(rows)
        learner = self.learner(len(rows), steps)
        for t in range(steps):
            scores, state = model.step(state, units)
            freqs = quantize(scores[:, -1].byte_logits).astype(np.float64)
            live = [row for row, length in enumerate(lengths) if t < length]
            for row in live:
                next_units[row] = rows[row].pick(freqs[row:row + 1])
            units = torch.tensor(next_units, device=device)[:, None]
            bar.update(len(live))
            if learner:
                learner.observe(t, units[:, 0], live)


class _Learner:
    """Adam steps on ``model`` (a copy: see :class:`_Stepper`) over every ``every`` new
    bytes of a batch (targets of finished rows are PAD: not learned)."""

    def __init__(self, model: nn.Module, adaptation: Adaptation, rows: int, steps: int):
        self.model = model
        self.every = adaptation.every
        self.optimizer = torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad], lr=adaptation.lr)
        device = next(model.parameters()).device
        self.units = torch.full((rows, steps + 1), PAD, device=device)
        self.units[:, 0] = BOS

    def observe(self, t: int, units: torch.Tensor, live: list[int]) -> None:
        self.units[live, t + 1] = units[live]
        if (t + 1) % self.every:
            return
        window = self.units[:, t + 1 - self.every:t + 2]
        with torch.enable_grad():
            loss = self.model.loss(window[:, :-1], window[:, 1:])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()


def _batches(header: Header) -> Iterator[list[int]]:
    """Chunk indices coded together: ``batch_size`` consecutive chunks at a time."""
    for first in range(0, header.num_chunks, header.batch_size):
        yield list(range(first, min(first + header.batch_size, header.num_chunks)))


def _batch_size_for(model: nn.Module, wanted: int) -> int:
    return wanted if capabilities(model).batch_decoding else 1


def _device_name(model: nn.Module) -> str:
    name = next(model.parameters()).device.type
    if name not in DEVICES:
        raise CompressionError(f"cannot compress on device {name!r}; use one of {DEVICES}")
    return name


# -- encoding --------------------------------------------------------------------------------

def _check_byte_model(model: nn.Module) -> None:
    require(model, "can_compress", "compression codes bytes and needs a next-byte "
            "distribution; use a byte model (model.unit = 'byte')", CompressionError)


@dataclass(frozen=True)
class CodingOptions:
    """How :func:`compress` codes by default (``untok compress`` with no options)."""

    chunk_size: int | None = None  # None: the data split evenly over batch_size rows
    batch_size: int = 64  # more rows per step: the step's fixed costs shared
    adapt_lr: float = 1e-3  # measured on held-out text (bench/compress_default.py)
    adapt_every: int = 32
    compiled: bool = False  # no faster on 2 CPU cores (the KV cache reads dominate)


DEFAULTS = CodingOptions()
MIN_CHUNK = 1024  # the automatic chunk size: shorter chunks lose too much to fresh states


@torch.no_grad()
def compress(data: bytes, model: nn.Module | None = None, *,
             chunk_size: int | None = DEFAULTS.chunk_size,
             batch_size: int = DEFAULTS.batch_size,
             adapt_lr: float = DEFAULTS.adapt_lr, adapt_every: int = DEFAULTS.adapt_every,
             compiled: bool = DEFAULTS.compiled, progress: bool = False) -> bytes:
    """Compress ``data`` with ``model``'s next-byte distribution (None: the shipped default
    model); :func:`decompress` with the same weights (on the same kind of device) gives
    ``data`` back exactly.

    The data is cut into chunks of ``chunk_size`` bytes, each coded from a fresh model state
    (so it decodes on its own); ``batch_size`` chunks are coded side by side. By default
    (``chunk_size=None``) the chunks fill one batch: ``ceil(len / batch_size)`` bytes each,
    at least ``MIN_CHUNK``. A chunk that
    the model would expand is stored as it is. With ``adapt_lr > 0`` a copy of the model
    learns from each batch as it is coded (see :class:`Adaptation`): smaller files, but a
    damaged chunk then spoils the rest of its batch too. ``compiled`` codes through the
    ``torch.compile``'d one-unit step (faster once compiled; recorded, and the decoder
    compiles the same step) where the family has one.
    """
    model = default_model() if model is None else model
    _check_byte_model(model)
    if chunk_size is None:
        chunk_size = max(-(-len(data) // max(batch_size, 1)), MIN_CHUNK)
    if not 1 <= chunk_size < 2**32:
        raise CompressionError(f"chunk size must be between 1 and 2**32 - 1, got {chunk_size}")
    if not 1 <= batch_size < 2**16:
        raise CompressionError(f"batch size must be between 1 and 65535, got {batch_size}")
    if not (adapt_lr >= 0 and math.isfinite(adapt_lr) and 1 <= adapt_every < 2**16):
        raise CompressionError("adaptation needs a learning rate >= 0 and an interval of 1 "
                               f"to 65535 bytes, got {adapt_lr} and {adapt_every}")
    adapt_lr = struct.unpack("<f", struct.pack("<f", adapt_lr))[0]  # as the header holds it
    data = bytes(data)
    model.eval()
    chunks = max(-(-len(data) // chunk_size), 1)
    header = Header(model_sha256=weights_sha256(model), length=len(data),
                    sha256=hashlib.sha256(data).digest(), chunk_size=chunk_size,
                    batch_size=min(_batch_size_for(model, batch_size), chunks),
                    threads=torch.get_num_threads(), device=_device_name(model),
                    adaptation=Adaptation(lr=adapt_lr, every=adapt_every),
                    compiled=compiled and capabilities(model).compiled_decoding)
    stepper = _Stepper(model, header)
    payloads: list[bytes] = []
    table = bytearray()
    with _progress_bar(len(data), "compress", progress) as bar:
        for batch in _batches(header):
            chunks = [data[slice(*header.chunk_bounds(i))] for i in batch]
            rows = [_Row(chunk, encode=True) for chunk in chunks]
            stepper.run(rows, [len(c) for c in chunks], bar)
            for chunk, row in zip(chunks, rows, strict=True):
                coded = row.encoder.get_compressed().astype("<u4").tobytes()
                method, payload = (CODED, coded) if len(coded) < len(chunk) else (STORED, chunk)
                payloads.append(payload)
                table += CHUNK.pack(len(payload), method, zlib.crc32(chunk))
    head = HEADER.pack(MAGIC, FORMAT_VERSION, PRECISION, DEVICES.index(header.device),
                       header.model_sha256, header.length, header.sha256, header.chunk_size,
                       header.batch_size, header.threads, header.adaptation.lr,
                       header.adaptation.every, COMPILED if header.compiled else 0)
    return b"".join([head, CRC.pack(zlib.crc32(head)), bytes(table),
                     CRC.pack(zlib.crc32(table)), *payloads])


# -- decoding --------------------------------------------------------------------------------

def parse_header(blob: bytes) -> Header:
    """The checked header of a container (magic, version and CRC)."""
    if len(blob) < len(MAGIC) or blob[:len(MAGIC)] != MAGIC:
        raise CompressionError("not an untok compressed file (wrong magic number)")
    if len(blob) < len(MAGIC) + 2:
        raise CompressionError("the file is truncated (its header is incomplete)")
    version = int.from_bytes(blob[len(MAGIC):len(MAGIC) + 2], "little")
    layout = HEADERS.get(version)
    if layout is None:
        raise CompressionError(f"format version {version} is not supported by this untok "
                               f"(versions {min(HEADERS)}-{FORMAT_VERSION}); upgrade untok")
    if len(blob) < layout.size + CRC.size:
        raise CompressionError("the file is truncated (its header is incomplete)")
    (_, _, precision, device, model_sha, length, sha, chunk_size, batch, threads, adapt_lr,
     adapt_every, *flags) = layout.unpack_from(blob)
    flags = flags[0] if flags else 0
    (crc,) = CRC.unpack_from(blob, layout.size)
    if zlib.crc32(blob[:layout.size]) != crc:
        raise CompressionError("the file is damaged: its header fails its CRC check")
    if (precision != PRECISION or chunk_size == 0 or batch == 0 or threads == 0
            or device >= len(DEVICES) or not (adapt_lr >= 0 and math.isfinite(adapt_lr))
            or adapt_every == 0 or flags & ~COMPILED):
        raise CompressionError("the file is damaged: its header holds impossible values")
    return Header(model_sha256=model_sha, length=length, sha256=sha, chunk_size=chunk_size,
                  batch_size=batch, threads=threads, device=DEVICES[device],
                  adaptation=Adaptation(lr=adapt_lr, every=adapt_every),
                  compiled=bool(flags & COMPILED), version=version)


def _read_chunks(blob: bytes, header: Header) -> list[tuple[bytes, int, int]]:
    """(payload, method, CRC-32 of the original bytes) of every chunk, sizes checked."""
    start = HEADERS[header.version].size + CRC.size
    end = start + header.num_chunks * CHUNK.size
    if len(blob) < end + CRC.size:
        raise CompressionError("the file is truncated (its chunk table is incomplete)")
    table = blob[start:end]
    if zlib.crc32(table) != CRC.unpack_from(blob, end)[0]:
        raise CompressionError("the file is damaged: its chunk table fails its CRC check")
    entries = [CHUNK.unpack_from(table, i * CHUNK.size) for i in range(header.num_chunks)]
    offset = end + CRC.size
    expected = offset + sum(size for size, _, _ in entries)
    if len(blob) < expected:
        raise CompressionError(f"the file is truncated: {len(blob):,} bytes, expected "
                               f"{expected:,}")
    if len(blob) > expected:
        raise CompressionError(f"the file is damaged: {len(blob) - expected:,} unexpected "
                               "bytes after the last chunk")
    chunks = []
    for index, (size, method, crc) in enumerate(entries):
        stored_size = header.chunk_bounds(index)[1] - header.chunk_bounds(index)[0]
        if method not in (CODED, STORED) or (method == CODED and size % 4) or (
                method == STORED and size != stored_size):
            raise CompressionError(f"the file is damaged: chunk {index} has an impossible "
                                   "size or method")
        chunks.append((blob[offset:offset + size], method, crc))
        offset += size
    return chunks


@torch.no_grad()
def decompress(blob: bytes, model: nn.Module | None = None, *,
               progress: bool = False) -> bytes:
    """The original bytes of a container made by :func:`compress` with the same weights
    (None: the shipped default model).

    Raises :class:`CompressionError` naming the problem for another model, a truncated or
    damaged file, or a chunk that does not decode to its recorded checksum; never returns
    bytes that fail the SHA-256 recorded by the encoder.
    """
    header = parse_header(blob)
    chunks = _read_chunks(blob, header)
    model = default_model() if model is None else model
    model.eval()
    if weights_sha256(model) != header.model_sha256:
        raise CompressionError(
            "this file was compressed with a different model (weights SHA-256 "
            f"{header.model_sha256.hex()[:16]}...); decompress it with that checkpoint")
    if _device_name(model) != header.device:
        raise CompressionError(f"this file was compressed on {header.device}; decompress it "
                               f"on {header.device} too (arithmetic differs between devices)")
    out = bytearray()
    stepper = _Stepper(model, header)
    with _threads(header.threads), _progress_bar(header.length, "decompress", progress) as bar:
        for batch in _batches(header):
            rows = [_Row(payload) if method == STORED
                    else _Row(words=np.frombuffer(payload, "<u4").astype(np.uint32))
                    for payload, method, _ in (chunks[i] for i in batch)]
            lengths = [end - start for start, end in map(header.chunk_bounds, batch)]
            if any(row.decoder is not None for row in rows):
                try:
                    stepper.run(rows, lengths, bar)
                except Exception as exc:  # garbage in a damaged payload can stop a decoder
                    raise CompressionError(f"chunks {batch[0]}-{batch[-1]} cannot be decoded "
                                           f"(the file is damaged): {exc}") from None
            else:
                bar.update(sum(lengths))
            for index, row in zip(batch, rows, strict=True):
                if zlib.crc32(row.raw) != chunks[index][2]:
                    start, end = header.chunk_bounds(index)
                    raise CompressionError(
                        f"chunk {index} (bytes {start:,}-{end:,}) does not decode to what was "
                        "compressed: the file is damaged there, or it was compressed with "
                        "another untok/torch version or machine")
                out += row.raw
    if hashlib.sha256(out).digest() != header.sha256:
        raise CompressionError("the decoded bytes fail the SHA-256 recorded at compression")
    return bytes(out)
