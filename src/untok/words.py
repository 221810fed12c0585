"""Invertible word splitting for word-level models (T-Free): ``join(split(data)) == data``
for every byte string.

A text becomes a list of *words* (``str``):

- a run of letters (Unicode categories L* and M*, so combining marks and the vowel signs
  of Indic scripts stay inside their word) is one word, except in scripts written
  without spaces between words (Han, kana, Thai, Lao, Khmer, Myanmar:
  :data:`UNSPACED`), where every character is a word;
- every other character (a digit, punctuation, a symbol, a tab) is a word of its own;
- a byte that is not valid UTF-8 is an *escape word*: Python's ``surrogateescape``
  character for it (U+DC80..U+DCFF), one per byte;
- spacing is encoded: a single space between two words is **implicit** when
  :func:`space_expected` says a space is usual there (``the cat``, ``a, b``); a space
  where none is expected, runs of spaces and leading or trailing spaces become
  **space words** (``SPACE[n]`` for runs of n = 1, 2, 4 spaces, longer runs as several);
  a missing space where one is expected becomes :data:`NO_SPACE`; runs of newlines become
  **newline words** the same way.

Space, newline and no-space words are the *special words* (:func:`is_special`). Decoding
inserts one space between two consecutive non-special words exactly where
:func:`space_expected` holds, which is what makes the encoding invertible.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

RUNS = (4, 2, 1)  # a run of n spaces (newlines) is written with these lengths, longest first
SPACE = {n: f"\u2420{n}" for n in RUNS}  # U+2420 SYMBOL FOR SPACE + the run length
NEWLINE = {n: f"\u2424{n}" for n in RUNS}  # U+2424 SYMBOL FOR NEWLINE + the run length
NO_SPACE = "\u2420\u0338"  # a space was expected and is missing
SPECIALS = frozenset([*SPACE.values(), *NEWLINE.values(), NO_SPACE])
# scripts written without spaces between words: one word per character, no implicit space
UNSPACED = ((0x0E00, 0x0EFF), (0x1000, 0x109F), (0x1780, 0x17FF), (0x2E80, 0x2FDF),
            (0x3040, 0x31FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF),
            (0x20000, 0x3FFFF))
# no space is expected after these (openings, quotes, operators) or before these
# (closings, sentence punctuation, digits); escapes are in both sets
NO_SPACE_AFTER = frozenset("#$=-+*/'\"\\(<[{~^&@%_|`\t\r")
NO_SPACE_BEFORE = frozenset(".,:;?!=-+*/'\"\\)>]}~^&@%_|`\t\r0123456789")


@lru_cache(maxsize=1)
def _pattern() -> re.Pattern[str]:
    """One item: a run of letters and marks, spaces, newlines, or any single character."""
    letters = []
    start = None
    for code in range(0x110000):
        letter = unicodedata.category(chr(code))[0] in "LM" and not _unspaced(code)
        if letter and start is None:
            start = code
        elif not letter and start is not None:
            letters.append((start, code - 1))
            start = None
    ranges = "".join(f"{_escape(a)}-{_escape(b)}" if a != b else _escape(a)
                     for a, b in letters)
    return re.compile(f"[{ranges}]+| +|\n+|.", re.DOTALL)


def _unspaced(code: int) -> bool:
    return any(a <= code <= b for a, b in UNSPACED)


@lru_cache(maxsize=65536)
def _unspaced_char(char: str) -> bool:
    return _unspaced(ord(char))


def _escape(code: int) -> str:
    return f"\\U{code:08x}"


def is_special(word: str) -> bool:
    return word in SPECIALS


def _is_escape(char: str) -> bool:
    return "\udc80" <= char <= "\udcff"


def space_expected(left: str, right: str) -> bool:
    """Whether one space between the (non-special) words ``left`` and ``right`` is
    implicit."""
    last, first = left[-1], right[0]
    return not (last in NO_SPACE_AFTER or first in NO_SPACE_BEFORE or _is_escape(last)
                or _is_escape(first) or last.isspace() or first.isspace()
                or _unspaced_char(last) or _unspaced_char(first))


def _runs(length: int, names: dict[int, str]) -> list[str]:
    out = []
    for size in RUNS:
        count, length = divmod(length, size)
        out.extend([names[size]] * count)
    return out


def split(data: bytes) -> list[str]:
    """The words of ``data`` (see the module docstring)."""
    text = data.decode("utf-8", errors="surrogateescape")
    items = _pattern().findall(text)
    words: list[str] = []
    for i, item in enumerate(items):
        if item[0] == " ":
            before = items[i - 1] if i else None
            after = items[i + 1] if i + 1 < len(items) else None
            implicit = len(item) == 1 and before is not None and after is not None and \
                before[0] not in " \n" and after[0] not in " \n" and \
                space_expected(before, after)
            if not implicit:
                words.extend(_runs(len(item), SPACE))
        elif item[0] == "\n":
            words.extend(_runs(len(item), NEWLINE))
        else:
            previous = items[i - 1] if i else None
            if previous is not None and previous[0] not in " \n" and \
                    space_expected(previous, item):
                words.append(NO_SPACE)
            words.append(item)
    return words


def join(words: list[str]) -> bytes:
    """The bytes ``split`` made ``words`` from."""
    out: list[str] = []
    previous: str | None = None  # the last non-special word, if nothing came after it
    suppress = False
    for word in words:
        if word == NO_SPACE:
            suppress = True
            continue
        if is_special(word):
            out.append((" " if word in SPACE.values() else "\n") * int(word[1:]))
            previous = None
        else:
            if previous is not None and not suppress and space_expected(previous, word):
                out.append(" ")
            out.append(word)
            previous = word
        suppress = False
    return "".join(out).encode("utf-8", errors="surrogateescape")


def word_bytes(word: str) -> bytes:
    """The UTF-8 bytes a word stands for on its own (special words: their spacing)."""
    if word == NO_SPACE:
        return b""
    if is_special(word):
        return ((" " if word in SPACE.values() else "\n") * int(word[1:])).encode()
    return word.encode("utf-8", errors="surrogateescape")
