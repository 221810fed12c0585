"""The BLT family: a hierarchical byte model over dynamic patches.

    bytes -> local encoder (byte + hash n-gram embeddings, windowed self-attention)
          -> pooling (k query slots per patch, max-pool init, cross-attention to the
             patch's own bytes) -> global transformer, causal over patches
          -> local decoder (each byte cross-attends to the global outputs of the patches
             completed before its own patch, then windowed self-attention) -> byte head

Patch starts come from a rule (:mod:`untok.patching`) or, with learned patching, from a
router on the encoder's states (:mod:`untok.nn.routing`), whose global outputs then reach
the decoder through a moving average over patches.

Causality: patch starts depend on bytes <= t (see :mod:`untok.patching`); the byte at t
reads only patches that ended before t's patch began, so no global state it reads contains
t or later. Generation (:mod:`untok.models.blt_decoding`) keeps a cache at every level.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from untok.checkpoint import read_model_config, resolve_checkpoint
from untok.config import ModelConfig
from untok.config.schema import check
from untok.data.loader import TrainSampler, UnitStream
from untok.errors import ConfigError
from untok.files import sha256_file
from untok.models.base import init_residuals, init_standard, next_unit_loss
from untok.models.blt_decoding import BLTDecoding
from untok.models.flat import FlatLM
from untok.models.registry import (
    Capabilities,
    Family,
    TrainingData,
    load,
    register,
    shape_summary,
)
from untok.nn.attention import LocalWindow, Rope
from untok.nn.blocks import TransformerBlock
from untok.nn.embeddings import (
    ByteEmbedding,
    embed_with_ngrams,
    make_ngrams,
)
from untok.nn.patch_pooling import CrossAttention, PatchPooling
from untok.nn.routing import (
    BoundaryRouter,
    confidence,
    patch_weights,
    ratio_loss,
    smooth_patches,
)
from untok.nn.stacks import TransformerStack, make_stack
from untok.patching import Patcher, fit_threshold
from untok.scores import Logits
from untok.units import VOCAB_SIZE, ByteUnits, Units


class DecoderLayer(nn.Module):
    """Cross-attention to completed patches, then a windowed self-attention block."""

    def __init__(self, dim: int, num_heads: int, hidden: int, global_dim: int, eps: float,
                 dropout: float) -> None:
        super().__init__()
        self.cross = CrossAttention(dim, global_dim, num_heads)
        self.block = TransformerBlock(dim, num_heads, hidden, eps, dropout)


class BLT(BLTDecoding, nn.Module):
    """Byte Latent Transformer satisfying the ByteLM protocol (one sequence per ``step``)."""


    def __init__(self, config: ModelConfig, units: Units | None = None) -> None:
        super().__init__()
        self.config = c = config
        self.units = units or ByteUnits(c.vocab_size)
        local = c.local
        hidden = -(-int(local.dim * 8 / 3) // 64) * 64
        entropy_model = None
        if c.patching.kind == "entropy":
            if c.patching.entropy_shape is None:
                raise ConfigError("the BLT config has no entropy model shape; build it "
                                  "with untok.models.build_model")
            entropy_model = FlatLM(c.patching.entropy_shape)
        self.patcher = Patcher(c.patching, entropy_model)
        self.router = BoundaryRouter(local.dim) if c.patching.kind == "learned" else None
        if self.router is not None:  # what `untok patches` and the playground ask
            self.patcher.boundary_probs = self.boundary_probs
        self.nll_loss = self.router is None  # learned: the loss adds the ratio loss
        self.embed = ByteEmbedding(c.vocab_size, local.dim)
        self.ngrams = make_ngrams(local.dim, c.embedding.ngrams, c.embedding.buckets)
        self.local_rope = Rope(local.dim // local.num_heads, c.rope_base, 2 * c.context)
        self.encoder = TransformerStack(
            [TransformerBlock(local.dim, local.num_heads, hidden, c.norm_eps, c.dropout)
             for _ in range(local.encoder_layers)], self.local_rope, local.window)
        self.pool = PatchPooling(local.dim, local.num_heads, local.slots, c.dim)
        self.start = nn.Parameter(torch.zeros(1, 1, c.dim))  # what bytes of patch 0 read
        self.blocks = make_stack(c.backbone, dim=c.dim, num_layers=c.num_layers,
                                 num_heads=c.num_heads, kv_heads=c.kv_heads,
                                 hidden=c.hidden_dim, eps=c.norm_eps,
                                 dropout=c.dropout, capacity=c.context,
                                 rope=Rope(c.head_dim, c.rope_base, 2 * c.context))
        self.global_norm = nn.RMSNorm(c.dim, eps=c.norm_eps)
        self.decoder = nn.ModuleList(
            DecoderLayer(local.dim, local.num_heads, hidden, c.dim, c.norm_eps, c.dropout)
            for _ in range(local.decoder_layers))
        self.norm = nn.RMSNorm(local.dim, eps=c.norm_eps)
        self.head = nn.Linear(local.dim, c.vocab_size, bias=False)
        self.tie_weights()

    # -- building ------------------------------------------------------------------------

    def tie_weights(self) -> None:
        if self.config.head in ("auto", "tied"):
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
        init_residuals(self.encoder, c.local.encoder_layers)
        init_residuals(self.blocks, c.num_layers)
        init_residuals([d.block for d in self.decoder], c.local.decoder_layers)
        if self.router is not None:
            self.router.reset_parameters()
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

    # -- whole windows -----------------------------------------------------------------------

    def forward(self, ids: torch.Tensor, entropies: torch.Tensor | None = None) -> Logits:
        """Scores of the next byte at every position of ``ids`` Long[B, T]."""
        return Logits(self._run(ids, entropies)[0], self.units)

    def _encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Encoder states Float[B, T, D]."""
        window = LocalWindow(self.config.local.window)
        return self.encoder(embed_with_ngrams(self.embed, self.ngrams, ids), window)

    @torch.no_grad()
    def boundary_probs(self, ids: torch.Tensor) -> torch.Tensor:
        """Learned patching: the router's boundary probabilities Float[B, T]."""
        return self.router(self._encode(ids))

    def _run(self, ids: torch.Tensor, entropies: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits Float[B, T, V] and, for learned patching, the ratio loss. ``entropies``
        (Float[B, T]) are precomputed ones for entropy patching (see
        :mod:`untok.data.entropies`), else the patcher runs here."""
        B, T = ids.shape
        h = self._encode(ids)  # (B, T, D)
        probs = self.router(h) if self.router is not None else None
        if probs is not None:
            starts = self.patcher.starts(ids, probs=probs)
        elif entropies is not None:
            starts = self.patcher.starts(ids, entropies)
        else:
            starts, _ = self.patcher(ids)
        patch_ids = starts.long().cumsum(1) - 1  # (B, T): the patch of every byte
        num_patches = int(patch_ids.max()) + 1
        g = self.global_norm(self.blocks(self.pool(h, patch_ids, num_patches)))  # (B, P, G)
        scale = ratio = None
        if probs is not None:
            g = smooth_patches(g, patch_weights(probs, starts, num_patches))
            scale = confidence(probs)
            ratio = ratio_loss(probs, starts, self.config.patching.target_len)
        memory = torch.cat([self.start.expand(B, 1, -1), g], dim=1)  # (B, 1 + P, G)
        # byte t reads the start vector and patches 0 .. patch(t) - 1
        sees = torch.arange(num_patches + 1, device=ids.device)[None, None, :] <= \
            patch_ids[:, :, None]
        cos, sin = self.local_rope.first(T, ids.device)
        window = LocalWindow(self.config.local.window)
        x = h
        for layer in self.decoder:
            k, v = layer.cross.keys_values(memory)
            x = layer.cross(x, k, v, sees[:, None], scale)
            x = layer.block(x, cos, sin, mask=window)
        return self.head(self.norm(x)), ratio

    def loss(self, ids: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None,
             entropies: torch.Tensor | None = None) -> torch.Tensor:
        logits, ratio = self._run(ids, entropies)
        loss = next_unit_loss(logits, targets, mask)
        if ratio is not None:
            loss = loss + self.config.patching.ratio_weight * ratio
        return loss

    # -- accounting ----------------------------------------------------------------------------

    def num_params(self) -> int:
        """Trained parameters (the frozen entropy model is not counted)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def mean_patch_len_hint(self) -> float:
        p = self.config.patching
        return {"fixed": p.patch_size, "space": 5.0}.get(p.kind, p.target_len)

    @staticmethod
    def _matmul_weights(modules: list[nn.Module]) -> int:
        return sum(m.weight.numel() for mod in modules for m in mod.modules()
                   if isinstance(m, nn.Linear))

    def global_flops_per_byte(self) -> float:
        """Training FLOPs per byte of the global model and the pooling: 6 x their weights
        once per patch of the expected mean length."""
        return 6 * self._matmul_weights([self.blocks, self.pool]) / self.mean_patch_len_hint()

    def flops_per_byte(self) -> float:
        """Training FLOPs per byte: 6 x local matmul weights, the global share
        (:meth:`global_flops_per_byte`), attention, and the entropy model's forward (2 x its
        weights)."""
        local = self.config.local
        routed = [self.router] if self.router is not None else []
        per_byte = 6 * self._matmul_weights([self.encoder, self.decoder, self.head, *routed])
        attention = 6 * (local.encoder_layers + 2 * local.decoder_layers) * local.window * \
            local.dim
        flops = per_byte + attention + self.global_flops_per_byte()
        if self.patcher.entropy_model is not None:
            flops += self.patcher.entropy_model.flops_per_byte() / 3
        return float(flops)


def prepare_blt(config: ModelConfig, data: TrainingData | None) -> ModelConfig:
    """Entropy patching: record the entropy model's shape and weights hash from its
    checkpoint; given training data and no thresholds, fit the global threshold so that
    patches average ``patching.target_len`` bytes on the first 16 windows of the train
    split (deterministic: a resumed run fits the same one)."""
    patching = config.patching
    if patching.kind != "entropy":
        return config
    if patching.entropy_shape is None:
        path = resolve_checkpoint(patching.entropy_model)
        patching = dataclasses.replace(patching, entropy_model=str(path),
                                       entropy_shape=read_model_config(path),
                                       entropy_sha256=sha256_file(path / "model.safetensors"))
    if data is not None and patching.threshold is None and patching.relative is None:
        sampler = TrainSampler(UnitStream(data.store, "train"), config.context, 16, seed=0)
        sample = sampler.next_batch()[0].to(data.device)
        entropy_model = load(patching.entropy_model, data.device)
        entropies = Patcher(patching, entropy_model).entropies(sample)
        threshold = fit_threshold(entropies, patching.target_len, patching.max_len)
        patching = dataclasses.replace(patching, threshold=round(threshold, 4))
    config = dataclasses.replace(config, patching=patching)
    config.validate()
    return config


def check_entropy_shape(shape: ModelConfig, where: object = "the entropy model") -> None:
    """Entropy patching runs a flat byte transformer (the BLT rebuilds it from its shape);
    anything else is a one-line error naming ``where`` (e.g. the checkpoint)."""
    check(shape.family == "flat" and shape.backbone == "transformer",
          f"{where} must be a flat byte transformer to drive entropy patching (got family "
          f"'{shape.family}', backbone '{shape.backbone}'); train one with --preset "
          "entropy-small")
    check(shape.unit == "byte" and shape.vocab_size == VOCAB_SIZE,
          f"{where} must read bytes to drive entropy patching (vocabulary {VOCAB_SIZE}, "
          f"got unit '{shape.unit}', vocabulary {shape.vocab_size})")


def validate_blt(c: ModelConfig) -> None:
    """The BLT family's rules."""
    c.patching.validate()
    if c.patching.entropy_shape is not None:
        check_entropy_shape(c.patching.entropy_shape)
    c.local.validate()
    c.require_defaults(("words",), "applies to T-Free models only (family 'tfree')")
    c.require_defaults(("chunks",), "applies to tokun models only (families 'tokun', 'tokun-lm')")
    c.require_defaults(("unit", "embedding.kind", "attention"), "an option of the flat "
                       "transformer (family 'flat', backbone 'transformer')")
    if c.head not in ("auto", "tied", "linear"):
        raise ConfigError(f"model.head = '{c.head}' is not a BLT head: use 'tied' or 'linear'")


def blt_capabilities(config: ModelConfig) -> Capabilities:
    return Capabilities(can_compress=True, batch_decoding=False, patches=True,
                        compiled_decoding=True,  # the byte-level stacks (the global is eager)
                        export_ternary=config.backbone == "mmfree")


TINY = {"dim": 32, "num_layers": 2, "num_heads": 2, "context": 48,
        "embedding": {"ngrams": [3, 4], "buckets": 64},
        "local": {"dim": 16, "num_heads": 2, "encoder_layers": 1, "decoder_layers": 1,
                  "window": 8, "slots": 2}}
register(Family(
    name="blt", model=BLT, units=lambda config: ByteUnits(config.vocab_size),
    capabilities=blt_capabilities, validate=validate_blt, prepare=prepare_blt,
    description="byte patches -> a global model over patches -> bytes",
    summary=lambda c: f"{shape_summary('blt', c)}  (global over patches; local dim "
                      f"{c.local.dim}, {c.local.encoder_layers}+{c.local.decoder_layers} "
                      "layers)",
    examples={
        "space": TINY,
        "fixed": {**TINY, "patching": {"kind": "fixed", "patch_size": 3}},
        "learned": {**TINY, "patching": {"kind": "learned", "target_len": 3, "max_len": 8}},
        "mmfree": {**TINY, "backbone": "mmfree", "head": "linear"},
    }))
