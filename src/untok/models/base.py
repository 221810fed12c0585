"""The model protocol that every family satisfies, and helpers families share."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from untok.scores import Scores
from untok.units import PAD, Units


@runtime_checkable
class ByteLM(Protocol):
    """A causal model over ``units`` (see docs/architecture.md).

    ``step`` over a prompt and then one unit at a time gives the same scores as ``forward``
    over the whole sequence (to float tolerance) while the sequence fits the context; no
    score at position t depends on ids after t.
    """

    config: Any
    units: Units

    def forward(self, ids: torch.Tensor) -> Scores:
        """Long[B, T] -> scores of the next unit at every position (shape (B, T))."""
        ...

    def loss(self, ids: torch.Tensor, targets: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy in nats over targets that are not PAD (and where ``mask``)."""
        ...

    def new_state(self, batch_size: int) -> Any:
        """An empty decoding state (caches) for ``batch_size`` sequences."""
        ...

    def step(self, state: Any, ids: torch.Tensor) -> tuple[Scores, Any]:
        """Feed Long[B, n] new units; return their scores (shape (B, n)) and the state."""
        ...

    def num_params(self) -> int: ...

    def flops_per_byte(self) -> float:
        """Training FLOPs (forward + backward) per unit, for MFU."""
        ...


def next_unit_loss(logits: torch.Tensor, targets: torch.Tensor,
                   mask: torch.Tensor | None = None, pad: int = PAD) -> torch.Tensor:
    """Mean cross-entropy (nats) of logits Float[B, T, V] against targets Long[B, T],
    skipping ``pad`` targets and those where ``mask`` is False."""
    if mask is not None:
        targets = targets.masked_fill(~mask, pad)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=pad)


@torch.no_grad()
def init_standard(model: nn.Module, std: float = 0.02) -> None:
    """Normal(0, std) for every Linear and Embedding weight, zeros for biases, ones for
    every RMSNorm; modules with other parameters initialise them in ``init_parameters()``."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)
    for module in model.modules():  # after the defaults, so that they may override them
        if hasattr(module, "init_parameters"):
            module.init_parameters()


@torch.no_grad()
def init_residuals(blocks: Iterable[nn.Module], depth: int, std: float = 0.02) -> None:
    """Scale down the projections that write into the residual stream of a ``depth``-deep
    stack: Normal(0, std / sqrt(2 depth)), so the stream's variance does not grow with
    depth."""
    for block in blocks:
        for linear in block.residual_outputs():
            nn.init.normal_(linear.weight, std=std / math.sqrt(2 * max(depth, 1)))
