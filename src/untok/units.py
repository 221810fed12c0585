"""Text <-> unit ids: the :class:`Units` protocol and its byte and code-point implementations.

Every model family reads text through one :class:`Units` object (``model.units``): it
encodes bytes to ids and back losslessly, says how many UTF-8 bytes each id stands for
(which is what makes bits per byte honest for any unit), names the special ids, and saves
whatever it learned (``state()``) in the checkpoint directory so that ``untok.load``
restores it (see docs/architecture.md).

Two units ship with untok. The default is the UTF-8 byte: ids 0..255 are byte values, and three
special ids sit above them. Embedding tables and output heads are sized to ``VOCAB_SIZE``
(a multiple of 8) so that matrix shapes stay friendly to vectorised kernels; ids above
``PAD`` are never produced or predicted.

Text is never lost: any byte string, valid UTF-8 or not, maps to ids and back unchanged.
Decoding for *display* goes through an incremental UTF-8 decoder, which holds back an
incomplete multi-byte character until its last byte arrives and shows invalid sequences
as U+FFFD (the bytes themselves are untouched).

The optional code-point unit (``model.unit = "codepoint"``) gives one id per Unicode
character, 0..0x10FFFF, so a CJK character is one step instead of three. Bytes that are
not valid UTF-8 become the escape ids U+DC80..U+DCFF (Python's ``surrogateescape``: one id
per raw byte 0x80..0xFF); valid UTF-8 never encodes a surrogate, so the mapping is
lossless both ways. The specials sit above the Unicode range.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

NUM_BYTES = 256
BOS = 256  # start of a document
EOS = 257  # end of a document
PAD = 258  # padding; never a training target
VOCAB_SIZE = 264  # 259 used ids, rounded up to a multiple of 8

NUM_CODEPOINTS = 0x110000  # U+0000 .. U+10FFFF
CP_BOS, CP_EOS, CP_PAD = NUM_CODEPOINTS, NUM_CODEPOINTS + 1, NUM_CODEPOINTS + 2
CP_VOCAB_SIZE = NUM_CODEPOINTS + 8  # the specials, rounded up to a multiple of 8
ESCAPE_FIRST, ESCAPE_LAST = 0xDC80, 0xDCFF  # raw bytes 0x80..0xFF that are not UTF-8


def to_bytes(text: str | bytes) -> bytes:
    """Bytes of ``text``; a ``str`` is UTF-8 encoded, lone surrogates kept as raw bytes.

    ``surrogateescape`` makes this the inverse of how Python decodes command-line arguments
    and file names, so invalid UTF-8 typed on a command line comes back byte-exact.
    """
    if isinstance(text, bytes):
        return text
    return text.encode("utf-8", errors="surrogateescape")


def encode(text: str | bytes, *, bos: bool = False) -> torch.Tensor:
    """Ids (Long[T]) of ``text``, optionally prefixed with ``BOS``."""
    data = np.frombuffer(to_bytes(text), dtype=np.uint8).astype(np.int64)
    ids = torch.from_numpy(data)
    if bos:
        ids = torch.cat([torch.tensor([BOS]), ids])
    return ids


def decode(ids: torch.Tensor | list[int]) -> bytes:
    """Bytes of ``ids``; special ids are dropped."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
    return bytes(v for v in values if 0 <= v < NUM_BYTES)


