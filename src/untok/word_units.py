"""Words as units (the T-Free family): the dictionary, the spelling model of the words
outside it, and the fit of both on a train split.

Ids 0 .. D-1 are the dictionary (the special words first, then the most frequent words of
the train split); a word outside it gets the next free id when it is met (its code is
hashed from its trigrams, so any word has an input vector) and its bytes are coded by
:class:`Spelling`, an order-k byte model fitted on the train split's words that fell
outside the dictionary: the words it will be asked to spell.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
from tqdm import tqdm

from untok.errors import DataError
from untok.trigrams import hash_whole, word_code
from untok.units import UNIT_KINDS
from untok.words import NO_SPACE, SPECIALS, is_special, join, space_expected, split, word_bytes

END = 256  # the spelling model's end-of-word symbol (and its start context)
SYMBOLS = END + 1


class Spelling:
    """P(byte or END | the ``order`` symbols before it) of a word, END standing for "before
    the word": Witten-Bell interpolation of the order-k counts down to add-one order-0 ones,
    so every byte string has a probability and the probabilities of all spellings sum to
    1. ``counts`` are rows ``[c_1, .., c_order, c, n]``: c followed the context c_1 .. c_order
    n times (the order is the rows' width less 2; lower orders are their sums)."""

    def __init__(self, counts: list[list[int]] | np.ndarray, cache: int = 1 << 14) -> None:
        rows = np.asarray(counts, dtype=np.int64)
        self.rows = rows = rows.reshape(-1, rows.shape[1] if rows.ndim == 2 else 4)
        self.order = rows.shape[1] - 2
        # per order k < order + 1: the counts of the contexts of k symbols (see _table)
        self.tables = [self._table(rows[:, self.order - k:]) for k in range(self.order + 1)]
        unigram = np.zeros(SYMBOLS)
        _, _, symbols, n = self.tables[0]
        unigram[symbols] = n
        self._p0 = (unigram + 1) / (unigram.sum() + SYMBOLS)
        self._cache: dict[tuple[int, ...], np.ndarray] = {}
        self._cache_size = cache

    @staticmethod
    def _key(context) -> np.ndarray:
        """A context's symbols as one integer (9 bits each; orders up to 7 fit 63 bits)."""
        context = np.asarray(context, dtype=np.int64).reshape(-1, np.shape(context)[-1])
        weights = np.int64(1) << (9 * np.arange(context.shape[1], dtype=np.int64))
        return (context * weights).sum(-1)

    @classmethod
    def _table(cls, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        """Rows ``[context.., c, n]`` -> the distinct contexts' keys (sorted, Int64[h]),
        where each one's entries begin (Int64[h + 1]), and the entries: symbols and summed
        counts (Int64[e] each, grouped by context)."""
        keys = cls._key(rows[:, :-2]) if rows.shape[1] > 2 else np.zeros(len(rows), np.int64)
        symbols, n = rows[:, -2], rows[:, -1]
        order = np.lexsort((symbols, keys))
        keys, symbols, n = keys[order], symbols[order], n[order]
        new = np.ones(len(keys), dtype=bool)
        new[1:] = (keys[1:] != keys[:-1]) | (symbols[1:] != symbols[:-1])
        first = np.flatnonzero(new)
        keys, symbols, n = keys[first], symbols[first], np.add.reduceat(n, first) \
            if len(first) else n
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else first
        return keys[starts], np.r_[starts, len(keys)], symbols, n

    def probs(self, *context: int) -> np.ndarray:
        """P(next symbol | the symbols before it, END-padded; the last ``order`` count),
        Float64[257] (cached per context)."""
        context = tuple(context[len(context) - self.order:]) if self.order else ()
        return self._at((END,) * (self.order - len(context)) + context)

    def _at(self, context: tuple[int, ...]) -> np.ndarray:
        """P(next symbol | exactly ``context``), cached."""
        found = self._cache.get(context)
        if found is None:
            found = self._interpolate(context)
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[context] = found
        return found

    def _interpolate(self, context: tuple[int, ...]) -> np.ndarray:
        """Witten-Bell: (n(h, c) + T(h) P_lower(c)) / (n(h) + T(h)), h the context."""
        if not context:
            return self._p0
        lower = self._at(context[1:])
        keys, bounds, symbols, n = self.tables[len(context)]
        key = self._key(context)[0]
        at = int(np.searchsorted(keys, key))
        if at == len(keys) or keys[at] != key:
            return lower
        symbols, n = symbols[bounds[at]:bounds[at + 1]], n[bounds[at]:bounds[at + 1]]
        total, types = n.sum(), len(n)
        out = lower * (types / (total + types))
        out[symbols] += n / (total + types)
        return out

    def log_table(self, spellings: list[bytes], length: int) -> np.ndarray:
        """log P(every symbol) at each step of each spelling (END last, zeros after it),
        Float32[N, length, 257]: the prior of :class:`untok.nn.speller.Speller`."""
        out = np.zeros((len(spellings), length, SYMBOLS), dtype=np.float32)
        for row, data in enumerate(spellings):
            path = [END] * self.order + list(data)
            for t in range(min(len(data) + 1, length)):
                out[row, t] = np.log(self.probs(*path[t:t + self.order]))
        return out

    def log_prob(self, data: bytes) -> float:
        """log P(the word spelled ``data``), END included (nats)."""
        path = [END] * self.order + [*data, END]
        return sum(float(np.log(self.probs(*path[t:t + self.order])[path[t + self.order]]))
                   for t in range(len(data) + 1))

    @staticmethod
    def fit(words: Iterable[str], order: int = 2) -> list[list[int]]:
        """The ``[c_1, .., c_order, c, n]`` rows of some words, each distinct word counted
        once (the words to spell are mostly new ones: a name repeated in the train split
        says no more about them than once)."""
        counts: Counter[tuple[int, ...]] = Counter()
        for word in set(words):
            path = [END] * order + [*word_bytes(word), END]
            for i in range(len(path) - order):
                counts[tuple(path[i:i + order + 1])] += 1
        return [[*gram, n] for gram, n in sorted(counts.items())]


class WordUnits:
    """Words as units: ids 0 .. D-1 are the dictionary (special words first), later ids
    are other words interned as they are met; ``state()`` keeps the dictionary and the
    spelling counts."""

    name = "word"
    loss_label = "bpw"
    identity = False
    num_content = 1 << 30
    bos, eos, pad = num_content, num_content + 1, num_content + 2
    vocab_size = num_content + 8

    def __init__(self, dictionary: list[str], hash_size: int, ids_per_trigram: int,
                 lowercase_ids: int, seed: int = 0,
                 spelling: list[list[int]] | None = None) -> None:
        words = sorted(SPECIALS) + [w for w in dictionary if w not in SPECIALS]
        self.words: list[str] = list(dict.fromkeys(words))
        self.dict_size = len(self.words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.hash = (hash_size, ids_per_trigram, lowercase_ids, seed)
        self.spelling = Spelling(spelling or [])
        self._codes: dict[int, np.ndarray] = {}
        self._distinct: dict[int, np.ndarray] = {}

    def id_of(self, word: str) -> int:
        if word not in self.index:
            self.index[word] = len(self.words)
            self.words.append(word)
        return self.index[word]

    def is_extra(self, i: int) -> bool:
        """Whether id ``i`` is a word outside the dictionary (not a special id)."""
        return self.dict_size <= i < self.num_content

    def code(self, i: int) -> np.ndarray:
        """The hashed ids of word ``i`` (Int64[n_trigrams, m]; BOS/EOS/PAD hashed whole)."""
        if i not in self._codes:
            v, m, k, seed = self.hash
            self._codes[i] = hash_whole(f"special {i - self.num_content}", v, m, seed) \
                if i >= self.num_content else word_code(self.words[i], v, m, k, seed)
        return self._codes[i]

    def distinct_ids(self, i: int) -> np.ndarray:
        """The distinct hashed ids of word ``i``, ascending (Int64[n]): its multi-label
        target."""
        if i not in self._distinct:
            self._distinct[i] = np.unique(self.code(i))
        return self._distinct[i]

    def bytes_of(self, i: int) -> bytes:
        """The bytes of word ``i``."""
        return word_bytes(self.words[i])

    def encode(self, data: bytes) -> np.ndarray:
        return np.array([self.id_of(w) for w in split(data)], dtype=np.int64)

    def decode(self, ids) -> bytes:
        values = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return join([self.words[i] for i in np.ravel(values) if 0 <= i < self.num_content])

    def byte_lengths(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        out = np.zeros(ids.shape, dtype=np.int64)
        for row in np.ndindex(ids.shape[:-1]):
            previous, suppress = None, False
            for t, i in enumerate(ids[row]):
                if i >= self.num_content:
                    previous, suppress = None, False
                    continue
                word = self.words[i]
                size = len(word_bytes(word))
                if word == NO_SPACE:
                    suppress = True
                elif is_special(word):
                    previous, suppress = None, False
                else:
                    if previous is not None and not suppress and space_expected(previous, word):
                        size += 1  # the implicit space before it
                    previous, suppress = word, False
                out[row + (t,)] = size
        return out

    def char_counts(self, ids: np.ndarray) -> np.ndarray:
        """Characters each id stands for: its bytes (implicit space included, see
        :meth:`byte_lengths`) less the extra bytes of its multi-byte characters."""
        ids = np.asarray(ids)
        extra = [0 if i >= self.num_content else len(word_bytes(self.words[i])) -
                 len(word_bytes(self.words[i]).decode("utf-8", errors="surrogateescape"))
                 for i in ids.ravel()]
        return self.byte_lengths(ids) - np.array(extra, dtype=np.int64).reshape(ids.shape)

    def in_vocabulary(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(ids) < self.dict_size

    def state(self) -> dict[str, Any]:
        v, m, k, seed = self.hash
        return {"name": self.name, "dictionary": self.words[:self.dict_size], "hash_size": v,
                "ids_per_trigram": m, "lowercase_ids": k, "seed": seed,
                "spelling": self.spelling.rows.tolist()}


UNIT_KINDS["word"] = WordUnits


def fit_dictionary(train: bytes | Iterable[bytes], size: int, progress: bool = False,
                   spelling_order: int = 2) -> dict[str, Any]:
    """The ``size`` most frequent words of ``train`` (bytes, or its documents one by one;
    ties in first-seen order) and the order-``spelling_order`` spelling counts of the other
    words (of every word when the dictionary holds them all). A size above the number of
    distinct words keeps them all."""
    pieces = [train] if isinstance(train, bytes) else train
    counts: Counter[str] = Counter()
    for piece in tqdm(pieces, desc="dictionary", unit="doc", disable=not progress,
                      leave=False):
        counts.update(w for w in split(piece) if not is_special(w))
    if not counts:
        raise DataError("the train split holds no words to build a dictionary from (it is "
                        "empty or only whitespace); give the T-Free model some text")
    ranked = counts.most_common()
    words = [w for w, _ in ranked[:size]]
    outside = Counter(dict(ranked[size:])) or counts
    return {"dictionary": words, "distinct_words": len(counts),
            "spelling": Spelling.fit(outside, spelling_order)}
