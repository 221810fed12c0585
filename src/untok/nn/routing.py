"""Learned chunking (after H-Net, Hwang, Wang and Gu 2025): where patches start, learned
from the byte encoder's states, and how the global outputs spread back to the bytes.

- :class:`BoundaryRouter`: p_t = (1 - cos(W_q h_t, W_k h_{t-1})) / 2, p_0 = 1; a patch
  starts at t where p_t > 0.5. p_t reads h_t and h_{t-1} only, states of a causal encoder,
  so a boundary at t depends on bytes <= t.
- :func:`ratio_loss`: keeps the share of boundaries near 1 / target mean patch length.
- :func:`smooth_patches`: an exponential moving average over the global outputs of
  successive patches, weighted by each patch's boundary probability, so that a boundary
  the router was unsure of passes on more of the patch before it (and gradients reach p).
- :func:`confidence`: the straight-through factor max(p, 1 - p) whose forward value is 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from untok.nn.mlgru import linear_scan

SMOOTHING_FLOOR = 1e-4  # patch weights are clamped to [floor, 1 - floor]


class BoundaryRouter(nn.Module):
    """Boundary probabilities of encoder states; both projections start as the identity
    (so at init p_t measures how much h_t turned from h_{t-1})."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.eye_(self.q.weight)
        nn.init.eye_(self.k.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Float[B, T, D] -> p Float[B, T] (p_0 = 1)."""
        cos = F.cosine_similarity(self.q(h[:, 1:]), self.k(h[:, :-1]), dim=-1)
        p = ((1 - cos) / 2).clamp(0, 1)
        return torch.cat([p.new_ones(h.shape[0], 1), p], dim=1)

    def step(self, h: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        """p of the newest state Float[B, D] given the one before (None: the first)."""
        if previous is None:
            return h.new_ones(h.shape[0])
        cos = F.cosine_similarity(self.q(h), self.k(previous), dim=-1)
        return ((1 - cos) / 2).clamp(0, 1)


def ratio_loss(p: torch.Tensor, starts: torch.Tensor, target_len: float) -> torch.Tensor:
    """H-Net's ratio loss: with N the target mean patch length, F the share of positions
    that start a patch and G the mean boundary probability,
    N / (N - 1) * ((N - 1) F G + (1 - F)(1 - G)); 1 when F = G = 1 / N, its minimum
    for a given F. Gradients reach p through G only."""
    n = target_len
    share = starts.float().mean()
    mean_p = p.mean()
    return n / (n - 1) * ((n - 1) * share * mean_p + (1 - share) * (1 - mean_p))


def patch_weights(p: torch.Tensor, starts: torch.Tensor, num_patches: int) -> torch.Tensor:
    """Float[B, P]: the boundary probability at the first byte of each patch (1 for
    patches past a row's end, never read), clamped for :func:`smooth_patches`."""
    B, T = p.shape
    patch_ids = starts.long().cumsum(1) - 1
    weights = p.new_ones(B, num_patches)
    rows = torch.arange(B, device=p.device)[:, None].expand(B, T)
    weights = weights.index_put((rows[starts], patch_ids[starts]), p[starts])
    return weights.clamp(SMOOTHING_FLOOR, 1 - SMOOTHING_FLOOR)


def smooth_patches(g: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """ḡ_j = w_j g_j + (1 - w_j) ḡ_{j-1} over patches (ḡ_{-1} = 0): Float[B, P, G] with
    weights Float[B, P]."""
    w = weights[..., None].to(g.dtype)
    return linear_scan(1 - w, w * g)


def smooth_one(g: torch.Tensor, weight: torch.Tensor, previous: torch.Tensor | None
               ) -> torch.Tensor:
    """One step of :func:`smooth_patches`: Float[B, 1, G], weight Float[B] (unclamped)."""
    w = weight.clamp(SMOOTHING_FLOOR, 1 - SMOOTHING_FLOOR)[:, None, None].to(g.dtype)
    return w * g if previous is None else w * g + (1 - w) * previous


def confidence(p: torch.Tensor) -> torch.Tensor:
    """max(p, 1 - p) as a straight-through factor: 1 forward, d/dp of max(p, 1 - p)
    backward. Float[B, T] -> Float[B, T, 1]."""
    c = torch.maximum(p, 1 - p)
    return (1 + c - c.detach())[..., None]
