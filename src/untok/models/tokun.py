"""The tokun family: a chunk autoencoder over characters, trained and scored like any
untok model but not a language model.

    text -> characters (code points; invalid UTF-8 bytes are the escape code points) ->
    each character's ``width`` UTF-32-BE bytes -> chunks of G = prod(levels) characters ->
    one vector of ``chunks.dim`` per chunk (untok.nn.chunk_autoencoder) -> the bytes again

It is trained on reconstruction (cross-entropy per code byte, padding included) and evaluated by
*strict accuracy*: a character counts only if all of its bytes come back right
(:mod:`untok.reconstruction`). Its encoder is what a ``tokun-lm`` chunk language model can
start from (``model.chunks.encoder``). It has no next-unit scores, so the registry marks it
``language_model = False`` and generation and compression refuse it with one line.
"""

from __future__ import annotations

import torch
from torch import nn

from untok.chunks import char_bytes, char_ids, chunk
from untok.config import ModelConfig
from untok.errors import ConfigError
from untok.models.base import init_standard
from untok.models.registry import Capabilities, Family, register
from untok.nn.checked_decoding import CheckedDecoding
from untok.nn.chunk_autoencoder import ChunkAutoencoder, reconstruction_loss
from untok.units import CP_PAD, CodepointUnits

REPLACEMENT = 0xFFFD  # what a decoded code no character has becomes


def chunk_units(config: ModelConfig) -> CodepointUnits:
    return CodepointUnits()


def validate_chunks(c: ModelConfig) -> None:
    """The rules both tokun families share."""
    c.chunks.validate()
    if c.unit != "codepoint":
        raise ConfigError("tokun models read characters: set model.unit = \"codepoint\" "
                          "(the tokun presets do)")
    if c.context % c.chunks.size:
        raise ConfigError(f"model.context ({c.context}) must be a multiple of the chunk "
                          f"size ({c.chunks.size} characters)")
    if c.chunks.decoder_window < 0 or (c.chunks.decoder_window and c.chunks.previous_char):
        raise ConfigError("model.chunks.decoder_window must be >= 0 (0: the decoder sees "
                          "its chunk only), and with a window previous_char must be off "
                          "(every slot reads the character before it already)")
    c.require_defaults(("patching", "local"), "applies to BLT models only")
    c.require_defaults(("words",), "applies to T-Free models only (family 'tfree')")
    c.require_defaults(("embedding.kind", "embedding.waves", "attention", "head"),
                       "an option of the flat family")
    if c.family == "tokun" or not c.chunks.decoder_window:
        c.require_defaults(("embedding",), "hash n-grams feed the sequence decoder of a "
                           "tokun-lm only: set model.chunks.decoder_window")


def chunk_summary(kind: str, c: ModelConfig) -> str:
    ch = c.chunks
    levels = "x".join(map(str, ch.levels))
    return f"{kind:6s}  chunks of {levels} chars ({ch.width} bytes each) -> {ch.dim} dims"


def with_random_chars(ids: torch.Tensor, share: float) -> torch.Tensor:
    """``ids`` with about ``share`` of them replaced by random codes: 4 in 5 anywhere in
    the Basic Multilingual Plane, the rest anywhere up to PAD (every plane, the escapes
    and the specials), so rare and unseen characters are trained as often as any."""
    anywhere = torch.randint(0, CP_PAD + 1, ids.shape, device=ids.device)
    bmp = torch.randint(0, 0x10000, ids.shape, device=ids.device)
    codes = torch.where(torch.rand(ids.shape, device=ids.device) < 0.8, bmp, anywhere)
    return torch.where(torch.rand(ids.shape, device=ids.device) < share, codes, ids)


