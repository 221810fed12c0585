"""BLT decoding, one byte at a time, with a cache at every level.

A new byte costs one encoder and one decoder step, plus one patch step (pooling, the
global step and the decoder's keys and values of its output) when it closes a patch.
Every patcher but ``learned`` decides whether a byte starts a patch before the byte is
encoded (from the bytes and, for entropy patching, the entropy model's prediction), so
the finished patch closes first and the byte then runs through the encoder and the
decoder in one call (:meth:`BLTDecoding.byte_step`); learned patching asks the router,
which reads the byte's encoder state, in between (:meth:`~BLTDecoding.encode_byte`, then
:meth:`~BLTDecoding.decode_byte`). These steps and the patch step
(:meth:`~BLTDecoding.patch_step`) take tensors only, with static shapes once
:func:`untok.generate.compile_decoding` has compiled them: the open patch's encoder states
wait in a buffer of ``max_len`` rows, so pooling a patch of any length is one shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from untok.models.flat import STATIC_TABLES
from untok.nn.attention import KVCache
from untok.nn.embeddings import embed_with_ngrams, empty_past, update_past
from untok.nn.patch_pooling import PatchMemory
from untok.nn.routing import smooth_one
from untok.patching import PatcherState
from untok.scores import Logits

Memory = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]  # see PatchMemory.read


@dataclass
class BLTState:
    """Decoding state of one sequence at every level."""

    patcher: PatcherState
    past: torch.Tensor  # Long[1, history]: last bytes, for hash n-grams
    encoder: list[KVCache]
    decoder: list[KVCache]
    global_caches: list  # the global backbone's state (see untok.nn.stacks)
    memory: PatchMemory  # what the decoder's cross-attention reads
    open_states: torch.Tensor  # Float[1, max_len, D]: the open patch's encoder states
    smoothed: torch.Tensor  # Float[1, 1, G]: learned patching's last smoothed global output
    open_len: int = 0  # rows of open_states filled
    position: int = 0
    # learned patching: the last encoder state (1, 1, D), the boundary probability of the
    # open patch's first byte (1,)
    last_state: torch.Tensor | None = None
    open_weight: torch.Tensor | None = None

    @property
    def patches(self) -> int:
        """Completed patches."""
        return self.memory.patches


class BLTDecoding:
    """``new_state`` and ``step`` of :class:`untok.models.blt.BLT` (one sequence)."""

    @property
    def compiled_steps(self) -> tuple[str, ...]:
        """What :func:`untok.generate.compile_decoding` compiles (each when first called);
        a MatMul-free global model stays eager."""
        steps = ("byte_step", "encode_byte", "decode_byte")
        return (*steps, "patch_step") if self.blocks.compilable else steps

    def new_state(self, batch_size: int) -> BLTState:
        if batch_size != 1:
            raise ValueError("BLT decodes one sequence at a time (patches close at "
                             "different bytes in different sequences)")
        local = self.config.local
        weight = self.embed.table.weight
        device, dtype = weight.device, weight.dtype
        static = self._static()
        local_head = local.dim // local.num_heads
        start = self.start.expand(1, 1, -1)
        return BLTState(
            patcher=self.patcher.new_state(1, device),
            past=empty_past(self.ngrams, 1, device),
            encoder=self.encoder.new_state(1, device, dtype, static),
            decoder=[KVCache.empty(1, local.num_heads, local.window, local_head, device, dtype,
                                   static) for _ in range(local.decoder_layers)],
            global_caches=self.blocks.new_state(1, device, dtype, static),
            memory=PatchMemory.start([layer.cross.keys_values(start) for layer in self.decoder],
                                     self.config.context),
            open_states=weight.new_zeros(1, self.patcher.max_len, local.dim),
            smoothed=weight.new_zeros(1, 1, self.config.dim))

    def step(self, state: BLTState, ids: torch.Tensor) -> tuple[Logits, BLTState]:
        """Feed Long[1, n] bytes one at a time; return their scores (shape (1, n))."""
        # (n, 1) with standard strides: a compiled step recompiles for a slice's strides
        columns = ids.t().clone(memory_format=torch.contiguous_format)
        logits = [self._step_one(state, column[:, None]) for column in columns]
        return Logits(torch.stack(logits, dim=1), self.units), state

    # -- the steps compile_decoding compiles ---------------------------------------------------

    def encode_byte(self, byte: torch.Tensor, positions: torch.Tensor,
                    tables: tuple[torch.Tensor, torch.Tensor], encoder: list[KVCache],
                    past: torch.Tensor) -> torch.Tensor:
        """The encoder state Float[1, 1, D] of one new byte Long[1, 1] at ``positions``
        (Long[1]), filling the encoder's caches."""
        return self._encode_one(byte, positions, tables, encoder, past)

    def decode_byte(self, h: torch.Tensor, positions: torch.Tensor,
                    tables: tuple[torch.Tensor, torch.Tensor], decoder: list[KVCache],
                    memory: Memory) -> torch.Tensor:
        """Next-byte logits Float[1, V] from the encoder state ``h`` (Float[1, 1, D]):
        cross-attention to the completed patches (``memory``, see :meth:`PatchMemory.read`)
        and the decoder's windowed layers, filling their caches."""
        return self._decode_one(h, positions, tables, decoder, memory)

    def byte_step(self, byte: torch.Tensor, positions: torch.Tensor,
                  tables: tuple[torch.Tensor, torch.Tensor], encoder: list[KVCache],
                  decoder: list[KVCache], past: torch.Tensor, memory: Memory
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode_byte` and :meth:`decode_byte` in one call: (h, logits)."""
        h = self._encode_one(byte, positions, tables, encoder, past)
        return h, self._decode_one(h, positions, tables, decoder, memory)

    def patch_step(self, states: torch.Tensor, outside: torch.Tensor, positions: torch.Tensor,
                   tables: tuple[torch.Tensor, ...], caches: list, weight: torch.Tensor,
                   smoothed: torch.Tensor) -> tuple[torch.Tensor, list]:
        """Close a patch: pool its encoder states (the rows of ``states`` Float[1, L, D]
        where ``outside`` Long[1, L] is 0), run the global model on it at patch
        ``positions`` (Long[1]), filling its caches, and (learned patching) smooth the
        output with ``weight`` Float[1] and the last ``smoothed`` one. The global output
        Float[1, 1, G] and the decoder's keys and values of it, per layer."""
        vector = self.pool(states, outside, 2)[:, :1]  # rows outside: a patch of their own
        g = self.global_norm(self.blocks.step(vector, caches, positions, tables))
        if self.router is not None:  # smoothed starts at zeros: the first output w * g
            g = smooth_one(g, weight, smoothed)
        return g, [layer.cross.keys_values(g) for layer in self.decoder]

    def _encode_one(self, byte, positions, tables, encoder, past) -> torch.Tensor:
        h = embed_with_ngrams(self.embed, self.ngrams, byte, past)
        return self.encoder.step(h, encoder, positions, tables)

    def _decode_one(self, h, positions, tables, decoder, memory) -> torch.Tensor:
        cos, sin = tables[0][positions], tables[1][positions]
        x = h
        for layer, cache, (k, v, mask) in zip(self.decoder, decoder, memory, strict=True):
            x = layer.cross(x, k, v, mask)
            x = layer.block(x, cos, sin, cache, positions)
        return self.head(self.norm(x))[:, 0]

    # -- one byte -----------------------------------------------------------------------------

    def _static(self) -> bool:
        return getattr(self, "static_decoding", False)  # set by compile_decoding

    def _tables(self, stack, end: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """RoPE tables up to ``end``; a compiled step takes them whole (see FlatLM.step)."""
        return stack.step_tables(max(end, STATIC_TABLES) if self._static() else end, device)

    def _step_one(self, state: BLTState, byte: torch.Tensor) -> torch.Tensor:
        """Logits Float[1, V] after one byte Long[1, 1]."""
        t = torch.tensor([state.position], device=byte.device)
        tables = self._tables(self.encoder, state.position + 1, byte.device)
        if self.router is None:  # the byte's patch start is known before it is encoded
            self._patch_start(state, byte, None)
            h, logits = self.byte_step(byte, t, tables, state.encoder, state.decoder,
                                       state.past, state.memory.read(self._static()))
        else:
            h = self.encode_byte(byte, t, tables, state.encoder, state.past)
            previous = None if state.last_state is None else state.last_state[:, 0]
            prob, state.last_state = self.router.step(h[:, 0], previous), h
            self._patch_start(state, byte, prob)
            logits = self.decode_byte(h, t, tables, state.decoder,
                                      state.memory.read(self._static()))
        state.open_states[:, state.open_len] = h[:, 0]
        state.open_len += 1
        state.past = update_past(state.past, byte)
        for cache in (*state.encoder, *state.decoder):
            cache.advance(1)
        state.position += 1
        return logits

    def _patch_start(self, state: BLTState, byte: torch.Tensor,
                     prob: torch.Tensor | None) -> None:
        """Ask the patcher; when ``byte`` starts a patch, close the open one."""
        start, _ = self.patcher.step(state.patcher, byte[:, 0], prob)
        if bool(start[0]):
            if state.open_len:
                self._close_patch(state)
            state.open_weight = prob

    def _close_patch(self, state: BLTState) -> None:
        """Pool the finished patch, run one global step, expose it to the decoder."""
        device = state.open_states.device
        rows = torch.arange(state.open_states.shape[1], device=device)
        outside = (rows >= state.open_len).long()[None]  # (1, max_len)
        position = torch.tensor([state.patches], device=device)
        tables = self._tables(self.blocks, state.patches + 1, device)
        weight = state.smoothed.new_ones(1) if state.open_weight is None else state.open_weight
        g, kvs = self.patch_step(state.open_states, outside, position, tables,
                                 state.global_caches, weight, state.smoothed)
        self.blocks.advance(state.global_caches, 1)
        if self.router is not None:
            state.smoothed = g.clone()  # (a CUDA graph's output is overwritten by the next)
        state.memory.add(kvs)
        state.open_len = 0
