"""What a byte store holds: counts, UTF-8 validity, scripts, split sizes."""

from __future__ import annotations

import codecs
import unicodedata
from collections import Counter
from typing import Any

import numpy as np

from untok.data.store import ByteStore

SAMPLE_BYTES = 16 << 20
_invalid = [0]


def _skip_invalid(exc: UnicodeDecodeError) -> tuple[str, int]:
    _invalid[0] += exc.end - exc.start
    return "", exc.end


codecs.register_error("untok-count-invalid", _skip_invalid)


def _script(char: str) -> str:
    if char.isspace() or char.isdigit() or unicodedata.category(char)[0] in "PSZ":
        return "common"
    name = unicodedata.name(char, "")
    return name.split(" ")[0].lower() if name else "other"


def describe(store: ByteStore, sample_bytes: int = SAMPLE_BYTES) -> dict[str, Any]:
    """Summary of ``store``; UTF-8 validity and scripts come from whole documents spread
    over the corpus, up to ``sample_bytes`` (exact for stores that small)."""
    lengths = store.lengths
    order = np.linspace(0, store.num_docs - 1, num=min(store.num_docs, 4096)).astype(int)
    seen = 0
    _invalid[0] = 0
    chars: Counter[str] = Counter()
    for i in dict.fromkeys(order.tolist()):
        if seen >= sample_bytes:
            break
        start, length = int(store.index[i, 0]), int(min(lengths[i], sample_bytes - seen))
        data = store.data[start:start + length]
        if store.codes is not None:  # markers hold a placeholder byte: leave them out
            data = data[store.codes[start:start + length] & 0x7F == 0]
        data = bytes(data)
        seen += len(data)
        chars.update(data.decode("utf-8", errors="untok-count-invalid"))
    valid = seen - _invalid[0]
    scripts: Counter[str] = Counter()
    for char, count in chars.items():
        scripts[_script(char)] += count
    letters = sum(c for s, c in scripts.items() if s != "common") or 1
    top = [{"script": s, "share": c / letters} for s, c in scripts.most_common()
           if s != "common"][:8]
    split = store.split_bytes()
    return {"name": store.name, "documents": store.num_docs, "bytes": store.num_bytes,
            "mean_document_bytes": float(lengths.mean()) if len(lengths) else 0.0,
            "max_document_bytes": int(lengths.max()) if len(lengths) else 0,
            "valid_utf8_share": valid / seen if seen else 1.0, "sampled_bytes": seen,
            "top_scripts": top, "split": store.meta["split"],
            "train_bytes": split["train"], "val_bytes": split["val"],
            "sources": store.meta.get("sources", []), "chat": _chat_summary(store)}


def _chat_summary(store: ByteStore) -> dict[str, Any] | None:
    """Markers and training targets of a store with chat codes (None for plain text)."""
    if store.codes is None:
        return None
    from untok.chat import KIND, TARGET, TEXT

    kinds = np.bincount(store.codes & KIND, minlength=8)
    targets = int(np.count_nonzero(store.codes & TARGET))
    return {"markers": int(kinds.sum() - kinds[TEXT]), "target_positions": targets,
            "target_share": targets / max(store.num_bytes, 1)}
