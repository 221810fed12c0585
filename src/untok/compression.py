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

import hashlib
import math
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from untok.coder import (  # noqa: F401 (quantize: part of this module's API)
    ADAPT_SCOPES,
    PRECISION,
    Adaptation,
    ChunkStreams,
    CompressionError,
    Row,
    Stepper,
    decode_batch,
    encode_batch,
    quantize,
    resolve_scope,
)
from untok.hardware import cpu_vendor
from untok.models.registry import capabilities, require
from untok.shipped import default_model, shipped_model
from untok.weights_digest import saved_weights_sha256s, weights_sha256

SUFFIX = ".utk"
MAGIC = b"\x89UTK\r\n\x1a\n"  # PNG-style: a high bit, then line endings that text mode mangles
# 2 adds the flags byte (a compiled step), 3 the attention window and the adapting
# parameters, 4 the tail scope (layout of 3), 5 one range-coder stream and one table entry
# per batch instead of per chunk (layout of 3), 6 names the model by a hash of its weights
# that does not depend on how safetensors lays them out, and records the CPU's vendor;
# files of every earlier version still decode
FORMAT_VERSION = 6
BATCH_STREAMS = 5  # the first version coding each batch as one stream (BatchStream)
WEIGHTS_DIGEST = 6  # the first version naming the model by weights_digest.weights_sha256
DEVICES = ("cpu", "cuda", "mps")
# magic, version, precision, device, model SHA-256, length, data SHA-256, chunk size,
# chunks per batch, threads, adaptation learning rate and interval, flags, attention window
# (0: the model's context), the CPU's vector instructions (index in CPU_KINDS) and vendor
# (index in CPU_VENDORS); then the CRC-32
HEADER = struct.Struct("<8sHBB32sQ32sIHHfHBHBB")
LAYOUT_3 = struct.Struct("<8sHBB32sQ32sIHHfHBHB")  # (no vendor)
HEADERS = {1: struct.Struct("<8sHBB32sQ32sIHHfH"), 2: struct.Struct("<8sHBB32sQ32sIHHfHB"),
           3: LAYOUT_3, 4: LAYOUT_3, 5: LAYOUT_3, 6: HEADER}  # by format version
