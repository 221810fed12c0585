"""What benchmarks compare against: a Hugging Face GPT-2 of the same shape as untok's flat
transformer (layers, width, heads, context, byte vocabulary), trained the same way, and the
classic compressors."""

from __future__ import annotations

import lzma
import resource
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from untok.compression_io import classic_sizes
from untok.config import ModelConfig, resolve
from untok.models import build_model
from untok.units import PAD


def shape(preset: str) -> ModelConfig:
    return resolve(preset_name=preset).model


def untok_model(config: ModelConfig) -> nn.Module:
    return build_model(config)


def gpt2_model(config: ModelConfig) -> nn.Module:
    """``GPT2LMHeadModel`` with untok's shape; its 4x GELU MLP has the same parameter count
    and FLOPs as untok's SwiGLU (2 x 4d^2 = 3 x 8/3 d^2 per layer)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2Config(vocab_size=config.vocab_size, n_positions=config.context,
                      n_embd=config.dim, n_layer=config.num_layers, n_head=config.num_heads,
                      n_inner=4 * config.dim, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      tie_word_embeddings=True, bos_token_id=256, eos_token_id=257)
    return GPT2LMHeadModel(gpt2, attn_implementation="sdpa") if _takes_attn_impl() else \
        GPT2LMHeadModel(gpt2)


def _takes_attn_impl() -> bool:
    import inspect

    from transformers import GPT2LMHeadModel

    return "attn_implementation" in inspect.signature(GPT2LMHeadModel.__init__).parameters


def logits_of(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


@dataclass
class Stepper:
    """One optimizer step of next-byte cross-entropy, identical for every contender."""

    model: nn.Module
    lr: float = 1e-3

    def __post_init__(self) -> None:
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr,
                                           betas=(0.9, 0.95), weight_decay=0.1)

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> float:
        logits = logits_of(self.model, inputs)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(),
                               ignore_index=PAD)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    Linux: ``VmHWM`` of this address space. Not ``ru_maxrss``, which Linux carries over
    from the parent across fork + exec, so a worker would report its parent's peak.
    """
    try:
        for line in open("/proc/self/status", encoding="ascii"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compressors(train_part: bytes, val: bytes) -> dict[str, float]:
    """bpb of classic compressors on the val bytes, alone and conditioned on train."""
    import zstandard

    def xz(data: bytes) -> int:
        return len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))

    def zstd_long(data: bytes) -> int:
        params = zstandard.ZstdCompressionParameters.from_level(19, enable_ldm=True,
                                                                window_log=27)
        return len(zstandard.ZstdCompressor(compression_params=params).compress(data))

    n = 8 / len(val)
    return {**{name: size * n for name, size in classic_sizes(val).items()},
            "xz -9e given train": (xz(train_part + val) - xz(train_part)) * n,
            "zstd -19 --long given train": (zstd_long(train_part + val)
                                            - zstd_long(train_part)) * n}
