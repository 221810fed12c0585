"""``untok words``: how a T-Free model (or the default word codes) reads a text."""

from __future__ import annotations

from pathlib import Path

from untok.config import WordsConfig
from untok.errors import UntokError
from untok.trigrams import word_code
from untok.words import is_special, split


def load_units(path: str | Path | None):
    """The word units of a T-Free checkpoint, or fresh ones with the default codes."""
    from untok.models import load
    from untok.word_units import WordUnits

    if path is None:
        w = WordsConfig()
        return WordUnits([], w.hash_size, w.ids_per_trigram, w.lowercase_ids, w.seed)
    units = load(path).units
    if not isinstance(units, WordUnits):
        raise UntokError(f"{path} reads {units.name} units, not words; pass a T-Free "
                         "checkpoint (--preset tfree-small) or no checkpoint")
    return units


def describe_words(units, data: bytes) -> dict:
    """The words of ``data`` with their trigrams, hashed ids and dictionary hits, and
    fertility (words per 100 bytes and per whitespace-separated word)."""
    if not data:
        raise UntokError("nothing to split: the text is empty")
    v, m, k, seed = units.hash
    words = split(data)
    rows = []
    for word in words:
        code = word_code(word, v, m, k, seed)
        padded = b" " + word.encode("utf-8", errors="surrogateescape") + b" "
        windows = dict.fromkeys(padded[i:i + 3] for i in range(len(padded) - 2))
        grams = [] if is_special(word) else [
            g.decode("utf-8", errors="backslashreplace") for g in windows]
        rows.append({"word": word, "special": is_special(word), "trigrams": grams,
                     "ids": sorted(set(code.ravel().tolist())),
                     "in_dictionary": word in units.index and
                     units.index[word] < units.dict_size})
    text_words = [r for r in rows if not r["special"]]
    return {"words": rows, "bytes": len(data), "count": len(words),
            "words_per_100_bytes": 100 * len(words) / len(data),
            "words_per_spaced_word": len(words) / max(len(data.split()), 1),
            "dictionary_size": units.dict_size,
            "dictionary_hits": sum(r["in_dictionary"] for r in text_words) /
            max(len(text_words), 1)}


def format_words(report: dict) -> str:
    lines = []
    for row in report["words"]:
        hit = "special" if row["special"] else ("dict" if row["in_dictionary"] else "spelled")
        lines.append(f"{row['word']!r:>16} {hit:8s} ids {len(row['ids']):3d}  "
                     f"{' '.join(row['trigrams'])}")
    lines.append(f"{report['count']:,} words for {report['bytes']:,} bytes: "
                 f"{report['words_per_100_bytes']:.1f} per 100 bytes, "
                 f"{report['words_per_spaced_word']:.2f} per space-separated word; "
                 f"{report['dictionary_hits']:.0%} of the words in the dictionary "
                 f"({report['dictionary_size']:,} words)")
    return "\n".join(lines)