class StreamDecoder:
    """Incremental UTF-8 decoder for streaming output.

    ``feed(b"\\xe2\\x82")`` returns ``""`` and ``feed(b"\\xac")`` returns ``"€"``; invalid
    sequences come out as U+FFFD, for display only.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def encode_codepoints(data: bytes) -> np.ndarray:
    """Code-point ids (int64[N]) of ``data``; invalid UTF-8 bytes become escape ids."""
    text = data.decode("utf-8", errors="surrogateescape")
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"),
                         dtype="<u4").astype(np.int64)


def decode_codepoints(ids: np.ndarray | torch.Tensor | list[int]) -> bytes:
    """Bytes of code-point ids (the inverse of :func:`encode_codepoints`); specials are
    dropped."""
    values = np.asarray(ids.cpu() if isinstance(ids, torch.Tensor) else ids, dtype=np.int64)
    values = values[(values >= 0) & (values < NUM_CODEPOINTS)].astype("<u4")
    text = values.tobytes().decode("utf-32-le", errors="surrogatepass")
    return text.encode("utf-8", errors="surrogateescape")


def utf8_lengths(ids: np.ndarray) -> np.ndarray:
    """UTF-8 bytes each code-point id stands for (int64, same shape): 1-4 for characters,
    1 for an escape id (one raw byte), 0 for specials."""
    ids = np.asarray(ids)
    lengths = 1 + (ids >= 0x80).astype(np.int64) + (ids >= 0x800) + (ids >= 0x10000)
    lengths = np.where((ids >= ESCAPE_FIRST) & (ids <= ESCAPE_LAST), 1, lengths)
    return np.where(ids >= NUM_CODEPOINTS, 0, lengths)


@runtime_checkable
class Units(Protocol):
    """How a model family cuts text into ids.

    ``decode(encode(data)) == data`` for every byte string, invalid UTF-8 included; ids
    ``0 .. num_content - 1`` stand for text, ``bos``/``eos``/``pad`` are the specials, and
    ``vocab_size >= num_content + 3`` sizes embedding tables and heads. ``identity`` is
    true when id i is byte i (the byte store is then read without decoding).
    """

    name: str
    loss_label: str  # what a training loss in bits per unit is called, e.g. "bpb"
    bos: int
    eos: int
    pad: int
    num_content: int
    vocab_size: int
    identity: bool

    def encode(self, data: bytes) -> np.ndarray:
        """Ids (int64[N]) of ``data``."""
        ...

    def decode(self, ids: np.ndarray | torch.Tensor | list[int]) -> bytes:
        """Bytes of ``ids``; special ids are dropped."""
        ...

    def byte_lengths(self, ids: np.ndarray) -> np.ndarray:
        """UTF-8 bytes each id stands for (int64, same shape; 0 for specials). ``ids`` is
        read as text from its start along the last axis: units whose bytes depend on the
        id before (a word's implicit space) attribute them to the later id, so the sum is
        the length of ``decode(ids)``."""
        ...

    def char_counts(self, ids: np.ndarray) -> np.ndarray:
        """Characters each (text) id starts (int64; 0 or 1 for bytes), for bits per
        character."""
        ...

    def in_vocabulary(self, ids: np.ndarray) -> np.ndarray:
        """Whether each text id is in the units' fixed vocabulary (False: a word that a
        word model had to spell out)."""
        ...

    def state(self) -> dict[str, Any]:
        """JSON-serialisable description, enough for :func:`units_from_state`."""
        ...


class ByteUnits:
    """UTF-8 bytes: ids 0..255 are byte values (see the module docstring)."""

    name = "byte"
    loss_label = "bpb"  # bits per byte
    bos, eos, pad = BOS, EOS, PAD
    num_content = NUM_BYTES
    identity = True

    def __init__(self, vocab_size: int = VOCAB_SIZE) -> None:
        self.vocab_size = vocab_size  # wider for other id spaces (e.g. BPE baselines)

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8).astype(np.int64)

    def decode(self, ids: np.ndarray | torch.Tensor | list[int]) -> bytes:
        return decode(ids)

    def byte_lengths(self, ids: np.ndarray) -> np.ndarray:
        return (np.asarray(ids) < NUM_BYTES).astype(np.int64)

    def char_counts(self, ids: np.ndarray) -> np.ndarray:
        return (ids < 0x80) | (ids >= 0xC0)  # not a continuation byte

    def in_vocabulary(self, ids: np.ndarray) -> np.ndarray:
        return np.ones(np.shape(ids), dtype=bool)

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "vocab_size": self.vocab_size}


class CodepointUnits:
    """One id per Unicode character; raw bytes that are not UTF-8 become escape ids."""

    name = "codepoint"
    loss_label = "bpc"  # bits per character
    bos, eos, pad = CP_BOS, CP_EOS, CP_PAD
    num_content = NUM_CODEPOINTS
    vocab_size = CP_VOCAB_SIZE
    identity = False

    def encode(self, data: bytes) -> np.ndarray:
        return encode_codepoints(data)

    def decode(self, ids: np.ndarray | torch.Tensor | list[int]) -> bytes:
        return decode_codepoints(ids)

    def byte_lengths(self, ids: np.ndarray) -> np.ndarray:
        return utf8_lengths(ids)

    def char_counts(self, ids: np.ndarray) -> np.ndarray:
        raw = ids - ESCAPE_FIRST + 0x80  # an escape id counts as its raw byte would
        is_escape = (raw >= 0x80) & (raw <= 0xFF)
        return ~is_escape | (raw >= 0xC0)

    def in_vocabulary(self, ids: np.ndarray) -> np.ndarray:
        return np.ones(np.shape(ids), dtype=bool)

    def state(self) -> dict[str, Any]:
        return {"name": self.name}


UNIT_KINDS: dict[str, Callable[..., Units]] = {"byte": ByteUnits, "codepoint": CodepointUnits}


def units_from_state(state: dict[str, Any]) -> Units:
    """Rebuild units from :meth:`Units.state` (a checkpoint's ``units.json``)."""
    state = dict(state)
    name = state.pop("name", None)
    if name not in UNIT_KINDS:
        raise ValueError(f"unknown units '{name}'; known: {', '.join(UNIT_KINDS)}")
    return UNIT_KINDS[name](**state)

