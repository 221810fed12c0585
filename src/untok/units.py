"""Text <-> unit ids.

The default unit is the UTF-8 byte: ids 0..255 are byte values, and three special ids sit
above them. Embedding tables and output heads are sized to ``VOCAB_SIZE`` (a multiple of 8)
so that matrix shapes stay friendly to vectorised kernels; ids above ``PAD`` are never
produced or predicted.

Text is never lost: any byte string, valid UTF-8 or not, maps to ids and back unchanged.
Decoding for *display* goes through an incremental UTF-8 decoder, which holds back an
incomplete multi-byte character until its last byte arrives and shows invalid sequences
as U+FFFD (the bytes themselves are untouched).
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
