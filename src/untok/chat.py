"""The byte-level chat template: conversations as one unit stream.

A conversation is ``BOS``, then each message as its role marker followed by its content
(UTF-8 bytes as units), and an assistant message ends with ``EOS``:

    BOS SYSTEM "You are terse." USER "Hi" ASSISTANT "Hello." EOS USER "Bye" ASSISTANT

The markers are special ids above the text units (``BOS + 3 ..``, unused ids of both unit
spaces), so no text can forge them: a message that contains the characters "ASSISTANT"
is just those bytes. Prompting for a reply ends with the ``ASSISTANT`` marker; the model
ends its turn with ``EOS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from untok.errors import UntokError

ROLES = ("system", "user", "assistant")


def role_id(units: Any, role: str) -> int:
    """The marker id of ``role`` in ``units``' id space (the ids after BOS/EOS/PAD)."""
    return units.pad + 1 + ROLES.index(role)


def render(messages: Sequence[dict], units: Any, reply: bool = True) -> list[int]:
    """Unit ids of ``messages`` (dicts with ``role`` and ``content``) under the template;
    ``reply`` appends the ASSISTANT marker that asks the model for the next turn.
    Unknown roles or non-text content are a one-line :class:`UntokError`."""
    ids = [units.bos]
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise UntokError(f"messages[{i}].role must be one of {', '.join(ROLES)}, "
                             f"not {role!r}")
        if isinstance(content, list):  # the content-parts form: text parts only
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise UntokError(f"messages[{i}].content: only text parts are supported")
            content = "".join(p.get("text", "") for p in content)
        if not isinstance(content, str):
            raise UntokError(f"messages[{i}].content must be a string")
        ids.append(role_id(units, role))
        ids.extend(units.encode(content.encode("utf-8")).tolist())
        if role == "assistant":
            ids.append(units.eos)
    if reply:
        ids.append(role_id(units, "assistant"))
    return ids
