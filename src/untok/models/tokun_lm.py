"""The tokun-lm family: a causal language model over tokun chunk vectors, with an exact
likelihood of every character.

    characters -> chunks of G (tokun's encoder: one vector per chunk) -> a causal backbone
    over chunks -> for chunk c, the context after chunks 0..c-1 -> a small causal decoder
    over chunk c's characters -> each character's bytes one at a time (the factorized
    code-point head: plane, then block, then character)

The character at position j of chunk c is predicted from the context of chunks before c
and the characters of chunk c before j, and nothing else:

    decoder slots of chunk c:  [ctx(c-1), char cG, char cG+1, ..., char cG+G-2]
    slot j predicts:            char cG+j

(with ``chunks.previous_char`` slot 0 also reads char cG-1, the last of the chunk before).
With ``chunks.decoder_window = N`` the decoder runs over the whole character sequence
instead: slot i reads character i (its vector plus hash n-grams ending at it, from
``model.embedding.ngrams``) and the context after the chunks ending at or before it, and
attends to the N slots up to its own, across chunk boundaries, predicting character i + 1;

so P(text) is the product of proper distributions, ``untok eval`` reports bits per UTF-8
byte and per character that are a true code length, and changing a character moves no
prediction of an earlier one, in its chunk or before. The encoder is trained with the model
(``chunks.train_encoder``) or taken from a trained ``tokun`` autoencoder
(``chunks.encoder``), frozen or not. Decoding feeds characters one at a time: a full chunk
goes through the encoder and one backbone step; every character re-runs the chunk decoder
over its chunk's prefix (at most G slots), or takes one step of the sequence decoder (a KV
cache of N slots).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from untok.chunks import char_bytes, chunk
from untok.config import ModelConfig
from untok.errors import CheckpointError, UntokError
from untok.models.base import init_residuals, init_standard
from untok.models.registry import Capabilities, Family, load, register
from untok.models.tokun import chunk_summary, chunk_units, validate_chunks
from untok.nn.attention import LocalWindow, Rope
from untok.nn.chunk_autoencoder import ChunkEncoder
from untok.nn.codepoint_head import CodepointHead, CodepointScores
from untok.nn.embeddings import empty_past, make_ngrams, update_past
from untok.nn.stacks import make_stack
from untok.units import CP_PAD, CodepointUnits

GEOMETRY = ("width", "levels", "dim", "byte_dim")  # what an encoder checkpoint must match


@dataclass
class ChunkState:
    """Incremental decoding: the backbone's caches over finished chunks, how many there
    are, the context vector after them Float[B, D], the characters of the chunk being
    written Long[B, k] (k < G), and the last character before it Long[B] (CP_PAD before
    the first chunk)."""

    layers: list
    context: torch.Tensor
    chars: torch.Tensor
    previous: torch.Tensor
    position: int = 0
    decoder: list | None = None  # the sequence decoder's caches (``decoder_window`` > 0)
    fed: int = 0  # characters fed so far: the sequence decoder's next position
    past: torch.Tensor | None = None  # Long[B, history]: what its hash n-grams read


class TokunLM(nn.Module):
    """A chunk language model satisfying the model protocol (units: code points)."""

    def __init__(self, config: ModelConfig, units: CodepointUnits | None = None) -> None:
        super().__init__()
        self.config = c = config
        self.units = units or CodepointUnits()
        ch = c.chunks
        self.size = ch.size
        chunks = c.context // ch.size
        self.encoder = ChunkEncoder(ch.width, ch.levels, ch.dim, ch.byte_dim)
        self.encoder.requires_grad_(ch.train_encoder)
        self.chunk_in = nn.Linear(ch.dim, c.dim)
        self.blocks = make_stack(c.backbone, dim=c.dim, num_layers=c.num_layers,
                                 num_heads=c.num_heads, kv_heads=c.kv_heads,
                                 hidden=c.hidden_dim, eps=c.norm_eps,
                                 dropout=c.dropout, capacity=chunks,
                                 rope=Rope(c.head_dim, c.rope_base, 2 * chunks + 2))
        self.norm = nn.RMSNorm(c.dim, eps=c.norm_eps)
        self.start = nn.Parameter(torch.zeros(c.dim))  # the context before the first chunk
        d = ch.decoder_dim or c.dim
        heads = max(d // 64, 1)
        self.context_in = nn.Linear(c.dim, d)
        self.char_in = nn.Linear(self.encoder.char_dim, d)
        self.ngrams = make_ngrams(d, c.embedding.ngrams, c.embedding.buckets)
        self.ngram_dropout = nn.Dropout(c.dropout)  # the tables memorize a small corpus
        self.window = ch.decoder_window
        if not self.window:
            self.first_slot = nn.Parameter(torch.zeros(d))  # the slot before a chunk's first
        span = self.window or ch.size  # characters a decoder slot sees, its own included
        self.decoder = make_stack("transformer", dim=d, num_layers=ch.decoder_layers,
                                  num_heads=heads, hidden=-(-int(d * 8 / 3) // 64) * 64,
                                  eps=c.norm_eps, dropout=c.dropout, capacity=span,
                                  rope=Rope(d // heads, c.rope_base, 2 * max(span, c.context)))
        self.decoder_norm = nn.RMSNorm(d, eps=c.norm_eps)
        self.head = CodepointHead(d, bias=True)

    def tie_weights(self) -> None:
        pass

    @torch.no_grad()
    def init_weights(self) -> None:
        init_standard(self)
        self.start.zero_()
        if not self.window:
            self.first_slot.zero_()
        init_residuals(self.blocks, self.config.num_layers)
        init_residuals(self.decoder, self.config.chunks.decoder_layers)
        if self.config.chunks.encoder:
            self.encoder.load_state_dict(trained_encoder(self.config).state_dict())

    # -- chunks to contexts, contexts to character states ----------------------------------

    def _chars(self, chars: torch.Tensor) -> torch.Tensor:
        """Long[...] characters -> Float[..., W * byte_dim]: the encoder's character vectors."""
        return self.encoder.characters(char_bytes(chars, self.config.chunks.width))

    def _char_vectors(self, chars: torch.Tensor) -> torch.Tensor:
        """Long[...] -> Float[..., d]: characters as the decoder reads them."""
        return self.char_in(self._chars(chars))

    def _inputs(self, ids: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        """Long[B, T] -> Float[B, T, d]: the sequence decoder's character inputs, each
        character's vector plus the hash n-grams ending at it (``past``: Long[B, history]
        characters before ``ids``)."""
        x = self._char_vectors(ids)
        if self.ngrams is None:
            return x
        return x + self.ngram_dropout(self.ngrams(ids, past))

    def _contexts(self, chunks: torch.Tensor, layers: list | None = None,
                  position: int = 0) -> torch.Tensor:
        """Long[B, S, G] finished chunks -> Float[B, S, D]: the context after each."""
        x = self.chunk_in(self.encoder(char_bytes(chunks, self.config.chunks.width)))
        if layers is None:
            return self.norm(self.blocks(x))
        positions = torch.arange(position, position + x.shape[1], device=x.device)
        h = self.blocks.step(x, layers, positions)
        self.blocks.advance(layers, x.shape[1])
        return self.norm(h)

    def _slots(self, context: torch.Tensor, chars: torch.Tensor,
               previous: torch.Tensor) -> torch.Tensor:
        """The decoder over chunks: contexts Float[..., D], the characters before each
        slot Long[..., k] (k < G) and the last character of the chunk before Long[...] ->
        Float[..., k + 1, d], slot j predicting character j. Every slot reads the context;
        slot j > 0 also the character before it, and slot 0 ``previous`` where
        ``chunks.previous_char`` is set."""
        chars = self._char_vectors(chars)  # (..., k, d)
        first = self.first_slot.expand(*chars.shape[:-2], 1, -1)
        if self.config.chunks.previous_char:
            first = first + self._char_vectors(previous[..., None])
        x = self.context_in(context)[..., None, :] + torch.cat([first, chars], -2)
        lead = x.shape[:-2]  # (x: (..., k + 1, d))
        return self.decoder_norm(self.decoder(x.flatten(0, -3))).view(*lead, *x.shape[-2:])

    def _sequence(self, contexts: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The sequence decoder (``decoder_window`` > 0): slot i reads character i and the
        context after the chunks that end at or before it, Float[B, T // G + 1, D], and
        attends causally to the ``decoder_window`` slots up to its own, across chunk
        boundaries -> Float[B, T, d], slot i predicting character i + 1."""
        after = torch.arange(1, ids.shape[1] + 1, device=ids.device) // self.size
        x = self.context_in(contexts)[:, after] + self._inputs(ids)
        return self.decoder_norm(self.decoder(x, LocalWindow(self.window)))

    def forward(self, ids: torch.Tensor) -> CodepointScores:
        """Long[B, T] -> scores of characters 1..T (Scores of shape (B, T))."""
        B, T = ids.shape
        G = self.size
        chunks = chunk(ids, G, CP_PAD)  # (B, S, G); a partial last chunk's context unused
        count = T // G + 1  # chunks holding characters 0..T
        if count > chunks.shape[1]:
            chunks = torch.cat([chunks, chunks.new_full((B, 1, G), CP_PAD)], 1)
        contexts = torch.cat([self.start.expand(B, 1, -1),
                              self._contexts(chunks[:, :count - 1])], 1)  # (B, count, D)
        if self.window:
            return CodepointScores(self._sequence(contexts, ids), self.head)
        previous = torch.cat([chunks.new_full((B, 1), CP_PAD), chunks[:, :-1, -1]], 1)
        states = self._slots(contexts, chunks[..., :-1], previous)  # (B, count, G, d)
        return CodepointScores(states.flatten(1, 2)[:, 1:T + 1], self.head)

    def loss(self, ids: torch.Tensor, targets: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean cross-entropy in nats per character over targets that are not PAD."""
        if mask is not None:
            targets = targets.masked_fill(~mask, CP_PAD)
        return self.head.loss(self(ids).hidden, targets)

    # -- decoding ---------------------------------------------------------------------------

    def new_state(self, batch_size: int) -> ChunkState:
        weight = self.norm.weight
        empty = torch.zeros(batch_size, 0, dtype=torch.long, device=weight.device)
        decoder = (self.decoder.new_state(batch_size, weight.device, weight.dtype)
                   if self.window else None)
        return ChunkState(self.blocks.new_state(batch_size, weight.device, weight.dtype),
                          self.start.expand(batch_size, -1), empty,
                          empty.new_full((batch_size,), CP_PAD), decoder=decoder,
                          past=empty_past(self.ngrams, batch_size, weight.device))

    def step(self, state: ChunkState, ids: torch.Tensor
             ) -> tuple[CodepointScores, ChunkState]:
        """Feed Long[B, n] characters one at a time: a chunk that fills goes through the
        encoder and the backbone; each character's scores come from the decoder over the
        prefix of its chunk."""
        states = []
        for i in range(ids.shape[1]):
            state.chars = torch.cat([state.chars, ids[:, i:i + 1]], 1)
            if state.chars.shape[1] == self.size:
                state.context = self._contexts(state.chars[:, None], state.layers,
                                               state.position)[:, 0]
                state.position += 1
                state.previous = state.chars[:, -1]
                state.chars = state.chars[:, :0]
            if self.window:
                states.append(self._sequence_step(state, ids[:, i:i + 1]))
            else:
                states.append(self._slots(state.context, state.chars, state.previous)[:, -1])
        return CodepointScores(torch.stack(states, 1), self.head), state

    def _sequence_step(self, state: ChunkState, char: torch.Tensor) -> torch.Tensor:
        """One slot of the sequence decoder: Long[B, 1] -> Float[B, d]."""
        x = self.context_in(state.context)[:, None] + self._inputs(char, state.past)
        state.past = update_past(state.past, char)
        h = self.decoder.step(x, state.decoder, torch.tensor([state.fed], device=x.device))
        self.decoder.advance(state.decoder, 1)
        state.fed += 1
        return self.decoder_norm(h)[:, 0]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_byte(self) -> float:
        """Training FLOPs per character: 6 x the matmul weights each character goes through
        (chunk-level layers shared by the chunk's G characters) + attention mixing."""
        chunk_level = (self.encoder, self.chunk_in, self.blocks, self.context_in)
        per_chunk = sum(m.weight.numel() for part in chunk_level for m in part.modules()
                        if isinstance(m, nn.Linear))
        per_char = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        per_char -= per_chunk
        mixing = (self.blocks.mixing_flops(self.config.context // self.size) / self.size
                  + self.decoder.mixing_flops(self.window or self.size))
        return 6.0 * (per_char + per_chunk / self.size) + mixing


def trained_encoder(config: ModelConfig) -> ChunkEncoder:
    """The encoder of the autoencoder checkpoint ``config.chunks.encoder``; a one-line
    error when it is missing, not a tokun autoencoder, or of another geometry."""
    path, ch = config.chunks.encoder, config.chunks
    try:
        model = load(path)
    except UntokError as exc:
        raise CheckpointError(f"model.chunks.encoder: {exc}") from None
    if model.config.family != "tokun":
        raise CheckpointError(f"model.chunks.encoder: {path} holds a "
                              f"'{model.config.family}' model, not a tokun autoencoder "
                              "(train one with `untok train --preset tokun-4`)")
    theirs = model.config.chunks
    for key in GEOMETRY:
        if getattr(theirs, key) != getattr(ch, key):
            raise CheckpointError(f"model.chunks.encoder: {path} has chunks.{key} = "
                                  f"{getattr(theirs, key)!r}, this model "
                                  f"{getattr(ch, key)!r}; set model.chunks.{key} to match")
    return model.autoencoder.encoder


TINY = {"unit": "codepoint", "dim": 32, "num_layers": 2, "num_heads": 2, "context": 24,
        "chunks": {"levels": [4], "dim": 32, "byte_dim": 16, "decoder_dim": 32}}
register(Family(
    name="tokun-lm", model=TokunLM, units=chunk_units, validate=validate_chunks,
    capabilities=lambda c: Capabilities(),
    description="a causal model over tokun chunk vectors, characters decoded byte by byte",
    summary=lambda c: f"{chunk_summary('tokun-lm', c)}, backbone dim {c.dim} x "
                      f"{c.num_layers}, context {c.context}",
    examples={"transformer": TINY, "mmfree": {**TINY, "backbone": "mmfree"},
              "levels-2x2": {**TINY, "chunks": {**TINY["chunks"], "levels": [2, 2]}},
              "previous-char": {**TINY, "chunks": {**TINY["chunks"], "previous_char": True}},
              "sequence-decoder": {**TINY, "chunks": {**TINY["chunks"], "decoder_window": 6,
                                                      "decoder_layers": 2},
                                   "embedding": {"ngrams": [2, 3], "buckets": 64}}}))
