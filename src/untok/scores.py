"""Scores: what every model's ``forward`` and ``step`` return.

A model's output at each position is a distribution over its units. Evaluation,
generation, compression and training read it through this one interface and never ask
which family produced it (see docs/architecture.md):

- ``log_prob(targets)``: log P(target) in nats at every position, Float like ``targets``
  (0 where the target is PAD);
- ``choose(pick)``: the next unit at every position, where ``pick(logits Float[N, K]) ->
  Long[N]`` is the sampler's choice among K options (a factorized output calls it once per
  level); only text units and EOS are ever chosen;
- ``byte_logits``: the next-*byte* categorical logits Float[..., 256] that compression
  codes with, or ``None`` for units that are not bytes;
- indexing slices positions (``scores[:, -1]``), ``shape`` is the positions' shape.

:class:`Logits` wraps a plain logits tensor (every model with a softmax head); a family
with another output (e.g. the factorized code-point head) subclasses :class:`Scores`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from untok.units import Units

Pick = Callable[[torch.Tensor], torch.Tensor]


class Scores:
    """The interface; see the module docstring."""

    byte_logits: torch.Tensor | None = None

    @property
    def shape(self) -> torch.Size:
        raise NotImplementedError

    def __getitem__(self, index) -> Scores:
        raise NotImplementedError

    def log_prob(self, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def choose(self, pick: Pick) -> torch.Tensor:
        raise NotImplementedError

    def greedy(self) -> torch.Tensor:
        """The most likely unit at every position (Long like ``shape``)."""
        return self.choose(lambda logits: logits.argmax(-1))


class Logits(Scores):
    """Scores from next-unit logits Float[..., V] over the ids of ``units``."""

    def __init__(self, logits: torch.Tensor, units: Units) -> None:
        self.logits = logits
        self.units = units

    @property
    def shape(self) -> torch.Size:
        return self.logits.shape[:-1]

    def __getitem__(self, index) -> Logits:
        return Logits(self.logits[index], self.units)

    @property
    def byte_logits(self) -> torch.Tensor | None:
        return self.logits[..., :256] if self.units.identity else None

    def log_prob(self, targets: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(self.logits.float(), dim=-1)
        safe = targets.clamp(max=logp.shape[-1] - 1)
        picked = logp.gather(-1, safe[..., None])[..., 0]
        return picked.masked_fill(targets == self.units.pad, 0.0)

    def greedy(self) -> torch.Tensor:
        return self.logits.argmax(-1)  # over every id: a special counts as a miss

    def choose(self, pick: Pick) -> torch.Tensor:
        units = self.units
        logits = self.logits.float().reshape(-1, self.logits.shape[-1]).clone()
        ids = torch.arange(logits.shape[-1], device=logits.device)
        never = (ids >= units.num_content) & (ids != units.eos)  # BOS, PAD, unused ids
        logits[:, never] = -torch.inf
        return pick(logits).reshape(self.shape)
