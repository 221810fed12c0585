"""A bigram byte model, registered from the tests alone: the proof that a new family needs
no edit anywhere in src/untok to train, evaluate, compress, save and load, and to run the
whole protocol suite (docs/architecture.md walks through it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from untok.config import ModelConfig
from untok.models import Family, register
from untok.models.base import next_unit_loss
from untok.models.registry import Capabilities
from untok.scores import Logits
from untok.units import ByteUnits, Units


@dataclass
class BigramState:
    position: int = 0  # nothing to remember: the next byte depends on the last one only


class BigramLM(nn.Module):
    """log P(next | last) is one learned row per byte value: ``table[ids]``."""

    def __init__(self, config: ModelConfig, units: Units) -> None:
        super().__init__()
        self.config, self.units = config, units
        self.table = nn.Embedding(units.vocab_size, units.vocab_size)

    def init_weights(self) -> None:
        nn.init.normal_(self.table.weight, std=0.02)

    def tie_weights(self) -> None:
        pass

    def forward(self, ids: torch.Tensor) -> Logits:
        return Logits(self.table(ids), self.units)  # (B, T, V)

    def loss(self, ids, targets, mask=None) -> torch.Tensor:
        return next_unit_loss(self.table(ids), targets, mask, pad=self.units.pad)

    def new_state(self, batch_size: int) -> BigramState:
        return BigramState()

    def step(self, state: BigramState, ids: torch.Tensor) -> tuple[Logits, BigramState]:
        state.position += ids.shape[1]
        return self(ids), state

    def num_params(self) -> int:
        return self.table.weight.numel()

    def flops_per_byte(self) -> float:
        return 6.0 * self.units.vocab_size  # a row read and its softmax, forward + backward


register(Family(
    name="bigram", model=BigramLM, units=lambda config: ByteUnits(config.vocab_size),
    capabilities=lambda config: Capabilities(can_compress=True),
    description="a bigram byte model (tests only)",
    examples={"tiny": {"context": 16}}))
