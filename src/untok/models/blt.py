"""BLT: a hierarchical byte model over dynamic patches (DESIGN 5.4).

    bytes -> local encoder (byte + hash n-gram embeddings, windowed self-attention)
          -> pooling (k query slots per patch, max-pool init, cross-attention to the
             patch's own bytes) -> global transformer, causal over patches
          -> local decoder (each byte cross-attends to the global outputs of the patches
             completed before its own patch, then windowed self-attention) -> byte head

Causality: patch starts depend on bytes <= t (see :mod:`untok.patching`); the byte at t
reads only patches that ended before t's patch began, so no global state it reads contains
t or later. Generation keeps a cache at every level: a new byte costs one encoder and one
decoder step, plus one pooling and one global step when it closes a patch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from untok.config import ModelConfig
from untok.errors import ConfigError
from untok.files import sha256_file
from untok.models.base import init_standard, next_unit_loss
from untok.models.flat import FlatLM
from untok.nn.attention import KVCache, local_causal_mask, rope_angles
from untok.nn.blocks import TransformerBlock
from untok.nn.embeddings import ByteEmbedding, HashNgramEmbedding, update_past
from untok.nn.mlgru import MMFreeBlock, forget_lower_bound
from untok.patching import Patcher, PatcherState, fit_threshold


class CrossAttention(nn.Module):
    """Queries from ``dim`` states attend to a memory of ``memory_dim`` states."""

    def __init__(self, dim: int, memory_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.RMSNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(memory_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def keys_values(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float[B, S, memory_dim] -> keys, values (B, H, S, d)."""
        B, S, _ = memory.shape
        k, v = self.kv(memory).view(B, S, 2, self.num_heads, -1).unbind(2)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x + attention(norm(x), k, v)``; ``mask`` Bool[B or 1, 1, T, S]."""
        B, T, D = x.shape
        q = self.q(self.norm(x)).view(B, T, self.num_heads, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return x + self.out(y.transpose(1, 2).reshape(B, T, D))


class PatchPooling(nn.Module):
    """k query slots per patch, initialised by max-pooling the patch's byte states, that
    cross-attend to those bytes only; the slots, concatenated, project to the global
    width."""

    def __init__(self, dim: int, num_heads: int, slots: int, global_dim: int) -> None:
        super().__init__()
        self.slots = slots
        self.slot_embed = nn.Parameter(torch.zeros(slots, dim))
        self.attn = CrossAttention(dim, dim, num_heads)
        self.proj = nn.Linear(slots * dim, global_dim, bias=False)

    def forward(self, h: torch.Tensor, patch_ids: torch.Tensor, num_patches: int
                ) -> torch.Tensor:
        """Byte states Float[B, T, D] and their patch index Long[B, T] -> Float[B, P, G]."""
        B, T, D = h.shape
        index = patch_ids[..., None].expand(B, T, D)
        pooled = h.new_zeros(B, num_patches, D).scatter_reduce(
            1, index, h, reduce="amax", include_self=False)  # (B, P, D)
        queries = (pooled[:, :, None] + self.slot_embed).flatten(1, 2)  # (B, P*k, D)
        slot_patch = torch.arange(num_patches, device=h.device).repeat_interleave(self.slots)
        mask = slot_patch[None, :, None] == patch_ids[:, None, :]  # (B, P*k, T)
        mask[:, :, 0] |= ~mask.any(-1)  # patches past the end: any key, never read
        k, v = self.attn.keys_values(h)
        slots = self.attn(queries, k, v, mask[:, None])
        return self.proj(slots.view(B, num_patches, self.slots * D))


class DecoderLayer(nn.Module):
    """Cross-attention to completed patches, then a windowed self-attention block."""

    def __init__(self, dim: int, num_heads: int, hidden: int, global_dim: int, eps: float,
                 dropout: float) -> None:
        super().__init__()
        self.cross = CrossAttention(dim, global_dim, num_heads)
        self.block = TransformerBlock(dim, num_heads, hidden, eps, dropout)


@dataclass
class BLTState:
    """Decoding state of one sequence at every level."""

    patcher: PatcherState
    past: torch.Tensor  # Long[1, history]: last bytes, for hash n-grams
    encoder: list[KVCache]
    decoder: list[KVCache]
    global_caches: list  # KVCache per layer, or the hidden vector (1, G) for mmfree
    patch_keys: list[tuple[torch.Tensor, torch.Tensor]]  # per decoder layer: (1, H, S, d)
    open_patch: list[torch.Tensor] = field(default_factory=list)  # encoder states (1, 1, D)
    position: int = 0
    patches: int = 0  # completed patches


class BLT(nn.Module):
    """Byte Latent Transformer satisfying the ByteLM protocol (one sequence per ``step``)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = c = config
        local = c.local
        hidden = -(-int(local.dim * 8 / 3) // 64) * 64
        entropy_model = None
        if c.patching.kind == "entropy":
            if c.patching.entropy_shape is None:
                raise ConfigError("the BLT config has no entropy model shape; build it "
                                  "with untok.models.build_model")
            entropy_model = FlatLM(c.patching.entropy_shape)
        self.patcher = Patcher(c.patching, entropy_model)
        self.embed = ByteEmbedding(c.vocab_size, local.dim)
        self.ngrams = HashNgramEmbedding(local.dim, c.embedding.ngrams, c.embedding.buckets) \
            if c.embedding.ngrams else None
        self.encoder = nn.ModuleList(
            TransformerBlock(local.dim, local.num_heads, hidden, c.norm_eps, c.dropout)
            for _ in range(local.encoder_layers))
        self.pool = PatchPooling(local.dim, local.num_heads, local.slots, c.dim)
        self.start = nn.Parameter(torch.zeros(1, 1, c.dim))  # what bytes of patch 0 read
        self.mmfree = c.backbone == "mmfree"
        self.blocks = nn.ModuleList(
            MMFreeBlock(c.dim, c.hidden_dim, forget_lower_bound(i, c.num_layers), c.norm_eps)
            if self.mmfree else
            TransformerBlock(c.dim, c.num_heads, c.hidden_dim, c.norm_eps, c.dropout)
            for i in range(c.num_layers))
        self.global_norm = nn.RMSNorm(c.dim, eps=c.norm_eps)
        self.decoder = nn.ModuleList(
            DecoderLayer(local.dim, local.num_heads, hidden, c.dim, c.norm_eps, c.dropout)
            for _ in range(local.decoder_layers))
        self.norm = nn.RMSNorm(local.dim, eps=c.norm_eps)
        self.head = nn.Linear(local.dim, c.vocab_size, bias=False)
        self.tie_weights()

    # -- building ------------------------------------------------------------------------

    @staticmethod
    def prepare_config(config: ModelConfig) -> ModelConfig:
        """Record the entropy model's shape and weights hash from its checkpoint."""
        patching = config.patching
        if patching.kind != "entropy" or patching.entropy_shape is not None:
            return config
        from untok.train.checkpoint import read_model_config, resolve_checkpoint

        path = resolve_checkpoint(patching.entropy_model)
        shape = read_model_config(path)
        patching = dataclasses.replace(patching, entropy_model=str(path),
                                       entropy_shape=shape,
                                       entropy_sha256=sha256_file(path / "model.safetensors"))
        config = dataclasses.replace(config, patching=patching)
        config.validate()
        return config

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.head.weight = self.embed.table.weight
        if self.patcher.entropy_model is not None:
            self.patcher.entropy_model.tie_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialise every trained parameter; copy the entropy model's weights in."""
        init_standard(self)
        nn.init.normal_(self.pool.slot_embed, std=0.02)
        nn.init.normal_(self.start, std=0.02)
        c = self.config
        for blocks, depth in ((self.encoder, c.local.encoder_layers),
                              (self.blocks, c.num_layers),
                              ([d.block for d in self.decoder], c.local.decoder_layers)):
            for block in blocks:
                for linear in block.residual_outputs():
                    nn.init.normal_(linear.weight, std=0.02 / math.sqrt(2 * max(depth, 1)))
        if self.patcher.entropy_model is not None:
            self._load_entropy_model()

    def _load_entropy_model(self) -> None:
        from safetensors.torch import load_model

        patching = self.config.patching
        weights = Path(patching.entropy_model) / "model.safetensors"
        if not weights.is_file():
            raise ConfigError(f"entropy model weights not found: {weights}")
        if patching.entropy_sha256 and sha256_file(weights) != patching.entropy_sha256:
            raise ConfigError(f"{weights} changed since this model was configured "
                              "(sha256 mismatch)")
        device = self.embed.table.weight.device
        load_model(self.patcher.entropy_model, str(weights), device=str(device))

    def fit_patching(self, sample: torch.Tensor) -> None:
        """Entropy patching without thresholds: fit the global threshold so that patches
        average ``patching.target_len`` bytes on ``sample`` (Long[B, T])."""
        patching = self.config.patching
        if patching.kind != "entropy" or patching.threshold is not None or \
                patching.relative is not None:
            return
        entropies = self.patcher.entropies(sample)
        threshold = fit_threshold(entropies, patching.target_len, patching.max_len)
        patching = dataclasses.replace(patching, threshold=round(threshold, 4))
        self.config = dataclasses.replace(self.config, patching=patching)
        self.patcher.config = patching

    # -- whole windows -----------------------------------------------------------------------

    def _embed(self, ids: torch.Tensor, past: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(ids)
        return x if self.ngrams is None else x + self.ngrams(ids, past)

    def _global(self, patches: torch.Tensor, caches: list[KVCache] | None = None,
                positions: torch.Tensor | None = None) -> torch.Tensor:
        """Patch vectors Float[B, P, G] -> global outputs (causal over patches). With
        ``caches`` (decoding one patch), they are updated in place."""
        if self.mmfree:
            for i, block in enumerate(self.blocks):
                if caches is None:
                    patches, _ = block(patches)
                else:
                    patches, caches[i] = block.step(patches, caches[i])
            return self.global_norm(patches)
        end = patches.shape[1] if positions is None else int(positions[-1]) + 1
        cos, sin = _rope(self, end, patches.device, self.config.head_dim, self.config.rope_base)
        if positions is None:
            cos, sin = cos[:end], sin[:end]
        else:
            cos, sin = cos[positions], sin[positions]
        for i, block in enumerate(self.blocks):
            patches = block(patches, cos, sin, None if caches is None else caches[i], positions)
        return self.global_norm(patches)

    def forward(self, ids: torch.Tensor, entropies: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Logits Float[B, T, V]; ``entropies`` (Float[B, T]) are precomputed ones for
        entropy patching (see :mod:`untok.data.entropies`), else the patcher runs here."""
        B, T = ids.shape
        local = self.config.local
        if entropies is not None:
            starts = self.patcher.starts(ids, entropies)
        else:
            starts, _ = self.patcher(ids)
        patch_ids = starts.long().cumsum(1) - 1  # (B, T): the patch of every byte
        num_patches = int(patch_ids.max()) + 1
        cos, sin = _rope(self, T, ids.device, local.dim // local.num_heads,
                         self.config.rope_base)
        cos, sin = cos[:T], sin[:T]
        window = local_causal_mask(T, local.window, ids.device)
        h = self._embed(ids)  # (B, T, D)
        for block in self.encoder:
            h = block(h, cos, sin, mask=window)
        g = self._global(self.pool(h, patch_ids, num_patches))  # (B, P, G)
        memory = torch.cat([self.start.expand(B, 1, -1), g], dim=1)  # (B, 1 + P, G)
        # byte t reads the start vector and patches 0 .. patch(t) - 1
        sees = torch.arange(num_patches + 1, device=ids.device)[None, None, :] <= \
            patch_ids[:, :, None]
        x = h
        for layer in self.decoder:
            k, v = layer.cross.keys_values(memory)
            x = layer.cross(x, k, v, sees[:, None])
            x = layer.block(x, cos, sin, mask=window)
        return self.head(self.norm(x))

    def loss(self, ids: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None,
             entropies: torch.Tensor | None = None) -> torch.Tensor:
        return next_unit_loss(self(ids, entropies), targets, mask)

    # -- one byte at a time --------------------------------------------------------------------

    def new_state(self, batch_size: int) -> BLTState:
        if batch_size != 1:
            raise ValueError("BLT decodes one sequence at a time (patches close at "
                             "different bytes in different sequences)")
        c, local = self.config, self.config.local
        weight = self.embed.table.weight
        device, dtype = weight.device, weight.dtype

        def caches(n: int, heads: int, capacity: int, head_dim: int) -> list[KVCache]:
            return [KVCache.empty(1, heads, capacity, head_dim, device, dtype)
                    for _ in range(n)]

        local_head = local.dim // local.num_heads
        start = self.start.expand(1, 1, -1)
        history = self.ngrams.history if self.ngrams is not None else 0
        return BLTState(
            patcher=self.patcher.new_state(1, device),
            past=torch.full((1, history), -1, dtype=torch.long, device=device),
            encoder=caches(local.encoder_layers, local.num_heads, local.window, local_head),
            decoder=caches(local.decoder_layers, local.num_heads, local.window, local_head),
            global_caches=[torch.zeros(1, c.dim, device=device, dtype=dtype)
                           for _ in range(c.num_layers)] if self.mmfree else
            caches(c.num_layers, c.num_heads, c.context, c.head_dim),
            patch_keys=[layer.cross.keys_values(start) for layer in self.decoder])

    def step(self, state: BLTState, ids: torch.Tensor) -> tuple[torch.Tensor, BLTState]:
        """Feed Long[1, n] bytes one at a time; return their logits Float[1, n, V]."""
        logits = [self._step_one(state, ids[:, i]) for i in range(ids.shape[1])]
        return torch.stack(logits, dim=1), state

    def _step_one(self, state: BLTState, byte: torch.Tensor) -> torch.Tensor:
        local = self.config.local
        start, _ = self.patcher.step(state.patcher, byte)
        if bool(start[0]) and state.open_patch:
            self._close_patch(state)
        t = torch.tensor([state.position], device=byte.device)
        cos, sin = _rope(self, state.position + 1, byte.device, local.dim // local.num_heads,
                         self.config.rope_base)
        cos, sin = cos[t], sin[t]
        h = self._embed(byte[:, None], state.past)  # (1, 1, D)
        state.past = update_past(state.past, byte[:, None])
        for block, cache in zip(self.encoder, state.encoder, strict=True):
            h = block(h, cos, sin, cache, t)
        state.open_patch.append(h)
        x = h
        for layer, cache, (k, v) in zip(self.decoder, state.decoder, state.patch_keys,
                                        strict=True):
            x = layer.cross(x, k, v)
            x = layer.block(x, cos, sin, cache, t)
        state.position += 1
        return self.head(self.norm(x))[:, 0]

    def _close_patch(self, state: BLTState) -> None:
        """Pool the finished patch, run one global step, expose it to the decoder."""
        h = torch.cat(state.open_patch, dim=1)  # (1, L, D)
        patch_ids = torch.zeros(1, h.shape[1], dtype=torch.long, device=h.device)
        vector = self.pool(h, patch_ids, 1)  # (1, 1, G)
        position = torch.tensor([state.patches], device=h.device)
        g = self._global(vector, state.global_caches, position)
        keep = self.config.context  # the decoder reads at most this many patches
        for i, layer in enumerate(self.decoder):
            k, v = layer.cross.keys_values(g)
            old_k, old_v = state.patch_keys[i]
            old_k = torch.cat([old_k[:, :, :1], old_k[:, :, 1:][:, :, -keep + 1:], k], dim=2)
            old_v = torch.cat([old_v[:, :, :1], old_v[:, :, 1:][:, :, -keep + 1:], v], dim=2)
            state.patch_keys[i] = (old_k, old_v)
        state.patches += 1
        state.open_patch = []

    # -- accounting ----------------------------------------------------------------------------

    def num_params(self) -> int:
        """Trained parameters (the frozen entropy model is not counted)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def mean_patch_len_hint(self) -> float:
        p = self.config.patching
        return {"fixed": p.patch_size, "space": 5.0}.get(p.kind, p.target_len)

    def flops_per_byte(self) -> float:
        """Training FLOPs per byte: 6 x local matmul weights, 6 x global weights per patch
        (patches of the expected mean length), attention, and the entropy model's forward
        (2 x its weights)."""
        local = self.config.local

        def matmul(modules) -> int:
            return sum(m.weight.numel() for mod in modules for m in mod.modules()
                       if isinstance(m, nn.Linear))

        per_byte = 6 * matmul([self.encoder, self.decoder, self.head])
        per_patch = 6 * matmul([self.blocks, self.pool])
        attention = 6 * (local.encoder_layers + 2 * local.decoder_layers) * local.window * \
            local.dim
        flops = per_byte + attention + per_patch / self.mean_patch_len_hint()
        if self.patcher.entropy_model is not None:
            flops += self.patcher.entropy_model.flops_per_byte() / 3
        return float(flops)


def _rope(model: nn.Module, end: int, device: torch.device, head_dim: int, base: float
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE cos/sin tables covering [0, end) for ``head_dim``, cached on ``model``."""
    tables = model.__dict__.setdefault("_rope_tables", {})
    table = tables.get(head_dim)
    if table is None or table[0].shape[0] < end or table[0].device != device:
        size = max(end, 2 * (table[0].shape[0] if table is not None else 0),
                   2 * model.config.context)
        table = rope_angles(torch.arange(size, device=device), head_dim, base)
        tables[head_dim] = table
    return table
