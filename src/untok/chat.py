"""The byte-level chat template: conversations as one unit stream.

A conversation is ``BOS``, then each message as its role marker followed by its content
(UTF-8 bytes as units), and an assistant message ends with ``EOS``:

    BOS SYSTEM "You are terse." USER "Hi" ASSISTANT "Hello." EOS USER "Bye" ASSISTANT

The markers are special ids above the text units (``PAD + 1 ..``, unused ids of every unit
space), so no text can forge them: a message that contains the characters "ASSISTANT"
is just those bytes. Prompting for a reply ends with the ``ASSISTANT`` marker; the model
ends its turn with ``EOS``.

In a byte store a conversation is its bytes plus one *code* per byte (``NAME.chat``): the
low bits say what the position holds (:data:`TEXT`, :data:`END` for the ``EOS`` of a turn,
or a role marker; the byte in ``NAME.bin`` is then 0) and bit :data:`TARGET` whether it
is a training target. By default only the assistant's bytes and the ``EOS`` that ends its
turn are targets (``loss="all"``: every position); an assistant message with ``"weight":
0`` (the OpenAI fine-tuning field) is context only. Segment files spell the mask out:
``[{"content": "...", "has_loss": true}, ...]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from untok.errors import UntokError

ROLES = ("system", "user", "assistant")
TEXT = 0  # code of a text byte
END = 1  # code of the EOS that ends an assistant turn
TARGET = 0x80  # code bit: the position is a training target
KIND = 0x7F  # code bits: what the position holds
LOSS_MODES = ("assistant", "all")


def role_id(units: Any, role: str) -> int:
    """The marker id of ``role`` in ``units``' id space (the ids after BOS/EOS/PAD)."""
    return units.pad + 1 + ROLES.index(role)


def role_code(role: str) -> int:
    """The code of ``role``'s marker (``END + 1 ..``, so that ``pad + code - 1`` is its id)."""
    return END + 1 + ROLES.index(role)


def marker_ids(kinds: np.ndarray, units: Any) -> np.ndarray:
    """Ids of non-text codes' kinds (int64, same shape): ``EOS`` or a role marker."""
    kinds = np.asarray(kinds, dtype=np.int64)
    return np.where(kinds == END, units.eos, units.pad + kinds - 1)


def message_text(i: int, message: Any) -> tuple[str, str]:
    """(role, content) of ``messages[i]``; a one-line :class:`UntokError` when the role is
    unknown or the content is not text (the content-parts form keeps its text parts)."""
    if not isinstance(message, dict):
        raise UntokError(f"messages[{i}] must be an object with role and content")
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise UntokError(f"messages[{i}].role must be one of {', '.join(ROLES)}, "
                         f"not {role!r}")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise UntokError(f"messages[{i}].content: only text parts are supported")
        content = "".join(p.get("text", "") for p in content)
    if not isinstance(content, str):
        raise UntokError(f"messages[{i}].content must be a string")
    return role, content


def encode_conversation(messages: Sequence[dict], loss: str = "assistant"
                        ) -> tuple[bytes, bytes]:
    """(bytes, codes) of ``messages`` under the template, without the leading ``BOS``
    (the store's stream gives every document one); see the module docstring."""
    if loss not in LOSS_MODES:
        raise UntokError(f"unknown chat loss '{loss}'; use one of {', '.join(LOSS_MODES)}")
    if not isinstance(messages, list) or not messages:
        raise UntokError("messages must be a non-empty list")
    data, codes = bytearray(), bytearray()
    everything = TARGET if loss == "all" else 0
    for i, message in enumerate(messages):
        role, content = message_text(i, message)
        text = content.encode("utf-8", errors="surrogatepass")
        spoken = TARGET if role == "assistant" and message.get("weight", 1) != 0 else 0
        target = everything | spoken
        data.append(0)
        codes.append(role_code(role) | everything)
        data.extend(text)
        codes.extend(bytes([TEXT | target]) * len(text))
        if role == "assistant":
            data.append(0)
            codes.append(END | target)
    return bytes(data), bytes(codes)


def encode_segments(segments: Any) -> tuple[bytes, bytes]:
    """(bytes, codes) of a segment list ``[{"content": str, "has_loss": bool}, ...]``."""
    if not isinstance(segments, list) or not segments:
        raise UntokError("a segment line must be a non-empty list of "
                         '{"content": ..., "has_loss": ...} objects')
    data, codes = bytearray(), bytearray()
    for i, segment in enumerate(segments):
        if not isinstance(segment, dict) or not isinstance(segment.get("content"), str) \
                or not isinstance(segment.get("has_loss", False), bool):
            raise UntokError(f"segment {i} must be an object with a string 'content' and a "
                             "boolean 'has_loss'")
        text = segment["content"].encode("utf-8", errors="surrogatepass")
        data.extend(text)
        codes.extend(bytes([TEXT | (TARGET if segment.get("has_loss") else 0)]) * len(text))
    return bytes(data), bytes(codes)


def encode_coded(data: bytes, codes: bytes | np.ndarray, units: Any
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64[N], targets bool[N]) of coded bytes in ``units``: each run of text
    bytes with the same code encoded as text, each marker code one id."""
    codes = np.frombuffer(codes, dtype=np.uint8) if isinstance(codes, bytes | bytearray) \
        else np.asarray(codes, dtype=np.uint8)
    if units.identity:  # bytes are ids: substitute the markers in place
        ids = np.frombuffer(data, dtype=np.uint8).astype(np.int64)
        kinds = codes & KIND
        return np.where(kinds != TEXT, marker_ids(kinds, units), ids), (codes & TARGET) > 0
    cuts = np.flatnonzero((codes[1:] != codes[:-1]) | ((codes[1:] & KIND) != TEXT)) + 1
    ids, targets = [], []
    for start, stop in zip(np.r_[0, cuts], np.r_[cuts, len(codes)], strict=True):
        code = int(codes[start])
        run = marker_ids(np.array([code & KIND]), units) if code & KIND != TEXT else \
            units.encode(bytes(data[start:stop]))
        ids.append(run)
        targets.append(np.full(len(run), bool(code & TARGET)))
    if not ids:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    return np.concatenate(ids).astype(np.int64), np.concatenate(targets)


def render(messages: Sequence[dict], units: Any, reply: bool = True) -> list[int]:
    """Unit ids of ``messages`` (dicts with ``role`` and ``content``) under the template;
    ``reply`` appends the ASSISTANT marker that asks the model for the next turn.
    Unknown roles or non-text content are a one-line :class:`UntokError`."""
    ids, _ = encode_coded(*encode_conversation(list(messages)), units) if messages else \
        (np.zeros(0, dtype=np.int64), None)
    return [units.bos, *ids.tolist(), *([role_id(units, "assistant")] if reply else [])]
