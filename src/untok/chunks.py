"""Characters as fixed-width bytes, grouped into chunks (the tokun layout).

A character (a code-point id of :class:`untok.units.CodepointUnits`, so invalid UTF-8
bytes are the escape code points U+DC80..U+DCFF and every byte string round-trips) is
written as its UTF-32-BE bytes: ``width = 4``, or ``width = 3`` dropping the top byte,
which is zero for every code point (<= 0x10FFFF) and for the specials BOS/EOS/PAD just
above them. ``chunk`` groups G consecutive characters, padding the last group.
"""

from __future__ import annotations

import torch

WIDTHS = (3, 4)


def char_bytes(ids: torch.Tensor, width: int = 3) -> torch.Tensor:
    """Long[...] code points -> Long[..., width] big-endian bytes."""
    if width not in WIDTHS:
        raise ValueError(f"a character is 3 or 4 bytes wide, not {width}")
    shifts = torch.arange(8 * (width - 1), -1, -8, device=ids.device)
    return (ids[..., None] >> shifts) & 0xFF


def char_ids(data: torch.Tensor) -> torch.Tensor:
    """Long[..., width] big-endian bytes -> Long[...] code points."""
    width = data.shape[-1]
    shifts = torch.arange(8 * (width - 1), -1, -8, device=data.device)
    return (data << shifts).sum(-1)


def chunk(ids: torch.Tensor, size: int, pad: int) -> torch.Tensor:
    """Long[..., T] -> Long[..., ceil(T / size), size], the last chunk padded with ``pad``."""
    missing = -ids.shape[-1] % size
    if missing:
        ids = torch.cat([ids, ids.new_full((*ids.shape[:-1], missing), pad)], -1)
    return ids.unflatten(-1, (-1, size))
