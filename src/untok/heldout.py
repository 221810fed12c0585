"""Evaluation that stays held out: the split a checkpoint was trained with.

A checkpoint records the SHA-256 of its training data and the split rule it trained with.
Evaluating it on that same data uses that rule, whatever split the data would get when
ingested again (a text file ingested with other options gets another cached store with
another split). Evaluating it on other data checks a sample of the evaluated bytes against
the run's training split, when that is on this machine, and reports the share found there.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from untok.data.ingest import open_data
from untok.data.store import ByteStore
from untok.errors import UntokError

WINDOW = 64  # bytes of each sampled window
SAMPLES = 200
MAX_SEARCHED = 64 << 20  # training splits larger than this are not searched


def open_eval_data(path: str | Path, train_state: dict[str, Any] | None, split: str, *,
                   progress: bool = True) -> tuple[ByteStore, dict[str, Any]]:
    """The store to score a checkpoint on, and what is known of its held-out status:
    ``{"split_rule": "run" | "data", "training_data": bool, "overlap": float | None,
    "note": str | None}``."""
    store = open_data(path, progress=progress)
    status: dict[str, Any] = {"split_rule": "data", "training_data": False, "overlap": None,
                              "note": None}
    if not train_state:
        return store, status
    trained_on = train_state.get("data", {})
    if trained_on.get("sha256") == store.meta["sha256"]:
        status["training_data"] = True
        rule = trained_on.get("split") or _saved_rule(train_state)
        if rule is not None:
            if rule != store.meta["split"]:
                store = store.with_split(rule)
            status["split_rule"] = "run"
            status["note"] = "this is the run's own training data: scored with the run's " \
                             f"split ({_describe(rule)})"
        else:
            status["note"] = "warning: this is the run's training data, but the checkpoint " \
                             "does not say how it was split: the val bytes may be training bytes"
        if split != "val":
            status["note"] = f"note: the {split} split holds bytes this run trained on"
        return store, status
    status["overlap"] = _overlap(store, split, train_state)
    if status["overlap"]:
        status["note"] = f"warning: {status['overlap']:.0%} of {SAMPLES} sampled " \
                         f"{WINDOW}-byte windows of this {split} split occur in the run's " \
                         "training split: these bytes are not all held out"
    return store, status


def _training_store(train_state: dict[str, Any]) -> ByteStore | None:
    """The run's training data opened with its saved options, when it is still on this
    machine (as a store or already ingested: nothing is ingested here) and unchanged."""
    data = train_state.get("run_config", {}).get("data", {})
    with contextlib.suppress(UntokError, OSError, KeyError):
        store = open_data(data["path"], val_fraction=data.get("val_fraction", 0.1),
                          val_bytes=data.get("val_bytes"), progress=False,
                          ingest_missing=False)
        if store is not None and store.meta["sha256"] == train_state["data"]["sha256"]:
            return store
    return None


def _saved_rule(train_state: dict[str, Any]) -> dict[str, Any] | None:
    """The split of a run whose checkpoint predates recorded split rules."""
    store = _training_store(train_state)
    return None if store is None else store.meta["split"]


def _describe(rule: dict[str, Any]) -> str:
    if rule["mode"] == "tail":
        return f"val = the last {rule['val_bytes']:,} bytes"
    if rule["mode"] == "tails":
        return f"val = the last {rule['val_fraction']:.0%} of every document"
    return f"val = {rule['val_fraction']:.0%} of the documents"


def _overlap(store: ByteStore, split: str, train_state: dict[str, Any]) -> float | None:
    """Share of sampled windows of ``split`` found verbatim in the run's training split;
    None when that split is not on this machine or too large to search."""
    trained = _training_store(train_state)
    if trained is None:
        return None
    rule = train_state["data"].get("split")
    trained = trained.with_split(rule) if rule else trained
    if trained.segments("train").num_bytes > MAX_SEARCHED:
        return None
    haystack = trained.split_data("train", b"\0")  # no match across two pieces
    evaluated = store.split_data(split, b"\0")
    if len(evaluated) < WINDOW:
        return None
    starts = np.linspace(0, len(evaluated) - WINDOW, SAMPLES).astype(np.int64)
    found = sum(haystack.find(evaluated[s:s + WINDOW]) >= 0 for s in starts)
    return found / len(starts)
