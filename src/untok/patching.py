"""Patchers: causal rules that cut a byte sequence into patches (see docs/architecture.md, BLT).

A patcher marks patch starts. Whether a patch starts at t depends on units <= t only
(entropy patching: on the entropy model's prediction of unit t, made at t - 1), so patch
boundaries never reveal the future. Every patcher works in two modes that agree exactly:
``starts`` over a whole window (training) and ``step`` one unit at a time (generation).

Every rule has the same shape: a *candidate* start where the rule fires, plus a forced start
wherever ``max_len`` units have passed since the last start. Position 0 always starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from untok.config import PatchingConfig
from untok.errors import ConfigError
from untok.nn.entropy import entropy_bits

_WORD = torch.zeros(512, dtype=torch.bool)  # ids of units that continue a word
_WORD[ord("0"):ord("9") + 1] = True
_WORD[ord("A"):ord("Z") + 1] = True
_WORD[ord("a"):ord("z") + 1] = True
_WORD[0x80:0x100] = True  # every byte of a multi-byte UTF-8 character: letters elsewhere
NEWLINE = ord("\n")


def apply_max_len(candidates: torch.Tensor, max_len: int) -> torch.Tensor:
    """Bool[B, T] candidate starts -> starts, with position 0 and a start every ``max_len``
    units after the last candidate (a vectorised form of the sequential rule)."""
    T = candidates.shape[1]
    index = torch.arange(T, device=candidates.device).expand_as(candidates)
    candidates = candidates.clone()
    candidates[:, 0] = True
    last = torch.where(candidates, index, 0).cummax(dim=1).values
    return candidates | ((index - last) % max_len == 0)


def entropy_candidates(entropy: torch.Tensor, previous: torch.Tensor,
                       config: PatchingConfig) -> torch.Tensor:
    """Where a patch starts by entropy: H_t > threshold and/or H_t - H_{t-1} > relative."""
    fire = torch.zeros_like(entropy, dtype=torch.bool)
    if config.threshold is not None:
        fire |= entropy > config.threshold
    if config.relative is not None:
        fire |= entropy - previous > config.relative
    return fire


def fit_threshold(entropies: torch.Tensor, target_len: float, max_len: int) -> float:
    """The global threshold whose patches average ``target_len`` units on a sample of
    entropies Float[B, T] (bisection: a higher threshold gives longer patches)."""
    if target_len >= max_len:
        raise ConfigError(f"a mean patch length of {target_len} needs max_len > {target_len} "
                          f"(max_len is {max_len})")
    low, high = float(entropies.min()) - 1e-3, float(entropies.max()) + 1e-3
    for _ in range(40):
        middle = (low + high) / 2
        starts = apply_max_len(entropies > middle, max_len)
        if mean_patch_len(starts) < target_len:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def mean_patch_len(starts: torch.Tensor) -> float:
    return starts.numel() / max(int(starts.sum()), 1)


def patch_lengths(starts: torch.Tensor) -> np.ndarray:
    """Lengths of the patches of one sequence's Bool[T] starts (the last may be open)."""
    positions = np.flatnonzero(starts.cpu().numpy())
    return np.diff(np.append(positions, starts.shape[0]))


@dataclass
class PatcherState:
    """Per-sequence decoding state of a patcher."""

    since_start: torch.Tensor  # Long[B]: units since the last candidate start
    previous: torch.Tensor  # Long[B]: the last unit (-1 before the first)
    entropy: torch.Tensor  # Float[B]: entropy of the next unit's prediction
    last_entropy: torch.Tensor  # Float[B]: entropy of the last unit's prediction
    model_state: object = None  # the entropy model's decoding state
    fed: int = 0