class TokunAutoencoder(nn.Module):
    """Characters <-> one vector per chunk of ``chunks.size`` characters.

    ``loss(ids)`` is the reconstruction cross-entropy per code byte (nats) of the chunks of
    ``ids`` Long[B, T] (T a multiple of the chunk size).
    """

    def __init__(self, config: ModelConfig, units: CodepointUnits | None = None) -> None:
        super().__init__()
        self.config = config
        self.units = units or CodepointUnits()
        ch = config.chunks
        self.autoencoder = ChunkAutoencoder(ch.width, ch.levels, ch.dim, ch.byte_dim,
                                            ch.char_dim)
        self.nll_loss = False  # a reconstruction loss, not next-unit cross-entropy

    def tie_weights(self) -> None:
        pass

    @torch.no_grad()
    def init_weights(self) -> None:
        init_standard(self)

    def chunk_bytes(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Long[B, T] characters -> their bytes Long[B, S, G, W] and which characters are
        not padding Bool[B, S, G]."""
        chunks = chunk(ids, self.config.chunks.size, CP_PAD)  # (B, S, G)
        return char_bytes(chunks, self.config.chunks.width), chunks != CP_PAD

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Long[B, T] characters -> Float[B, S, E], one vector per chunk."""
        return self.autoencoder.encode(self.chunk_bytes(ids)[0])

    def decode_logits(self, vectors: torch.Tensor) -> torch.Tensor:
        """Float[B, S, E] -> logits Float[B, S, G, W, 256]."""
        return self.autoencoder.decode(vectors)

    def decode(self, vectors: torch.Tensor, checked: bool = True) -> torch.Tensor:
        """Float[B, S, E] -> the characters Long[B, S * G] the decoder reads, checked
        against the encoder (:mod:`untok.nn.checked_decoding`) unless ``checked`` is off;
        a decoded code that is neither a character nor a special (a lone surrogate, or
        above PAD) becomes U+FFFD."""
        logits = self.decode_logits(vectors)
        data = (CheckedDecoding(self.autoencoder.encoder)(vectors, logits) if checked
                else logits.argmax(-1))
        ids = char_ids(data).flatten(-2)
        surrogate = (ids >= 0xD800) & (ids < 0xE000) & ((ids < 0xDC80) | (ids > 0xDCFF))
        return ids.masked_fill((ids > CP_PAD) | surrogate, REPLACEMENT)

    def loss(self, ids: torch.Tensor, targets: torch.Tensor | None = None,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction cross-entropy per code byte of ``ids`` (``targets`` and
        ``mask``, the language-model arguments, are not used). The padding of a last
        chunk is reconstructed too, so decoded vectors say where their text ends."""
        if self.training and self.config.chunks.random_chars:
            ids = with_random_chars(ids, self.config.chunks.random_chars)
        data, _ = self.chunk_bytes(ids)
        return reconstruction_loss(self.autoencoder(data), data)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_byte(self) -> float:
        """Training FLOPs per character: 6 x each matmul's weights x how often a chunk
        uses it (level i runs once per group it makes), over the chunk's characters."""
        ae, ch = self.autoencoder, self.config.chunks
        runs, merged = ch.size, 0
        for merge, split in zip(ae.encoder.merges, reversed(ae.decoder.splits), strict=True):
            runs //= merge.factor
            merged += runs * (merge.proj.weight.numel() + split.proj.weight.numel())
        head = sum(m.weight.numel() for m in ae.decoder.head.modules()
                   if isinstance(m, nn.Linear))
        return 6.0 * (merged / ch.size + head)

TINY = {"unit": "codepoint", "context": 16,
        "chunks": {"levels": [4], "dim": 32, "byte_dim": 16}}
register(Family(
    name="tokun", model=TokunAutoencoder, units=chunk_units, validate=validate_chunks,
    capabilities=lambda c: Capabilities(language_model=False, batch_decoding=False),
    description="tokun chunk autoencoder: G characters' UTF-32 bytes <-> one vector",
    summary=lambda c: chunk_summary("tokun", c),
    examples={"4": TINY, "4x2": {**TINY, "chunks": {**TINY["chunks"], "levels": [4, 2],
                                                     "width": 4}}}))
