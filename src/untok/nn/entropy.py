"""Entropy of next-unit distributions: what the adaptive sampler and entropy patching
both decide by."""

from __future__ import annotations

import math

import torch


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of each distribution over the last axis, Float[..., K] -> Float[...]
    (``-inf`` logits, candidates that cannot occur, count as zero probability)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1) / math.log(2.0)