# torch.backends.cpu.get_cpu_capability(): the kernels, hence the float arithmetic, differ
# between them ("": not recorded, a GPU, or a kind this untok does not know)
CPU_KINDS = ("", "DEFAULT", "AVX2", "AVX512", "VSX", "ZVECTOR", "SVE256", "SVE")
# and so do the BLAS kernels (MKL) that the same instructions get on CPUs of two vendors
# ("": not recorded, a GPU, or another vendor)
CPU_VENDORS = ("", "GenuineIntel", "AuthenticAMD")
COMPILED = 1  # flags: the step was torch.compile'd (static shapes); the decoder compiles too
ADAPT_MLP = 2  # flags: only the MLP weights adapt (Adaptation.scope "mlp")
ADAPT_TAIL = 4  # flags: the tail adapts from the coding steps' states (scope "tail")
SCOPE_FLAGS = {"all": 0, "mlp": ADAPT_MLP, "tail": ADAPT_TAIL}
# a table entry per block (a batch from version 5, a chunk before): payload bytes, method
# (CODED or STORED), CRC-32 of the original bytes
CHUNK = struct.Struct("<IBI")
CODED, STORED = 0, 1  # a chunk the model would expand is stored as it is
CRC = struct.Struct("<I")


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
    window: int = 0  # units attended to while coding (0: the model's context)
    cpu: str = ""  # the CPU's vector instructions ("": not recorded)
    vendor: str = ""  # the CPU's vendor (format 6 on; "": not recorded)
    version: int = FORMAT_VERSION

    @property
    def num_chunks(self) -> int:
        return -(-self.length // self.chunk_size)

    def chunk_bounds(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.length)

    def blocks(self) -> list[list[int]]:
        """The chunks of each block of the file (one table entry and one payload each): a
        batch from version 5, every chunk alone before."""
        if self.version >= BATCH_STREAMS:
            return list(_batches(self))
        return [[index] for index in range(self.num_chunks)]


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


def _batches(header: Header) -> Iterator[list[int]]:
    """Chunk indices coded together: ``batch_size`` consecutive chunks at a time."""
    for first in range(0, header.num_chunks, header.batch_size):
        yield list(range(first, min(first + header.batch_size, header.num_chunks)))


def _cpu(device: str) -> tuple[str, str]:
    """This CPU's kind and vendor as a container records them ("": not recorded)."""
    if device != "cpu":
        return "", ""
    kind, vendor = torch.backends.cpu.get_cpu_capability(), cpu_vendor()
    return kind if kind in CPU_KINDS else "", vendor if vendor in CPU_VENDORS else ""


def _check_cpu(header: Header) -> None:
    """One line, before any decoding, for a file coded on another kind or vendor of CPU."""
    kind, vendor = _cpu(header.device)
    if header.cpu and kind and header.cpu != kind:
        raise CompressionError(
            f"this file was compressed on a CPU computing with {header.cpu} instructions and "
            f"this one uses {kind}, whose float arithmetic differs: decompress it on a "
            f"{header.cpu} CPU")
    if header.vendor and vendor and header.vendor != vendor:
        raise CompressionError(
            f"this file was compressed on a {header.vendor} CPU and this one is {vendor}: "
            f"their math libraries round differently, so decompress it on a {header.vendor} "
            f"CPU with {header.cpu or 'the same'} instructions")


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
    batch_size: int = 128  # more rows per step: the step's fixed costs shared
    adapt_lr: float | None = None  # None: the scope's rate (ADAPT_LR)
    adapt_every: int | None = None  # None: the scope's interval (ADAPT_EVERY)
    adapt_scope: str = "auto"  # the tail where the model has one, else every weight
    # units attended to (None: the model's context); 64 of the shipped model's 128: as small
    # or smaller files and faster steps (bench/compress_settings.py)
    window: int | None = 64
    # None: compile the step for inputs of AUTO_COMPILE bytes or more, where the family has
    # a compiled step (once per row count on a machine; torch caches the kernels on disk)
    compiled: bool | None = None


DEFAULTS = CodingOptions()
# the adaptation learning rate of each scope, measured on held-out text
# (bench/compress_settings.py): the tail learns from exact states and takes a larger step
ADAPT_LR = {"tail": 3e-3, "all": 1e-3, "mlp": 1e-3}
# and interval in bytes: a tail step costs the same FLOPs per byte at any interval; at the
# default 128 rows, 8 steps (about 1,000 bytes an update) coded files up to 5% smaller
# than 16 (every weight: 16 was no better and slower)
ADAPT_EVERY = {"tail": 8, "all": 32, "mlp": 32}
# the automatic chunk size: one stream codes a whole batch, so a chunk costs only its fresh
# state (shorter chunks: more rows per step, 1.2-1.5x faster coding, files ~1-2% larger)
MIN_CHUNK = 512
# bytes from which compiled=None compiles the step: ~1.6x the eager step's speed on 2 cores
# with the first default, after a compile of ~20 s (~3 s from torch's cache later)
AUTO_COMPILE = 256 * 1024


def compiles(model: nn.Module, compiled: bool | None, length: int) -> bool:
    """Whether coding ``length`` bytes with ``model`` runs the compiled step."""
    wanted = length >= AUTO_COMPILE if compiled is None else compiled
    return wanted and capabilities(model).compiled_decoding


def batch_rows(model: nn.Module, batch_size: int, chunks: int, compiled: bool) -> int:
    """Chunks per batch: ``batch_size`` at most (1 for families that do not batch); a
    compiled step's rows are a power of two, so that few shapes ever compile."""
    rows = min(batch_size if capabilities(model).batch_decoding else 1, chunks)
    return min(1 << (rows - 1).bit_length(), batch_size) if compiled else rows


@torch.no_grad()
def compress(data: bytes, model: nn.Module | None = None, *,
             chunk_size: int | None = DEFAULTS.chunk_size,
             batch_size: int = DEFAULTS.batch_size,
             adapt_lr: float | None = DEFAULTS.adapt_lr,
             adapt_every: int | None = DEFAULTS.adapt_every,
             adapt_scope: str = DEFAULTS.adapt_scope, window: int | None = DEFAULTS.window,
             compiled: bool | None = DEFAULTS.compiled, progress: bool = False) -> bytes:
    """Compress ``data`` with ``model``'s next-byte distribution (None: the shipped default
    model); :func:`decompress` with the same weights (on the same kind of device) gives
    ``data`` back exactly.

    The data is cut into chunks of ``chunk_size`` bytes, each coded from a fresh model state;
    ``batch_size`` chunks are coded side by side as one range-coder stream (a batch decodes
    on its own). By default (``chunk_size=None``) the chunks fill one batch:
    ``ceil(len / batch_size)`` bytes each, at least ``MIN_CHUNK``. A chunk that the model
    would expand is stored as it is. With ``adapt_lr > 0`` a copy of the model learns from
    each batch as it is coded (see :class:`Adaptation`). ``compiled`` codes through the
    ``torch.compile``'d one-unit step (faster once compiled; recorded, and the decoder
    compiles the same step) where the family has one; None: for inputs of at least
    ``AUTO_COMPILE`` bytes. ``adapt_scope`` says which weights adapt (see
    :class:`Adaptation`; ``auto``: the tail where the model has one, else all), and a
    learning rate or interval of None takes the scope's (``ADAPT_LR``, ``ADAPT_EVERY``).
    ``window`` limits attention to the last ``window`` bytes while coding (a transformer's
    KV cache reads shrink; recorded in the header).
    """
    model = default_model() if model is None else model
    _check_byte_model(model)
    if chunk_size is None:
        chunk_size = max(-(-len(data) // max(batch_size, 1)), MIN_CHUNK)
    if not 1 <= chunk_size < 2**32:
        raise CompressionError(f"chunk size must be between 1 and 2**32 - 1, got {chunk_size}")
    if not 1 <= batch_size < 2**16:
        raise CompressionError(f"batch size must be between 1 and 65535, got {batch_size}")
    if adapt_scope not in ADAPT_SCOPES:
        raise CompressionError(f"adaptation scope must be one of {ADAPT_SCOPES}, got "
                               f"{adapt_scope!r}")
    adapt_scope = resolve_scope(model, adapt_scope)
    adapt_lr = ADAPT_LR[adapt_scope] if adapt_lr is None else adapt_lr
    adapt_every = ADAPT_EVERY[adapt_scope] if adapt_every is None else adapt_every
    adapt_scope = adapt_scope if adapt_lr else "all"  # (nothing adapts: no scope recorded)
    if not (adapt_lr >= 0 and math.isfinite(adapt_lr) and 1 <= adapt_every < 2**16):
        raise CompressionError("adaptation needs a learning rate >= 0 and an interval of 1 "
                               f"to 65535 bytes, got {adapt_lr} and {adapt_every}")
    if window is not None and not 1 <= window < 2**16:
        raise CompressionError(f"the window must be between 1 and 65535 bytes, got {window}")
    if not (window and window < model.config.context and capabilities(model).windowed_decoding):
        window = 0  # the whole context
    adapt_lr = struct.unpack("<f", struct.pack("<f", adapt_lr))[0]  # as the header holds it
    data = bytes(data)
    model.eval()
    chunks = max(-(-len(data) // chunk_size), 1)
    compiled = compiles(model, compiled, len(data))
    cpu, vendor = _cpu(_device_name(model))
    header = Header(model_sha256=weights_sha256(model), length=len(data),
                    sha256=hashlib.sha256(data).digest(), chunk_size=chunk_size,
                    batch_size=batch_rows(model, batch_size, chunks, compiled),
                    threads=torch.get_num_threads(), device=_device_name(model),
                    adaptation=Adaptation(lr=adapt_lr, every=adapt_every, scope=adapt_scope),
                    compiled=compiled, window=window, cpu=cpu, vendor=vendor)
    stepper = Stepper(model, header)
    payloads: list[bytes] = []
    table = bytearray()
    with _progress_bar(len(data), "compress", progress) as bar:
        for batch in _batches(header):
            chunks = [data[slice(*header.chunk_bounds(i))] for i in batch]
            raw, coded = b"".join(chunks), encode_batch(stepper, chunks, bar)
            method, payload = (CODED, coded) if len(coded) < len(raw) else (STORED, raw)
            payloads.append(payload)
            table += CHUNK.pack(len(payload), method, zlib.crc32(raw))
    head = HEADER.pack(MAGIC, FORMAT_VERSION, PRECISION, DEVICES.index(header.device),
                       header.model_sha256, header.length, header.sha256, header.chunk_size,
                       header.batch_size, header.threads, header.adaptation.lr,
                       header.adaptation.every, _flags(header), header.window,
                       CPU_KINDS.index(header.cpu), CPU_VENDORS.index(header.vendor))
    return b"".join([head, CRC.pack(zlib.crc32(head)), bytes(table),
                     CRC.pack(zlib.crc32(table)), *payloads])


def _decode_batch(stepper: Stepper, header: Header, batch: list[int], lengths: list[int],
                  blocks: dict[tuple[int, ...], tuple[bytes, int, int]], bar: tqdm
                  ) -> list[tuple[list[int], bytes]]:
    """The bytes of each block of ``batch`` (chunk indices), decoded or read as stored."""
    if header.version >= BATCH_STREAMS:
        payload, method, _ = blocks[tuple(batch)]
        if method == STORED:
            bar.update(len(payload))
            return [(batch, payload)]
        return [(batch, decode_batch(stepper, payload, lengths, bar, _name(batch)))]
    rows = [Row(payload) if method == STORED
            else Row(words=np.frombuffer(payload, "<u4").astype(np.uint32))
            for payload, method, _ in (blocks[(i,)] for i in batch)]
    if any(row.decoder is not None for row in rows):
        stepper.run(ChunkStreams(rows), lengths, bar)
    else:
        bar.update(sum(lengths))
    return [([i], bytes(row.raw)) for i, row in zip(batch, rows, strict=True)]


def _flags(header: Header) -> int:
    return (COMPILED if header.compiled else 0) | SCOPE_FLAGS[header.adaptation.scope]


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
     adapt_every, *later) = layout.unpack_from(blob)
    flags, window, cpu, vendor = (*later, 0, 0, 0, 0)[:4]  # (fields of later versions)
    (crc,) = CRC.unpack_from(blob, layout.size)
    if zlib.crc32(blob[:layout.size]) != crc:
        raise CompressionError("the file is damaged: its header fails its CRC check")
    if (precision != PRECISION or chunk_size == 0 or batch == 0 or threads == 0
            or device >= len(DEVICES) or not (adapt_lr >= 0 and math.isfinite(adapt_lr))
            or adapt_every == 0 or flags & ~(COMPILED | ADAPT_MLP | ADAPT_TAIL)
            or flags & ADAPT_MLP and flags & ADAPT_TAIL or cpu >= len(CPU_KINDS)
            or vendor >= len(CPU_VENDORS)):
        raise CompressionError("the file is damaged: its header holds impossible values")
    return Header(model_sha256=model_sha, length=length, sha256=sha, chunk_size=chunk_size,
                  batch_size=batch, threads=threads, device=DEVICES[device],
                  adaptation=Adaptation(lr=adapt_lr, every=adapt_every,
                                        scope=next(scope for scope, bit in SCOPE_FLAGS.items()
                                                   if flags & (ADAPT_MLP | ADAPT_TAIL) == bit)),
                  compiled=bool(flags & COMPILED), window=window, cpu=CPU_KINDS[cpu],
                  vendor=CPU_VENDORS[vendor], version=version)


def _read_blocks(blob: bytes, header: Header) -> list[tuple[bytes, int, int]]:
    """(payload, method, CRC-32 of the original bytes) of every block (see
    :meth:`Header.blocks`), sizes checked."""
    blocks = header.blocks()
    start = HEADERS[header.version].size + CRC.size
    end = start + len(blocks) * CHUNK.size
    if len(blob) < end + CRC.size:
        raise CompressionError("the file is truncated (its chunk table is incomplete)")
    table = blob[start:end]
    if zlib.crc32(table) != CRC.unpack_from(blob, end)[0]:
        raise CompressionError("the file is damaged: its chunk table fails its CRC check")
    entries = [CHUNK.unpack_from(table, i * CHUNK.size) for i in range(len(blocks))]
    offset = end + CRC.size
    expected = offset + sum(size for size, _, _ in entries)
    if len(blob) < expected:
        raise CompressionError(f"the file is truncated: {len(blob):,} bytes, expected "
                               f"{expected:,}")
    if len(blob) > expected:
        raise CompressionError(f"the file is damaged: {len(blob) - expected:,} unexpected "
                               "bytes after the last chunk")
    out = []
    for chunks, (size, method, crc) in zip(blocks, entries, strict=True):
        stored_size = header.chunk_bounds(chunks[-1])[1] - header.chunk_bounds(chunks[0])[0]
        per_chunk = header.version < BATCH_STREAMS  # (a batch's payload has a prefix)
        if method not in (CODED, STORED) or (method == CODED and per_chunk and size % 4) or (
                method == STORED and size != stored_size):
            raise CompressionError(f"the file is damaged: the payload of {_name(chunks)} has "
                                   "an impossible size or method")
        out.append((blob[offset:offset + size], method, crc))
        offset += size
    return out


def names_model(header: Header, model: nn.Module) -> bool:
    """Whether ``header`` names ``model`` (its weights' SHA-256; before format 6, that of its
    ``model.safetensors`` in any order safetensors may write it in)."""
    if header.version >= WEIGHTS_DIGEST:
        return weights_sha256(model) == header.model_sha256
    return header.model_sha256 in saved_weights_sha256s(model)


def _name(chunks: list[int]) -> str:
    return f"chunk {chunks[0]}" if len(chunks) == 1 else f"chunks {chunks[0]}-{chunks[-1]}"


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
    entries = _read_blocks(blob, header)  # (checked before any model is loaded)
    model = shipped_model(lambda m: names_model(header, m)) if model is None else model
    model.eval()
    if not names_model(header, model):
        raise CompressionError(
            "this file was compressed with a different model (weights SHA-256 "
            f"{header.model_sha256.hex()[:16]}...); decompress it with that checkpoint")
    if header.window and not capabilities(model).windowed_decoding:
        raise CompressionError("this file was coded with a limited attention window, which "
                               "this model cannot decode with")
    if _device_name(model) != header.device:
        raise CompressionError(f"this file was compressed on {header.device}; decompress it "
                               f"on {header.device} too (arithmetic differs between devices)")
    _check_cpu(header)
    out = bytearray()
    stepper = Stepper(model, header)
    blocks = dict(zip(map(tuple, header.blocks()), entries, strict=True))
    with _threads(header.threads), _progress_bar(header.length, "decompress", progress) as bar:
        for batch in _batches(header):
            lengths = [end - start for start, end in map(header.chunk_bounds, batch)]
            try:
                decoded = _decode_batch(stepper, header, batch, lengths, blocks, bar)
            except CompressionError:
                raise
            except Exception as exc:  # garbage in a damaged payload can stop a decoder
                raise CompressionError(f"{_name(batch)} cannot be decoded (the file is "
                                       f"damaged): {exc}") from None
            for chunks, raw in decoded:
                if zlib.crc32(raw) != blocks[tuple(chunks)][2]:
                    start, end = header.chunk_bounds(chunks[0])[0], \
                        header.chunk_bounds(chunks[-1])[1]
                    raise CompressionError(
                        f"bytes {start:,}-{end:,} ({_name(chunks)}) do not decode to what "
                        "was compressed: the file is damaged there, or it was compressed "
                        "with another untok/torch version or machine")
                out += raw
    if hashlib.sha256(out).digest() != header.sha256:
        raise CompressionError("the decoded bytes fail the SHA-256 recorded at compression")
    return bytes(out)