class Patcher(nn.Module):
    """Patch starts for a window (``forward``) or one unit at a time (``step``).

    For entropy patching the entropy model is a submodule (its weights travel in the BLT
    checkpoint), frozen and run without gradients.
    """

    def __init__(self, config: PatchingConfig, entropy_model: nn.Module | None = None
                 ) -> None:
        super().__init__()
        self.config = config
        if config.kind == "entropy" and entropy_model is None:
            raise ConfigError("entropy patching needs an entropy model (--entropy-model)")
        self.entropy_model = entropy_model if config.kind == "entropy" else None
        # learned patching: ids Long[B, T] -> boundary probabilities Float[B, T], set by
        # the BLT whose router decides (patches of a whole text for reports)
        self.boundary_probs: Callable[[torch.Tensor], torch.Tensor] | None = None
        if self.entropy_model is not None:
            self.entropy_model.requires_grad_(False)

    @property
    def max_len(self) -> int:
        return self.config.patch_size if self.config.kind == "fixed" else self.config.max_len

    # -- whole windows ---------------------------------------------------------------------

    @torch.no_grad()
    def entropies(self, ids: torch.Tensor) -> torch.Tensor:
        """Float[B, T]: entropy in bits of the entropy model's prediction of each unit
        (0 at position 0, which has no prediction)."""
        model = self.entropy_model
        segments = None
        if self.config.newline_reset:  # a new segment starts after every newline
            segments = torch.cumsum(ids == NEWLINE, dim=1) - (ids == NEWLINE).long()
        entropy = entropy_bits(model(ids, segments).logits)  # (B, T): of unit t + 1
        return torch.cat([entropy.new_zeros(ids.shape[0], 1), entropy[:, :-1]], dim=1)

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Long[B, T] -> (starts Bool[B, T], entropies Float[B, T] or None)."""
        if self.config.kind == "learned":
            return self.starts(ids, probs=self.boundary_probs(ids)), None
        entropy = self.entropies(ids) if self.config.kind == "entropy" else None
        return self.starts(ids, entropy), entropy

    def starts(self, ids: torch.Tensor, entropy: torch.Tensor | None = None,
               probs: torch.Tensor | None = None) -> torch.Tensor:
        """Bool[B, T] patch starts of ``ids`` (entropy patching: given its entropies;
        learned: given the router's boundary probabilities Float[B, T])."""
        kind = self.config.kind
        if kind == "learned":
            candidates = probs > 0.5
        elif kind == "fixed":
            candidates = torch.zeros_like(ids, dtype=torch.bool)
        elif kind == "space":
            word = _WORD.to(ids.device)[ids]
            candidates = torch.zeros_like(word)
            candidates[:, 1:] = word[:, 1:] & ~word[:, :-1]
        else:
            previous = torch.cat([entropy[:, :1] * 0, entropy[:, :-1]], dim=1)
            candidates = entropy_candidates(entropy, previous, self.config)
        return apply_max_len(candidates, self.max_len)

    # -- one unit at a time ----------------------------------------------------------------

    def new_state(self, batch_size: int, device: torch.device) -> PatcherState:
        zeros = torch.zeros(batch_size, device=device)
        return PatcherState(since_start=torch.zeros(batch_size, dtype=torch.long,
                                                    device=device),
                            previous=torch.full((batch_size,), -1, dtype=torch.long,
                                                device=device),
                            entropy=zeros, last_entropy=zeros.clone())

    @torch.no_grad()
    def step(self, state: PatcherState, ids: torch.Tensor, prob: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Feed Long[B] units (learned patching: with their boundary probabilities
        Float[B]); return whether each starts a patch (Bool[B]) and, for entropy patching,
        the entropy it was predicted with."""
        kind = self.config.kind
        entropy = None
        if state.fed == 0:
            candidate = torch.ones_like(ids, dtype=torch.bool)
        elif kind == "learned":
            candidate = prob > 0.5
        elif kind == "fixed":
            candidate = torch.zeros_like(ids, dtype=torch.bool)
        elif kind == "space":
            word = _WORD.to(ids.device)
            candidate = word[ids] & ~word[state.previous]
        else:
            entropy = state.entropy
            candidate = entropy_candidates(entropy, state.last_entropy, self.config)
        state.since_start = torch.where(candidate, 0, state.since_start)
        start = candidate | (state.since_start % self.max_len == 0)
        state.since_start = state.since_start + 1
        if kind == "entropy":
            self._feed_entropy_model(state, ids)
        state.previous = ids
        state.fed += 1
        return start, entropy

    def _feed_entropy_model(self, state: PatcherState, ids: torch.Tensor) -> None:
        model = self.entropy_model
        reset = self.config.newline_reset and state.fed > 0 and \
            bool((state.previous == NEWLINE).any())
        if reset and ids.shape[0] > 1:
            raise ValueError("newline_reset decodes one sequence at a time")
        if state.model_state is None or reset:
            state.model_state = model.new_state(ids.shape[0])
        scores, state.model_state = model.step(state.model_state, ids[:, None])
        state.last_entropy = state.entropy
        state.entropy = entropy_bits(scores.logits[:, -1])


@torch.no_grad()
def chunked_entropies(patcher: Patcher, ids: torch.Tensor, chunk: int = 4096
                      ) -> torch.Tensor:
    """Entropies Float[T] of a long Long[T] sequence, ``chunk`` units per pass, each pass
    overlapping the previous by the entropy model's whole receptive field (so the result
    equals one long pass with its sliding window)."""
    return torch.cat(list(iter_entropies(patcher, lambda a, b: ids[a:b], len(ids), chunk)))


def iter_entropies(patcher: Patcher, read, length: int, chunk: int = 4096):
    """Entropies of units [0, length) chunk by chunk; ``read(a, b)`` gives ids Long[b - a]."""
    model = patcher.entropy_model
    overlap = model.config.num_layers * model.config.context
    for start in range(0, length, chunk):
        begin = max(0, start - overlap)
        window = read(begin, min(start + chunk, length))[None]
        yield patcher.entropies(window)[0, start - begin:]
