"""Decoding chunk vectors with the encoder as a check.

The chunk encoder is affine in its bytes before its last norm (see
:class:`~untok.nn.chunk_autoencoder.ChunkEncoder`): the vector of a chunk is
``norm(base + sum_p code[p, byte_p])`` over its G x W byte slots p. So what the decoder
read can be verified: re-encode it and compare with the vector. Where they differ, the
decoder got a byte wrong, and changing one byte costs one row of ``code``: a few rounds
of trying each slot's ``candidates`` most likely values (by the decoder's own logits) and
keeping the change that brings the re-encoded vector closest find the bytes that encode
to exactly this vector. A change is kept only if the whole chunk then verifies, so the
output is either checked against the vector or what the decoder read: a noisy vector
(which no bytes encode to exactly) is decoded as the decoder reads it, and so is a chunk
whose re-encoding is far off (many bytes wrong: an untrained decoder), which no few
changes would fix and whose search would cost the most.

Shapes: vectors Float[..., E], logits Float[..., G, W, 256] -> bytes Long[..., G, W].
"""

from __future__ import annotations

import torch
from torch import nn

TOLERANCE = 0.02  # relative distance below which a re-encoded vector matches (bf16-safe)
GROUP = 32  # chunks searched at once (the trial vectors: GROUP x P x candidates x E)
WRONG_BYTES = 8  # chunks re-encoding farther than about this many wrong bytes stay as read


class CheckedDecoding:
    """The byte codes of one encoder (fp32, computed once) and the search that uses them.

    ``code`` Float[P, 256, E]: the pre-norm vector's change when slot p holds byte b
    instead of 0; ``base`` Float[E]: the pre-norm vector of all-zero bytes."""

    def __init__(self, encoder: nn.Module, candidates: int = 16, rounds: int = 8) -> None:
        self.encoder, self.candidates, self.rounds = encoder, candidates, rounds
        chars, width = encoder.chars, encoder.width
        slots = chars * width
        # one wrong byte of P moves the vector by about sqrt(2 / P) of its length
        self.limit = min(1.0, (2 * WRONG_BYTES / slots) ** 0.5)
        device = encoder.embed.weight.device
        probes = torch.zeros(slots, 256, slots, dtype=torch.long, device=device)
        probes[torch.arange(slots), :, torch.arange(slots)] = torch.arange(256, device=device)
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            zero = torch.zeros(1, chars, width, dtype=torch.long, device=device)
            self.base = encoder.linear(zero)[0].float()  # (E,)
            self.code = (encoder.linear(probes.view(-1, chars, width)).float()
                         - self.base).view(slots, 256, -1)  # (P, 256, E)

    def distance(self, pre_norm: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """Relative distance of norm(``pre_norm``) Float[..., E] to ``vectors``."""
        encoded = self.encoder.merges[-1].norm(pre_norm)
        return (encoded - vectors).norm(dim=-1) / vectors.norm(dim=-1).clamp(min=1e-6)

    @torch.no_grad()
    def __call__(self, vectors: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """The bytes Long[..., G, W] of ``vectors`` Float[..., E] whose decoder logits are
        ``logits`` Float[..., G, W, 256]."""
        shape = logits.shape[:-1]
        slots = self.code.shape[0]
        logits = logits.reshape(-1, slots, 256)  # (N, P, 256)
        vectors = vectors.reshape(-1, vectors.shape[-1]).float()  # (N, E)
        guess = logits.argmax(-1)  # (N, P)
        every = torch.arange(slots, device=guess.device)
        pre_norm = self.base + self.code[every, guess].sum(1)  # (N, E)
        distance = self.distance(pre_norm, vectors)
        wrong = ((distance > TOLERANCE) & (distance < self.limit)).nonzero()[:, 0]
        for rows in wrong.split(GROUP):
            guess[rows] = self._search(vectors[rows], logits[rows], guess[rows],
                                       pre_norm[rows])
        return guess.view(shape)

    def _search(self, vectors: torch.Tensor, logits: torch.Tensor, guess: torch.Tensor,
                pre_norm: torch.Tensor) -> torch.Tensor:
        """Greedy single-byte changes over M chunks that do not verify: Long[M, P], kept
        only for the chunks that verify at the end."""
        every = torch.arange(guess.shape[1], device=guess.device)
        options = logits.topk(self.candidates, -1).indices  # (M, P, k)
        chosen, changed = guess.clone(), pre_norm.clone()
        best = self.distance(changed, vectors)  # (M,)
        for _ in range(self.rounds):
            delta = self.code[every[:, None], options] - self.code[every, chosen][:, :, None]
            trial = self.distance(changed[:, None, None] + delta, vectors[:, None, None])
            value, flat = trial.flatten(1).min(1)  # (M,): the best change of each chunk
            better = value < best
            if not better.any():
                break
            rows = better.nonzero()[:, 0]
            slot, pick = flat[rows] // options.shape[2], flat[rows] % options.shape[2]
            chosen[rows, slot] = options[rows, slot, pick]
            changed[rows] += delta[rows, slot, pick]
            best = torch.where(better, value, best)
        return torch.where((best <= TOLERANCE)[:, None], chosen, guess)
