"""The flat family: embeddings -> a backbone of residual blocks -> RMSNorm -> head.

The baseline every other design in untok has to beat. Its options (the ``examples``
below name each one):

- ``backbone``: ``transformer`` (attention + SwiGLU) or ``mmfree`` (MLGRU + BitLinear GLU,
  constant memory per generated unit; see :mod:`untok.nn.stacks`);
- ``unit``: bytes, or code points with the factorized head (``head = "codepoint"``);
- ``embedding``: a table or table-free waves, plus optional hash n-grams;
- ``attention``: standard or differential;
- ``head``: tied, linear, ternary (BitLinear), codepoint, or ``distance``: regress the
  next unit's embedding and score candidates by distance with a learned temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from untok.config import ModelConfig
from untok.config.schema import check
from untok.models.base import init_residuals, init_standard, next_unit_loss
from untok.models.registry import Capabilities, Family, register, shape_summary
from untok.nn.attention import KVCache, LocalWindow, Rope
from untok.nn.bitlinear import BitLinear
from untok.nn.codepoint_head import CodepointHead, CodepointScores
from untok.nn.embeddings import (
    ByteEmbedding,
    CodepointEmbedding,
    WaveEmbedding,
    embed_with_ngrams,
    empty_past,
    make_ngrams,
    update_past,
)
from untok.nn.stacks import TransformerStack, make_stack
from untok.scores import Logits, Scores
from untok.units import ByteUnits, CodepointUnits, Units

STATIC_TABLES = 1 << 16  # RoPE table positions a compiled step reads (grown past that)
TEMPERATURE_RATE = 10.0  # the scalar log-temperature moves this much faster than Adam steps


@dataclass
class FlatState:
    """Decoding state: the backbone's (a KV cache or a hidden vector per layer), the
    absolute position of the next unit and the last units (for hash n-grams; Long[B, 0]
    without them)."""

    layers: list
    past: torch.Tensor
    position: int = 0

    def select(self, rows: torch.Tensor) -> FlatState:
        """The state of the batch rows ``rows`` (Long[B']). Consumes this state (its
        caches' buffers are reused: see :class:`untok.nn.attention.KVCache`)."""
        layers = [layer.select(rows) if isinstance(layer, KVCache) else layer[rows]
                  for layer in self.layers]
        return FlatState(layers, self.past[rows], self.position)

    def join(self, other: FlatState, start: int) -> FlatState:
        """This batch with the rows of ``other`` (same position) appended, their units
        beginning at position ``start`` (see :class:`untok.nn.attention.KVCache`).
        Consumes this state, as :meth:`select` does."""
        if other.position != self.position:
            raise ValueError("joined decoding states must be at the same position")
        layers = [mine.join(theirs, start) if isinstance(mine, KVCache) else
                  torch.cat([mine, theirs]) for mine, theirs in
                  zip(self.layers, other.layers, strict=True)]
        return FlatState(layers, torch.cat([self.past, other.past]), self.position)


def head_of(config: ModelConfig) -> str:
    """The head a flat config asks for (``auto``: codepoint for code points, else tied)."""
    if config.head != "auto":
        return config.head
    return "codepoint" if config.unit == "codepoint" else "tied"


class FlatLM(nn.Module):
    """A decoder-only model over units, satisfying the model protocol."""

    compiled_steps = ("decode_one",)  # see untok.generate.compile_decoding

    def __init__(self, config: ModelConfig, units: Units | None = None) -> None:
        super().__init__()
        self.config = c = config
        self.units = units = units or flat_units(c)
        self.head_kind = head = head_of(c)
        self.vocab_size = vocab = units.vocab_size
        wave = c.embedding.kind == "wave"
        if wave:
            self.embed = WaveEmbedding(c.dim, c.embedding.waves, vocab)
        elif units.identity:
            self.embed = ByteEmbedding(vocab, c.dim)
        else:
            self.embed = CodepointEmbedding(c.dim)
        self.ngrams = make_ngrams(c.dim, c.embedding.ngrams, c.embedding.buckets)
        self.blocks = make_stack(c.backbone, dim=c.dim, num_layers=c.num_layers,
                                 num_heads=c.num_heads, kv_heads=c.kv_heads,
                                 hidden=c.hidden_dim, eps=c.norm_eps,
                                 dropout=c.dropout, attention=c.attention, capacity=c.context,
                                 rope=Rope(c.head_dim, c.rope_base, 2 * c.context))
        self.norm = nn.RMSNorm(c.dim, eps=c.norm_eps)
        self.head: nn.Module | None = None  # none: scores against the embeddings themselves
        self.log_temperature = None
        self.nll_loss = head != "distance"  # the training loss is a cross-entropy
        if head == "codepoint":
            self.head = CodepointHead(c.dim)
        elif head == "distance":  # distances to the candidates, with a learned scale
            self.log_temperature = nn.Parameter(torch.zeros(()))
            self.register_buffer("spread", torch.ones(()))  # running mean squared residual
        elif head == "ternary":
            self.head = BitLinear(c.dim, vocab, c.norm_eps)
        elif not (wave and head == "tied"):
            self.head = nn.Linear(c.dim, vocab, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding table with the head (again after ``to_empty``)."""
        if self.head_kind == "tied" and isinstance(self.embed, ByteEmbedding):
            self.head.weight = self.embed.table.weight

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every parameter (the model may have been built on the meta device)."""
        init_standard(self)
        if self.log_temperature is not None:
            self.log_temperature.zero_()
            self.spread.fill_(1.0)
        init_residuals(self.blocks, self.config.num_layers)

    def _hidden(self, ids: torch.Tensor, mask: LocalWindow | None = None) -> torch.Tensor:
        """Final hidden states Float[B, T, D] (after the last norm) of a whole sequence."""
        return self.norm(self.blocks(embed_with_ngrams(self.embed, self.ngrams, ids), mask))

    def _outputs(self, h: torch.Tensor) -> torch.Tensor:
        """Logits Float[B, T, V] of hidden states (a code-point head: ``h`` itself, which
        :meth:`_scores` hands to the head)."""
        if self.head_kind == "codepoint":
            return h
        if self.log_temperature is not None:
            return self.distance_scores(h)
        if self.head is None:  # wave embeddings tied to the output
            return h @ self.candidates().T.to(h.dtype)
        return self.head(h)

    def _scores(self, out: torch.Tensor) -> Scores:
        """What ``forward``/``step`` return for :meth:`_outputs`."""
        if self.head_kind == "codepoint":
            return CodepointScores(out, self.head)
        return Logits(out, self.units)

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
        pad = self.units.pad
        keep = targets != pad
        e = self.targets()
        target_vectors = e.detach()[targets.masked_fill(~keep, 0)]  # (B, T, D)
        distance = (h.float() - target_vectors.float()).pow(2).mean(-1)
        regression = (distance * keep).sum() / keep.sum().clamp(min=1)
        if self.training:  # track the residual's scale (a buffer: saved, not learned)
            self.spread.lerp_(regression.detach().clamp(min=1e-8), 0.05)
        calibration = next_unit_loss(self.distance_scores(h.detach(), e.detach()), targets)
        return regression + calibration

    def _cached(self, ids: torch.Tensor, positions: torch.Tensor,
                tables: tuple[torch.Tensor, ...], layers: list, past: torch.Tensor
                ) -> torch.Tensor:
        """:meth:`_outputs` for ``ids`` Long[B, n] at ``positions`` (Long[n]), reading and
        filling the backbone's state ``layers``."""
        x = embed_with_ngrams(self.embed, self.ngrams, ids, past)
        return self._outputs(self.norm(self.blocks.step(x, layers, positions, tables)))

    def decode_one(self, *args: torch.Tensor | tuple | list) -> torch.Tensor:
        """``_cached`` for one new unit per sequence: tensors only and static shapes, the
        function :func:`untok.generate.compile_decoding` compiles."""
        return self._cached(*args)

    def _mask(self, ids: torch.Tensor, segments: torch.Tensor | None) -> LocalWindow | None:
        """Attention mask of a whole sequence: past the context each unit sees the last
        ``context`` units (as decoding with the KV cache does); with ``segments``
        (non-decreasing) a unit sees only its own segment. None when plain causal."""
        T = ids.shape[1]
        if not isinstance(self.blocks, TransformerStack) or \
                (segments is None and self.config.context >= T):
            return None
        return LocalWindow(self.config.context, segments)

    def forward(self, ids: torch.Tensor, segments: torch.Tensor | None = None) -> Scores:
        """Scores of the next unit at every position of ``ids`` Long[B, T]."""
        return self._scores(self._outputs(self._hidden(ids, self._mask(ids, segments))))

    def loss(self, ids: torch.Tensor, targets: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy in nats per unit (``distance``: the regression loss plus the
        temperature's cross-entropy)."""
        if mask is not None:
            targets = targets.masked_fill(~mask, self.units.pad)
        h = self._hidden(ids, self._mask(ids, None))
        if self.head_kind == "codepoint":
            return self.head.loss(h, targets)
        if self.log_temperature is not None:
            return self.mse_loss(h, targets)
        return next_unit_loss(self._outputs(h), targets, pad=self.units.pad)

    def new_state(self, batch_size: int, position: int = 0,
                  window: int | None = None) -> FlatState:
        """A fresh decoding state whose first unit will be at ``position`` (a server
        places a sequence on a batch's clock with it; see :meth:`FlatState.join`);
        ``window``: attend to the last ``window`` units only (transformer; None: the
        context)."""
        weight = self.norm.weight
        static = getattr(self, "static_decoding", False)  # set by compile_decoding
        layers = self.blocks.new_state(batch_size, weight.device, weight.dtype, static,
                                       position, window)
        return FlatState(layers, empty_past(self.ngrams, batch_size, weight.device),
                         position)

    def step(self, state: FlatState, ids: torch.Tensor) -> tuple[Scores, FlatState]:
        start, end = state.position, state.position + ids.shape[1]
        positions = torch.arange(start, end, device=ids.device)
        # a compiled step takes the RoPE tables whole: one large size keeps it from
        # recompiling each time they grow (positions index them: the values are the same)
        static = getattr(self, "static_decoding", False)
        tables = self.blocks.step_tables(max(end, STATIC_TABLES) if static else end,
                                         ids.device)
        run = self.decode_one if ids.shape[1] == 1 else self._cached
        out = run(ids, positions, tables, state.layers, state.past)
        state.past = update_past(state.past, ids)
        self.blocks.advance(state.layers, ids.shape[1])
        state.position = end
        return self._scores(out), state

    # -- the tail: what online adaptation while coding trains (Capabilities.adapts_tail) --

    def tail_entry(self) -> nn.Module:
        """The module whose input, Float[B, n, D], is the residual stream that enters the
        last block's MLP: what :meth:`tail_logits` continues from."""
        return self.blocks[-1].mlp_norm

    def tail_modules(self) -> list[nn.Module]:
        """The modules from the tail's entry to the logits: the last block's MLP and its
        norm, the final norm, and the head (for a tied head, the embedding table)."""
        last = self.blocks[-1]
        return [last.mlp_norm, last.mlp, self.norm, self.head or self.embed]

    def tail_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits Float[B, n, V] of the residual streams ``x`` at the tail's entry."""
        last = self.blocks[-1]
        return self._outputs(self.norm(x + last.mlp(last.mlp_norm(x))))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_byte(self) -> float:
        """6 x (matmul weights, counted as dense for ternary ones) + the backbone's
        sequence mixing (causal attention scores and mixing), forward + backward."""
        c = self.config
        matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        if self.head is None:  # scores against every candidate's embedding
            matmul += self.vocab_size * c.dim
        return 6.0 * matmul + self.blocks.mixing_flops(c.context)


def flat_units(config: ModelConfig) -> Units:
    return CodepointUnits() if config.unit == "codepoint" else ByteUnits(config.vocab_size)


def validate_flat(c: ModelConfig) -> None:
    """The flat family's rules: which options combine."""
    head = head_of(c)
    c.require_defaults(("patching", "local"), "applies to BLT models only, and this model's "
                       "family is 'flat'; choose a BLT preset such as --preset blt-small")
    c.require_defaults(("words",), "applies to T-Free models only (family 'tfree')")
    c.require_defaults(("chunks",), "applies to tokun models only (families 'tokun', 'tokun-lm')")
    if c.backbone == "mmfree":
        c.require_defaults(("unit", "embedding.kind", "attention"), "an option of the "
                           "transformer backbone; drop it or set model.backbone=transformer")
        check(head in ("tied", "linear", "ternary"), f"model.head = '{head}' needs the "
              "transformer backbone; a MatMul-free model's head is tied, linear or ternary")
    else:
        check(head != "ternary", "model.head = 'ternary' is a MatMul-free head: set "
              "model.backbone = 'mmfree'")
    if c.unit == "codepoint":
        check(head == "codepoint", f"model.head = '{head}' needs model.unit = 'byte' (a "
              "code-point model predicts with model.head = 'codepoint')")
        check(not c.embedding.ngrams, "hash n-grams read bytes: drop model.embedding.ngrams "
              "for model.unit = 'codepoint'")
    else:
        check(head != "codepoint", "model.head = 'codepoint' needs model.unit = 'codepoint'")


def flat_capabilities(config: ModelConfig) -> Capabilities:
    return Capabilities(can_compress=config.unit == "byte",
                        compiled_decoding=config.backbone == "transformer",
                        windowed_decoding=config.backbone == "transformer",
                        adapts_tail=config.backbone == "transformer" and config.unit == "byte",
                        export_ternary=config.backbone == "mmfree", joins_rows=True)


TINY = {"dim": 32, "num_layers": 2, "num_heads": 2, "context": 32}
register(Family(
    name="flat", model=FlatLM, units=flat_units, capabilities=flat_capabilities,
    validate=validate_flat, description="a decoder over units (the baseline)",
    summary=lambda c: shape_summary("flat" if c.backbone == "transformer" else c.backbone, c,
                                    heads=c.backbone == "transformer"),
    examples={
        "transformer": {**TINY, "embedding": {"ngrams": [2, 3], "buckets": 64}},
        "linear-head": {**TINY, "head": "linear"},
        "differential": {**TINY, "attention": "differential", "num_heads": 4},
        "grouped-query": {**TINY, "num_heads": 4, "kv_heads": 2},
        "multi-query": {**TINY, "num_heads": 4, "kv_heads": 1},
        "wave": {**TINY, "embedding": {"kind": "wave", "waves": 16}},
        "wave-linear": {**TINY, "embedding": {"kind": "wave", "waves": 16}, "head": "linear"},
        "distance": {**TINY, "head": "distance"},
        "codepoint": {**TINY, "unit": "codepoint", "dim": 16},
        "mmfree": {**TINY, "backbone": "mmfree", "embedding": {"ngrams": [2, 3],
                                                              "buckets": 64}},
        "mmfree-ternary": {**TINY, "backbone": "mmfree", "head": "ternary"},
    }))
