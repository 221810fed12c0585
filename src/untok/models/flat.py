"""The flat byte transformer: embeddings -> pre-norm blocks -> RMSNorm -> head.

The baseline every other design in untok has to beat (DESIGN 5.1). Options of the same
model: the unit (bytes, or code points with a factorized head), the embedding (a table or
table-free waves, optionally tied to the output), the attention (standard or
differential) and the objective (cross-entropy, or ``mse``: regress the next unit's
embedding and score candidates by distance with a learned temperature).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from untok.config import ModelConfig
from untok.models.base import init_standard, next_unit_loss
from untok.nn.attention import KVCache, local_causal_mask, rope_angles
from untok.nn.blocks import TransformerBlock
from untok.nn.codepoint_head import CodepointHead, CodepointScores
from untok.nn.embeddings import (
    ByteEmbedding,
    CodepointEmbedding,
    HashNgramEmbedding,
    WaveEmbedding,
    update_past,
)
from untok.units import unit_of

TEMPERATURE_RATE = 10.0  # the scalar log-temperature moves this much faster than Adam steps


@dataclass
class FlatState:
    """Decoding state: one KV cache per layer, the absolute position of the next unit and
    the last units (for hash n-grams; Long[B, 0] without them)."""

    caches: list[KVCache]
    past: torch.Tensor
    position: int = 0


class FlatLM(nn.Module):
    """A decoder-only transformer over units, satisfying the ByteLM protocol."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.unit = unit_of(c)
        codepoint, wave = c.unit == "codepoint", c.embedding.kind == "wave"
        # bytes: the configured width (other id spaces, e.g. BPE baselines, set it)
        self.vocab_size = vocab = self.unit.vocab_size if codepoint else c.vocab_size
        if wave:
            self.embed = WaveEmbedding(c.dim, c.embedding.waves, vocab)
        else:
            self.embed = CodepointEmbedding(c.dim) if codepoint else ByteEmbedding(vocab, c.dim)
        self.ngrams = HashNgramEmbedding(c.dim, c.embedding.ngrams, c.embedding.buckets) \
            if c.embedding.ngrams else None
        self.blocks = nn.ModuleList(
            TransformerBlock(c.dim, c.num_heads, c.hidden_dim, c.norm_eps, c.dropout,
                             c.attention, layer=i + 1)
            for i in range(c.num_layers))
        self.norm = nn.RMSNorm(c.dim, eps=c.norm_eps)
        self.head: nn.Module | None = None  # none: scores against the embeddings themselves
        self.log_temperature = None
        if codepoint:
            self.head = CodepointHead(c.dim)
        elif c.objective == "mse":  # distances to the candidates, with a learned scale
            self.log_temperature = nn.Parameter(torch.zeros(()))
            self.register_buffer("spread", torch.ones(()))  # running mean squared residual
        elif not (wave and c.tie_embeddings):
            self.head = nn.Linear(c.dim, vocab, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding table with the head (again after ``to_empty``)."""
        if self.config.tie_embeddings and isinstance(self.embed, ByteEmbedding) and \
                isinstance(self.head, nn.Linear):
            self.head.weight = self.embed.table.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter (the model may have been built on the meta device)."""
        residual_std = 0.02 / math.sqrt(2 * self.config.num_layers)
        init_standard(self)
        if self.log_temperature is not None:
            self.log_temperature.zero_()
            self.spread.fill_(1.0)
        for block in self.blocks:
            for linear in block.residual_outputs():
                nn.init.normal_(linear.weight, std=residual_std)

    def _hidden(self, ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                caches: list[KVCache] | None = None, positions: torch.Tensor | None = None,
                past: torch.Tensor | None = None, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Final hidden states Float[B, T, D] (after the last norm) for ``ids`` Long[B, T]
        given their RoPE angles (and the units before them, for hash n-grams)."""
        x = self.embed(ids)  # (B, T, D)
        if self.ngrams is not None:
            x = x + self.ngrams(ids, past)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if caches is None else caches[i], positions, mask)
        return self.norm(x)

    def _run(self, *args, **kwargs) -> torch.Tensor:
        """Logits Float[B, T, V] (a code-point model: the hidden states; see ``_wrap``)."""
        h = self._hidden(*args, **kwargs)
        if isinstance(self.head, CodepointHead):
            return h
        if self.log_temperature is not None:
            return self.distance_scores(h)
        if self.head is None:  # wave embeddings tied to the output
            return h @ self.candidates().T.to(h.dtype)
        return self.head(h)

    def _wrap(self, out: torch.Tensor) -> torch.Tensor | CodepointScores:
        """What ``forward``/``step`` return: logits, or a code-point model's scores."""
        return CodepointScores(out, self.head) if isinstance(self.head, CodepointHead) else out

    def candidates(self) -> torch.Tensor:
        """Input embeddings of every unit, Float[V, D] (what a tied output scores)."""
        if isinstance(self.embed, ByteEmbedding):
            return self.embed.table.weight
        if torch.is_grad_enabled():
            return self.embed.table(self.vocab_size)
        key = tuple((p._version, p.data_ptr()) for p in self.embed.parameters())
        cached = getattr(self, "_candidates", None)  # inference: reuse until weights change
        if cached is None or cached[0] != key:
            cached = (key, self.embed.table(self.vocab_size))
            self._candidates = cached
        return cached[1]

    def targets(self) -> torch.Tensor:
        """What the ``mse`` objective regresses: every unit's embedding scaled to unit RMS
        (Float[V, D]), so the targets are as large as the normed hidden state from the first
        step and cannot shrink towards each other."""
        return F.rms_norm(self.candidates(), (self.config.dim,))

    def distance_scores(self, h: torch.Tensor,
                        candidates: torch.Tensor | None = None) -> torch.Tensor:
        """The ``mse`` objective's logits for every candidate v: a Gaussian around the
        prediction, ``-exp(t) ||h - e_v||^2 / (2 D s)`` with ``s`` the running mean squared
        residual per channel (the Gaussian's maximum-likelihood variance) and ``t`` a
        learned correction; up to a per-position constant (``||h||^2``, which softmax
        ignores)."""
        e = self.targets() if candidates is None else candidates  # (V, D)
        e = e.to(h.dtype)
        scale = (TEMPERATURE_RATE * self.log_temperature).exp() / (2 * h.shape[-1] * self.spread)
        return scale * (2 * h @ e.T - (e * e).sum(-1))  # (B, T, V)

    def mse_loss(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean squared distance from ``h`` to the (stop-gradient) embedding of the target,
        plus the cross-entropy of the distance scores with ``h`` and the candidates
        detached, which trains only the temperature (so bpb comes from a calibrated
        distribution)."""
        pad = self.unit.pad
        keep = targets != pad
        e = self.targets()
        target_vectors = e.detach()[targets.masked_fill(~keep, 0)]  # (B, T, D)
        distance = (h.float() - target_vectors.float()).pow(2).mean(-1)
        regression = (distance * keep).sum() / keep.sum().clamp(min=1)
        if self.training:  # track the residual's scale (a buffer: saved, not learned)
            self.spread.lerp_(regression.detach().clamp(min=1e-8), 0.05)
        calibration = next_unit_loss(self.distance_scores(h.detach(), e.detach()), targets)
        return regression + calibration

    def _cached(self, ids: torch.Tensor, positions: torch.Tensor, cos_table: torch.Tensor,
                sin_table: torch.Tensor, caches: list[KVCache],
                past: torch.Tensor) -> torch.Tensor:
        """Logits for ``ids`` at ``positions`` (Long[T]), reading and filling ``caches``."""
        return self._run(ids, cos_table[positions], sin_table[positions], caches, positions,
                         past)

    def decode_one(self, ids: torch.Tensor, positions: torch.Tensor, cos_table: torch.Tensor,
                   sin_table: torch.Tensor, caches: list[KVCache],
                   past: torch.Tensor) -> torch.Tensor:
        """``_cached`` for one new unit per sequence: tensors only and static shapes, the
        function :func:`untok.generate.compile_decoding` compiles."""
        return self._cached(ids, positions, cos_table, sin_table, caches, past)

    def _rope(self, end: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin tables Float[S, d/2] covering positions [0, end), grown on demand
        (a plain attribute, not a buffer: it is derived, never saved)."""
        table = getattr(self, "_rope_table", None)
        if table is None or table[0].shape[0] < end or table[0].device != device:
            grown = 2 * table[0].shape[0] if table is not None else 0  # doubling: O(1)
            size = max(end, grown, 2 * self.config.context)  # amortised for long generation
            positions = torch.arange(size, device=device)
            table = rope_angles(positions, self.config.head_dim, self.config.rope_base)
            self._rope_table = table
        return table

    def _whole(self, ids: torch.Tensor, segments: torch.Tensor | None = None
               ) -> dict[str, torch.Tensor | None]:
        """RoPE angles and attention mask for a whole sequence ``ids`` Long[B, T]: past the
        context each unit sees the last ``context`` units (as decoding with the KV cache
        does); with ``segments`` (non-decreasing) a unit sees only its own segment."""
        T = ids.shape[1]
        cos, sin = self._rope(T, ids.device)
        mask = None
        if segments is not None or self.config.context < T:
            mask = local_causal_mask(T, self.config.context, ids.device, segments)
        return {"cos": cos[:T], "sin": sin[:T], "mask": mask}

    def forward(self, ids: torch.Tensor, segments: torch.Tensor | None = None
                ) -> torch.Tensor | CodepointScores:
        """Logits Float[B, T, V] (a code-point model: :class:`CodepointScores`)."""
        return self._wrap(self._run(ids, **self._whole(ids, segments)))

    def loss(self, ids: torch.Tensor, targets: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy in nats per unit (``mse``: the regression loss plus the
        temperature's cross-entropy)."""
        if mask is not None:
            targets = targets.masked_fill(~mask, self.unit.pad)
        if isinstance(self.head, CodepointHead) or self.log_temperature is not None:
            h = self._hidden(ids, **self._whole(ids))
            if self.log_temperature is not None:
                return self.mse_loss(h, targets)
            return self.head.loss(h, targets)
        return next_unit_loss(self(ids), targets, pad=self.unit.pad)

    def new_state(self, batch_size: int) -> FlatState:
        c = self.config
        weight = self.norm.weight
        static = getattr(self, "static_decoding", False)  # set by compile_decoding
        caches = [block.attn.new_cache(batch_size, c.context, weight.device, weight.dtype,
                                       static) for block in self.blocks]
        history = self.ngrams.history if self.ngrams is not None else 0
        past = torch.full((batch_size, history), -1, dtype=torch.long, device=weight.device)
        return FlatState(caches, past)

    def step(self, state: FlatState, ids: torch.Tensor) -> tuple[torch.Tensor, FlatState]:
        start, end = state.position, state.position + ids.shape[1]
        cos, sin = self._rope(end, ids.device)
        positions = torch.arange(start, end, device=ids.device)
        run = self.decode_one if ids.shape[1] == 1 else self._cached
        logits = self._wrap(run(ids, positions, cos, sin, state.caches, state.past))
        state.past = update_past(state.past, ids)
        for cache in state.caches:
            if cache.static:  # (a dynamic cache counts its own length)
                cache.length = min(cache.length + ids.shape[1], self.config.context)
        state.position = end
        return logits, state

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_byte(self) -> float:
        """6 x (matmul weights) + causal attention scores and mixing, forward + backward."""
        c = self.config
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        if self.head is None:  # scores against every candidate's embedding
            matmul += self.vocab_size * c.dim
        attention = 6 * c.num_layers * c.context * c.dim  # 2 matmuls x T/2 keys x 2 x 3
        return 6.0 * matmul + attention
