"""Text <-> unit ids.

Two units exist. The default is the UTF-8 byte: ids 0..255 are byte values, and three
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


class Unit:
    """The ids of one unit kind: ``bos``/``eos``/``pad``, ``vocab_size``, how many distinct
    content ids exist (``num_content``), and bytes <-> ids."""

    def __init__(self, name: str) -> None:
        if name not in ("byte", "codepoint"):
            raise ValueError(f"unknown unit '{name}'")
        self.name = name
        codepoint = name == "codepoint"
        self.num_content = NUM_CODEPOINTS if codepoint else NUM_BYTES
        self.bos, self.eos, self.pad = (CP_BOS, CP_EOS, CP_PAD) if codepoint else (BOS, EOS, PAD)
        self.vocab_size = CP_VOCAB_SIZE if codepoint else VOCAB_SIZE

    def encode(self, data: bytes) -> np.ndarray:
        """Ids (int64[N]) of ``data``."""
        if self.name == "byte":
            return np.frombuffer(data, dtype=np.uint8).astype(np.int64)
        return encode_codepoints(data)

    def decode(self, ids: np.ndarray | torch.Tensor | list[int]) -> bytes:
        """Bytes of ``ids``; specials are dropped."""
        if self.name == "byte":
            return decode(ids)
        return decode_codepoints(ids)

    def byte_lengths(self, ids: np.ndarray) -> np.ndarray:
        """Bytes of text each id stands for (0 for specials)."""
        if self.name == "byte":
            return (np.asarray(ids) < NUM_BYTES).astype(np.int64)
        return utf8_lengths(ids)


def unit_of(config) -> Unit:
    """The :class:`Unit` of a model config."""
    return Unit(getattr(config, "unit", "byte"))
