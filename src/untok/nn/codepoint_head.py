"""The output of a code-point model: a factorized distribution over 1.1M characters.

A 1.1M-row softmax would dwarf the model, so a character id is split into three levels
and predicted one level at a time (see docs/options.md)::

    id = plane << 16 | block << 8 | char
    P(id) = P(plane) P(block | plane) P(char | plane, block)

``plane`` (0..16, and 17 for the specials) is scored from the hidden state directly; the
256-way ``block`` within the plane and the 256-way ``char`` within the block each go
through a small MLP whose input adds a learned vector of the prefix chosen so far. Each
level is a proper softmax, so the product is a proper distribution over every id, and the
exact probability of any character costs three small softmaxes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from untok.scores import Pick, Scores
from untok.units import CP_BOS, CP_EOS, CP_PAD, ESCAPE_FIRST

PLANES = 24  # 17 Unicode planes + the specials' plane (17), rounded up to a multiple of 8
BLOCKS = 18 << 8  # (plane, block) prefixes id >> 8 of planes 0..17


class CodepointHead(nn.Module):
    """``bias``: each level's output has a bias (the flat family's head has none, so its
    checkpoints keep their keys); a bias learns the constant part of each level (plane 0,
    block 0 in mostly-ASCII text) at once."""

    def __init__(self, dim: int, bias: bool = False) -> None:
        super().__init__()
        self.plane = nn.Linear(dim, PLANES, bias=bias)
        self.plane_vector = nn.Embedding(PLANES, dim)
        self.block_in = nn.Linear(dim, dim, bias=False)
        self.block = nn.Linear(dim, 256, bias=bias)
        self.block_vector = nn.Embedding(BLOCKS, dim)
        self.char_in = nn.Linear(dim, dim, bias=False)
        self.char = nn.Linear(dim, 256, bias=bias)

    @torch.no_grad()
    def init_parameters(self) -> None:
        """The inner layers of the block and char MLPs at fan-in scale (std 1/sqrt(D)),
        not the models' 0.02: two small layers in a row start every level near uniform
        and keep it there (a 1.5-minute enwik8 run sat at the unigram's ~5 bits per
        character for 100 steps)."""
        for layer in (self.block_in, self.char_in):
            nn.init.normal_(layer.weight, std=layer.in_features ** -0.5)

    def plane_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Float[..., D] -> Float[..., PLANES]; planes that do not exist get -inf."""
        logits = self.plane(h).float()
        return logits.masked_fill(torch.arange(PLANES, device=h.device) > CP_BOS >> 16,
                                  -torch.inf)

    def block_logits(self, h: torch.Tensor, plane: torch.Tensor) -> torch.Tensor:
        """Float[..., D], Long[...] -> Float[..., 256]: the block within ``plane``."""
        return self.block(F.silu(self.block_in(h) + self.plane_vector(plane))).float()

    def char_logits(self, h: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Float[..., D], Long[...] (``id >> 8``) -> Float[..., 256]: the char in the block."""
        return self.char(F.silu(self.char_in(h) + self.block_vector(prefix))).float()

    def log_prob(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log P(targets) (nats, Float[...]) under the distribution at ``h`` (Float[..., D]);
        PAD targets get 0."""
        ids = targets.masked_fill(targets == CP_PAD, 0)
        levels = ((self.plane_logits(h), ids >> 16),
                  (self.block_logits(h, ids >> 16), (ids >> 8) & 255),
                  (self.char_logits(h, ids >> 8), ids & 255))
        total = sum(F.log_softmax(logits, -1).gather(-1, index[..., None])[..., 0]
                    for logits, index in levels)
        return total.masked_fill(targets == CP_PAD, 0.0)

    def loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (nats per character) over targets that are not PAD."""
        keep = targets != CP_PAD
        return -(self.log_prob(h, targets) * keep).sum() / keep.sum().clamp(min=1)

    def choose(self, h: torch.Tensor, pick) -> torch.Tensor:
        """Pick a character level by level: ``pick(logits Float[N, K]) -> Long[N]`` chooses
        the plane, then the block, then the char; ids that no text holds (the other
        specials, unpaired surrogates) are excluded. Float[N, D] -> Long[N]."""
        plane = pick(self.plane_logits(h))
        block_logits = self.block_logits(h, plane)
        specials = plane == CP_BOS >> 16  # the specials' plane: only block 0 exists
        block_logits[specials, 1:] = -torch.inf
        surrogate = torch.zeros(256, dtype=torch.bool, device=h.device)
        surrogate[0xD8:0xE0] = True
        surrogate[ESCAPE_FIRST >> 8] = False  # the escape ids' block stays
        block_logits[(plane == 0)[:, None] & surrogate] = -torch.inf
        block = pick(block_logits)
        prefix = plane << 8 | block
        char_logits = self.char_logits(h, prefix)
        chars = torch.arange(256, device=h.device)
        specials = (prefix == CP_EOS >> 8)[:, None] & (chars != CP_EOS & 255)
        char_logits[specials] = -torch.inf  # of the specials only EOS may be emitted
        escape = (prefix == ESCAPE_FIRST >> 8)[:, None] & (chars < (ESCAPE_FIRST & 255))
        char_logits[escape] = -torch.inf  # block DC: only the escapes DC80..DCFF
        return prefix << 8 | pick(char_logits)


class CodepointScores(Scores):
    """A code-point model's :class:`~untok.scores.Scores`: the final hidden states
    (Float[B, T, D]) and the head that turns any of them into a distribution (no byte
    distribution: ``byte_logits`` is None)."""

    def __init__(self, hidden: torch.Tensor, head: CodepointHead) -> None:
        self.hidden = hidden
        self.head = head

    def __getitem__(self, index) -> CodepointScores:
        return CodepointScores(self.hidden[index], self.head)

    @property
    def shape(self) -> torch.Size:
        return self.hidden.shape[:-1]

    def log_prob(self, targets: torch.Tensor) -> torch.Tensor:
        """log P(target) in nats at every position (Float like ``targets``)."""
        return self.head.log_prob(self.hidden, targets)

    def choose(self, pick: Pick) -> torch.Tensor:
        """Long[...] characters picked level by level (see :meth:`CodepointHead.choose`)."""
        flat = self.hidden.reshape(-1, self.hidden.shape[-1])
        return self.head.choose(flat, pick).reshape(self.shape)
