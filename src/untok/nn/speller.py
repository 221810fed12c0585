"""A context-conditioned speller: P(a word's bytes | a context vector), byte by byte.

A GRU starts from the context vector and reads the bytes spelled so far; its logits are
*added* to the log-probabilities of a prior byte model (an n-gram of the same symbols), so
each step is one softmax over 256 bytes and END, a proper distribution, and with its
output layer initialised to zero the speller starts out as exactly the prior. Symbols:
0..255 the bytes, 256 END (also what the first step reads).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

END = 256
SYMBOLS = END + 1


class Speller(nn.Module):
    """Spells words from a context Float[N, dim]; ``hidden`` is the GRU's width."""

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.start = nn.Linear(dim, hidden)
        self.embed = nn.Embedding(SYMBOLS, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, SYMBOLS)

    @torch.no_grad()
    def init_parameters(self) -> None:
        self.gru.reset_parameters()
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def log_probs(self, context: torch.Tensor, previous: torch.Tensor, prior: torch.Tensor,
                  state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """log P(each next symbol), Float[N, L, 257], given the contexts Float[N, dim],
        the symbols before each step Long[N, L] (END first) and the prior's
        log-probabilities Float[N, L, 257]; and the GRU state after the last step
        (pass it back as ``state`` to go on)."""
        if state is None:
            state = torch.tanh(self.start(context))[None]  # (1, N, hidden)
        y, state = self.gru(self.embed(previous), state.contiguous())
        return F.log_softmax(prior + self.out(y).float(), dim=-1), state

    def log_prob(self, context: torch.Tensor, spellings: list[bytes],
                 prior: torch.Tensor) -> torch.Tensor:
        """log P of each word's bytes and its END (nats), Float[N]; ``prior`` as in
        :meth:`log_probs` for the padded symbols (L = the longest spelling + 1)."""
        length = max(len(s) for s in spellings) + 1
        symbols = torch.full((len(spellings), length + 1), END, dtype=torch.long)
        for row, spelling in enumerate(spellings):
            symbols[row, 1:len(spelling) + 1] = torch.tensor(list(spelling), dtype=torch.long)
        symbols = symbols.to(context.device)
        lp, _ = self.log_probs(context, symbols[:, :-1], prior)
        picked = lp.gather(2, symbols[:, 1:, None])[..., 0]  # (N, L)
        sizes = torch.tensor([len(s) + 1 for s in spellings], device=context.device)
        inside = torch.arange(length, device=context.device)[None, :] < sizes[:, None]
        return (picked * inside).sum(-1)
