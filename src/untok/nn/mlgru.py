"""The MatMul-free token mixer (MLGRU) and channel mixer (GLU), and their block (see
docs/architecture.md, backbones).

Per step, with every projection a :class:`~untok.nn.bitlinear.BitLinear`::

    f = lower + (1 - lower) * sigmoid(W_f x)      forget gate, bounded below per layer
    c = silu(W_c x) * (1 - f)
    h = f * h_prev + c
    o = W_o(RMSNorm(W_g x) * silu(h))

Training runs the recurrence ``h_t = f_t h_{t-1} + c_t`` for all t at once with a parallel
(Hillis-Steele) scan: log2(T) vectorised steps, products of gates only, so nothing
overflows. Generation carries ``h`` (one vector per layer): constant memory and time per
byte, however long the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from untok.nn.bitlinear import BitLinear


def linear_scan(f: torch.Tensor, c: torch.Tensor, h0: torch.Tensor | None = None
                ) -> torch.Tensor:
    """All h_t of ``h_t = f_t * h_{t-1} + c_t`` (f, c: Float[B, T, D]; h0: Float[B, D])."""
    a, b = f, c
    if h0 is not None:
        b = torch.cat([(f[:, :1] * h0[:, None]) + c[:, :1], c[:, 1:]], dim=1)
    T, shift = f.shape[1], 1
    while shift < T:  # compose each prefix with the one ``shift`` steps before it
        b = torch.cat([b[:, :shift], b[:, shift:] + a[:, shift:] * b[:, :-shift]], dim=1)
        a = torch.cat([a[:, :shift], a[:, shift:] * a[:, :-shift]], dim=1)
        shift *= 2
    return b


def forget_lower_bound(layer: int, num_layers: int) -> float:
    """The forget gate's floor rises with depth: 0 in the first layer, towards 1 in the
    last, so deeper layers keep longer memories."""
    return layer / num_layers


class MLGRU(nn.Module):
    """MatMul-free linear GRU token mixer."""

    def __init__(self, dim: int, lower_bound: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.lower_bound = lower_bound
        self.fcg = BitLinear(dim, 3 * dim, eps)  # forget, candidate and output gate
        self.gate_norm = nn.RMSNorm(dim, eps=eps)
        self.out = BitLinear(dim, dim, eps)

    def _gates(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f, c, g = self.fcg(x).chunk(3, dim=-1)
        f = self.lower_bound + (1 - self.lower_bound) * torch.sigmoid(f)
        return f, F.silu(c) * (1 - f), self.gate_norm(g)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: Float[B, T, D] -> (outputs Float[B, T, D], last state Float[B, D])."""
        f, c, g = self._gates(x)
        h = linear_scan(f.float(), c.float(), None if h0 is None else h0.float()).to(x.dtype)
        return self.out(g * F.silu(h)), h[:, -1]

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step: x Float[B, 1, D], state Float[B, D] -> (output, new state)."""
        f, c, g = self._gates(x)
        h = f[:, 0] * h + c[:, 0]
        return self.out(g * F.silu(h[:, None])), h


class BitGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))`` with BitLinear projections."""

    def __init__(self, dim: int, hidden: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.gate_up = BitLinear(dim, 2 * hidden, eps)
        self.down = BitLinear(hidden, dim, eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class MMFreeBlock(nn.Module):
    """``x += mlgru(norm(x)); x += glu(norm(x))``."""

    def __init__(self, dim: int, hidden: int, lower_bound: float, eps: float) -> None:
        super().__init__()
        self.mixer_norm = nn.RMSNorm(dim, eps=eps)
        self.mixer = MLGRU(dim, lower_bound, eps)
        self.glu_norm = nn.RMSNorm(dim, eps=eps)
        self.glu = BitGLU(dim, hidden, eps)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        y, h = self.mixer(self.mixer_norm(x), h0)
        x = x + y
        return x + self.glu(self.glu_norm(x)), h

    def step(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, h = self.mixer.step(self.mixer_norm(x), h)
        x = x + y
        return x + self.glu(self.glu_norm(x)), h

    def residual_outputs(self) -> list[nn.Linear]:
        return [self.mixer.out, self.glu.down]
