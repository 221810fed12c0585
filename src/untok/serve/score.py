"""``POST /v1/untok/score``: how surprised a model is by each unit of a text.

For every unit of the text: its bytes, the bits the model spends on it given what comes
before, the entropy of the model's next-unit distribution there and its most likely
alternatives (families whose scores are plain logits), and for a BLT the bytes where its
patcher starts a patch. Long texts are scored in overlapping windows of the model's
context, every unit with at least half a context of history once the text is that long.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from untok.data.loader import eval_windows
from untok.models import capabilities
from untok.nn.entropy import entropy_bits
from untok.patch_report import describe_patches
from untok.scores import Logits
from untok.serve.responses import token_text

MAX_SCORED_BYTES = 65536


@torch.inference_mode()
def score_text(model: nn.Module, data: bytes, top_k: int = 5) -> dict[str, Any]:
    """Per-unit bits, entropy and alternatives of ``data`` (see the module docstring)."""
    units, context = model.units, model.config.context
    device = next(model.parameters()).device
    ids = np.array([units.bos, *units.encode(data).tolist()], dtype=np.int64)
    bits = np.zeros(len(ids))
    entropy = np.full(len(ids), np.nan)
    top: list[list] = [[] for _ in ids]
    for start, first in eval_windows(len(ids), context, max(context // 2, 1)):
        window = torch.from_numpy(ids[start:start + context + 1]).to(device)
        out = model(window[None, :-1])
        positions = np.arange(start + 1, start + len(window))  # the targets' positions
        keep = positions >= first
        bits[positions[keep]] = -out.log_prob(window[None, 1:])[0].cpu().numpy()[keep] / \
            math.log(2)
        if isinstance(out, Logits):
            logits = out.logits[0, :, :units.num_content].float()
            entropy[positions[keep]] = entropy_bits(logits).cpu().numpy()[keep]
            values, choices = F.log_softmax(logits, -1).topk(min(top_k, logits.shape[-1]))
            for p, v, c in zip(positions[keep], values[keep].tolist(),
                               choices[keep].tolist(), strict=True):
                top[p] = [[token_text(units.decode([i])), lp] for i, lp in zip(c, v, strict=True)]
    sizes = units.byte_lengths(ids)
    offsets = np.cumsum(sizes) - sizes
    pieces = [data[offsets[i]:offsets[i] + sizes[i]] for i in range(len(ids))]
    scored = [{"offset": int(offsets[i]), "text": token_text(pieces[i]),
               "bytes": list(pieces[i]), "bits": float(bits[i]),
               "entropy": None if np.isnan(entropy[i]) else float(entropy[i]),
               "top": top[i]} for i in range(1, len(ids))]
    patches = describe_patches(model.patcher, data)["starts"] \
        if capabilities(model).patches and data else None
    return {"object": "untok.score", "unit": units.name, "bytes": len(data),
            "bits_per_byte": float(bits[1:].sum() / max(len(data), 1)),
            "units": scored, "patch_starts": patches}
