"""T-Free's sparse word codes: a word -> its byte trigrams -> m hashed ids each, out of v.

A word padded with one space on each side yields the set of its byte trigrams (3-byte
windows of its UTF-8 bytes, ``b0 | b1 << 8 | b2 << 16``). Each trigram gets m *distinct*
ids in ``[0, v)`` from a vectorised 64-bit integer hash (no table of 2^24 rows): an
arithmetic sequence ``a + j b (mod v)`` with ``a``, ``b`` hashed from the trigram and ``b``
coprime with v, which never repeats within m < v steps. The first k ids of a trigram are
those of its ASCII-lowercase form, so ``Hel`` and ``hel`` share k activations; the other
m - k are the trigram's own, skipping any the lowercase form already gave. Special words
(spacing) are hashed whole. Everything is integer arithmetic on ``uint64``: the same ids on
every machine and in every run.
"""

from __future__ import annotations

import hashlib

import numpy as np

from untok.words import is_special

GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: uint64 -> well-mixed uint64 (vectorised)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def trigrams(word: str) -> np.ndarray:
    """The sorted distinct byte trigrams of ``" word "`` (int64)."""
    data = np.frombuffer(b" " + word.encode("utf-8", errors="surrogateescape") + b" ",
                         dtype=np.uint8).astype(np.int64)
    windows = data[:-2] | data[1:-1] << 8 | data[2:] << 16
    return np.unique(windows)


def lowercase(tri: np.ndarray) -> np.ndarray:
    """Trigram ids with every ASCII capital byte lowered."""
    out = np.zeros_like(tri)
    for shift in (0, 8, 16):
        byte = (tri >> shift) & 0xFF
        byte = np.where((byte >= 65) & (byte <= 90), byte + 32, byte)
        out |= byte << shift
    return out


def _sequences(keys: np.ndarray, v: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct ids in [0, v) per uint64 key: Int64[N, count]."""
    with np.errstate(over="ignore"):
        h1 = mix(keys * GOLDEN + np.uint64(seed))
        h2 = mix(h1 ^ np.uint64(0xD6E8FEB86659FD93))
    a = (h1 % np.uint64(v)).astype(np.int64)
    b = (np.uint64(1) + h2 % np.uint64(max(v - 1, 1))).astype(np.int64)
    for _ in range(v):  # step to the next b coprime with v: no repeat before v steps
        bad = np.gcd(b, v) != 1
        if not bad.any():
            break
        b = np.where(bad, b % max(v - 1, 1) + 1, b)
    steps = np.arange(count, dtype=np.int64)
    return (a[:, None] + steps[None, :] * b[:, None]) % v


def hash_trigrams(tri: np.ndarray, v: int, m: int, k: int, seed: int = 0) -> np.ndarray:
    """m distinct ids per trigram (Int64[N, m]): k shared with its lowercase form first."""
    if not 0 <= k <= m <= v:
        raise ValueError(f"trigram hashing needs 0 <= k <= m <= v, got k={k} m={m} v={v}")
    keys = tri.astype(np.uint64)
    shared = _sequences(lowercase(tri).astype(np.uint64), v, k, seed)  # (N, k)
    own = _sequences(keys, v, m, seed)  # (N, m): enough, as at most k collide with shared
    taken = (own[:, :, None] == shared[:, None, :]).any(-1)
    order = np.argsort(taken, axis=1, kind="stable")[:, :m - k]
    return np.concatenate([shared, np.take_along_axis(own, order, axis=1)], axis=1)


def hash_whole(word: str, v: int, m: int, seed: int = 0) -> np.ndarray:
    """m distinct ids for a word hashed whole (Int64[1, m]), e.g. a special word."""
    digest = hashlib.blake2b(word.encode("utf-8", errors="surrogateescape"),
                             digest_size=8).digest()
    key = np.frombuffer(digest, dtype=np.uint64).copy() ^ np.uint64(1 << 63)
    return _sequences(key, v, m, seed)


def word_code(word: str, v: int, m: int, k: int, seed: int = 0) -> np.ndarray:
    """The ids of a word (Int64[n_trigrams, m]): what its input vector sums and, made a
    set, what the head must predict for it."""
    if is_special(word):
        return hash_whole(word, v, m, seed)
    return hash_trigrams(trigrams(word), v, m, k, seed)
