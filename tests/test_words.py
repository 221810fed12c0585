"""The invertible word splitter of word-level models (untok.words)."""

from __future__ import annotations

import random

import pytest

from conftest import SHARED
from untok.words import NEWLINE, NO_SPACE, SPACE, is_special, join, split, word_bytes


def corpus_files():
    files = [p for p in SHARED.rglob("*") if p.is_file() and p.stat().st_size < 10_000_000
             and p.suffix not in (".bin", ".idx")]
    if not files:
        pytest.skip(f"reference corpora missing under {SHARED}")
    return files


def test_every_shared_file_round_trips():
    for path in corpus_files():
        data = path.read_bytes()
        assert join(split(data)) == data, path


@pytest.mark.parametrize("data", [bytes(range(256)), bytes(range(255, -1, -1)), b"", b" ",
                                  b"\n", b"   \n\n  \t ", b" \n" * 9, b"\xff", b"a\xc3"])
def test_edge_cases_round_trip(data):
    assert join(split(data)) == data


def test_random_bytes_and_whitespace_round_trip():
    rng = random.Random(0)
    for _ in range(500):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        assert join(split(data)) == data
        text = "".join(rng.choice(" \n\t.,a1(\u00e9\u4e2d") for _ in range(rng.randrange(30)))
        assert join(split(text.encode())) == text.encode()


def test_the_rules():
    assert split(b"the cat sat") == ["the", "cat", "sat"]  # single spaces are implicit
    assert split(b"a, b.") == ["a", ",", "b", "."]
    assert split(b"Hello  world") == ["Hello", SPACE[2], "world"]
    assert split(b"e.g.") == ["e", ".", NO_SPACE, "g", "."]  # a missing expected space
    assert split(b"1990") == ["1", "9", "9", "0"]  # every digit is a word
    assert split(b" x ") == [SPACE[1], "x", SPACE[1]]  # leading and trailing spaces
    assert split(b"a\n\n\nb") == ["a", NEWLINE[2], NEWLINE[1], "b"]
    assert split(b"       ") == [SPACE[4], SPACE[2], SPACE[1]]
    assert split("caf\u00e9 na\u0308ive".encode()) == ["caf\u00e9", "na\u0308ive"]  # marks
    hindi = "\u0928\u092e\u0938\u094d\u0924\u0947"  # vowel signs stay in the word
    assert split(hindi.encode()) == [hindi]
    assert split("\u4e2d\u6587".encode()) == ["\u4e2d", "\u6587"]  # unspaced scripts
    assert split(b"ab\xffcd") == ["ab", "\udcff", "cd"]  # an escape word per bad byte


def test_special_words_and_their_bytes():
    words = split(b"x  y\n")
    assert [is_special(w) for w in words] == [False, True, False, True]
    assert b"".join(word_bytes(w) for w in words) == b"x  y\n"
    assert word_bytes(NO_SPACE) == b"" and not is_special("\u2420")  # text is never special
    text = "\u2420\u0338 \u24202 \u24241".encode()  # text that looks like special words
    assert join(split(text)) == text
    assert "\u24202" not in split(text) and "\u24241" not in split(text)
