"""Generated units -> text a client may see.

A stream must never show a stop string (the output ends before it) nor half of a UTF-8
character, so :class:`Release` holds back the tail of the output that could still become
either, and releases it once it is decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def incomplete_utf8_tail(data: bytes) -> int:
    """How many bytes at the end of ``data`` start a UTF-8 character that is not complete
    yet (0 when the end is complete, or is not a valid beginning of a character)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back
            continue
        need = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else \
            4 if byte & 0xF8 == 0xF0 else 1
        return back if back < need else 0
    return 0


def stop_prefix_tail(data: bytes, stops: list[bytes]) -> int:
    """The longest tail of ``data`` that is a proper prefix of one of ``stops``."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(data)), longest, -1):
            if data.endswith(stop[:k]):
                longest = k
                break
    return longest


@dataclass
class Release:
    """Units in (their bytes and whatever rides with each: log-probabilities), text out.

    ``push`` returns the bytes now safe to send and the items of the units they complete;
    ``stopped`` turns true once a stop string appeared (its bytes and everything after it
    are dropped). ``finish`` releases what was held at the end of the output."""

    stops: list[bytes]
    held: bytes = b""
    items: list[tuple[int, Any]] = field(default_factory=list)  # (end offset in held, item)
    stopped: bool = False

    def push(self, piece: bytes, item: Any = None) -> tuple[bytes, list]:
        self.held += piece
        self.items.append((len(self.held), item))
        found = [i for i in (self.held.find(s) for s in self.stops) if i >= 0]
        if found:
            self.stopped = True
            return self._release(min(found), cut=True)
        safe = len(self.held) - stop_prefix_tail(self.held, self.stops)
        safe -= incomplete_utf8_tail(self.held[:safe])
        return self._release(safe)

    def finish(self) -> tuple[bytes, list]:
        return self._release(len(self.held), cut=True)

    def _release(self, upto: int, cut: bool = False) -> tuple[bytes, list]:
        """Release whole units ending at or before ``upto`` (with ``cut``, exactly the
        bytes before ``upto``, and the items of units that begin before it)."""
        if cut:
            starts = [0] + [end for end, _ in self.items]  # one more than the items
            items = [item for (_, item), start in zip(self.items, starts, strict=False)
                     if start < upto]
            out, self.held, self.items = self.held[:upto], b"", []
            return out, items
        done = [end for end, _ in self.items if end <= upto]
        if not done:
            return b"", []
        upto = done[-1]
        items = [item for end, item in self.items if end <= upto]
        self.items = [(end - upto, item) for end, item in self.items if end > upto]
        out, self.held = self.held[:upto], self.held[upto:]
        return out, items
