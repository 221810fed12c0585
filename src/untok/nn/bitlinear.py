"""BitLinear: ternary weights, 8-bit activations (see docs/architecture.md, backbones).

Training keeps full-precision master weights and quantizes on the fly with straight-
through gradients (the forward sees quantized values, the backward treats quantization as
the identity):

    x   = RMSNorm(x)
    x_q = round(x * 127 / max|x|) * max|x| / 127          per token, in [-128, 127]
    w_q = clip(round(W / mean|W|), -1, 1) * mean|W|        per tensor, ternary
    y   = x_q @ w_q^T

For inference the ternary codes are packed four to a byte (:func:`pack_ternary`) and
:class:`PackedBitLinear` multiplies int8 activations by the int8 codes with an integer
matmul, rescaling once at the end: no float weight matrix exists.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5


def activation_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-token scale 127 / max|x| (Float[..., 1])."""
    return 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=EPS)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer-valued codes in [-128, 127] (same dtype as ``x``) and their scale."""
    scale = activation_scale(x)
    return (x * scale).round().clamp(-128, 127), scale


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-tensor scale mean|W| (a 0-d tensor)."""
    return w.abs().mean().clamp(min=EPS)


def ternarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes in {-1, 0, 1} (same dtype as ``w``) and the scale."""
    scale = weight_scale(w)
    return (w / scale).round().clamp(-1, 1), scale


class BitLinear(nn.Linear):
    """``nn.Linear`` trained as ternary weights x 8-bit activations (no bias)."""

    def __init__(self, in_features: int, out_features: int, eps: float = 1e-5) -> None:
        super().__init__(in_features, out_features, bias=False)
        self.norm = nn.RMSNorm(in_features, eps=eps)
        self._quantized: tuple[tuple, torch.Tensor] | None = None

    def quantized_weight(self) -> torch.Tensor:
        """The ternarized weight x scale; without autograd it is cached until the master
        weight changes (evaluation and decoding quantize once, not every call)."""
        if torch.is_grad_enabled() and self.weight.requires_grad:
            codes, scale = ternarize(self.weight)
            return self.weight + (codes * scale - self.weight).detach()  # straight-through
        weight = self.weight
        version = -1 if weight.is_inference() else weight._version  # (not tracked there)
        key = (weight.data_ptr(), version, weight.device, weight.dtype)
        if self._quantized is None or self._quantized[0] != key:
            with torch.no_grad():
                codes, scale = ternarize(self.weight)
                self._quantized = (key, codes * scale)
        return self._quantized[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        codes, scale = quantize_activations(x)
        x = x + (codes / scale - x).detach()  # straight-through
        return F.linear(x, self.quantized_weight())


# -- packed inference ------------------------------------------------------------------------

def pack_ternary(codes: torch.Tensor) -> torch.Tensor:
    """Ternary codes Float/Int[out, in] -> UInt8[out, ceil(in / 4)], 2 bits each
    (0 -> 0b00, 1 -> 0b01, -1 -> 0b10), the first code in the lowest bits."""
    out_features, in_features = codes.shape
    padded = F.pad(codes.to(torch.int64), (0, -in_features % 4))
    two_bits = torch.where(padded < 0, 2, padded).view(out_features, -1, 4)
    shifts = torch.tensor([0, 2, 4, 6], device=codes.device)
    return (two_bits << shifts).sum(-1).to(torch.uint8)


def unpack_ternary(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Inverse of :func:`pack_ternary`: Int8[out, in] codes in {-1, 0, 1}."""
    shifts = torch.tensor([0, 2, 4, 6], device=packed.device, dtype=torch.uint8)
    two_bits = (packed[..., None] >> shifts) & 3  # (out, in/4, 4)
    codes = two_bits.to(torch.int8)
    codes = torch.where(codes == 2, -1, codes).to(torch.int8)
    return codes.flatten(-2)[:, :in_features]


class PackedBitLinear(nn.Module):
    """Inference-only BitLinear from packed 2-bit codes and a scale.

    The ternary codes are unpacked once to int8 (1 byte per weight, a quarter of fp32) and
    multiply the integer activation codes; both scales are applied once at the end. The
    product widens the int8 codes to fp32 for the call only (nothing float is kept): on
    CPU that beats the integer GEMM ``torch._int_mm`` by 2x at one row and 28x at 4096
    (``bench/mmfree.py``), and sums of these small integers are exact in fp32.
    """

    def __init__(self, in_features: int, out_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.norm = nn.RMSNorm(in_features, eps=eps)
        self.register_buffer("packed", torch.zeros(out_features, -(-in_features // 4),
                                                   dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(()))
        self._codes: torch.Tensor | None = None
        self.register_load_state_dict_post_hook(PackedBitLinear._forget_codes)

    @staticmethod
    def _forget_codes(module: PackedBitLinear, _keys) -> None:
        module._codes = None  # new packed weights: unpack again

    @classmethod
    def from_bitlinear(cls, layer: BitLinear) -> PackedBitLinear:
        packed = cls(layer.in_features, layer.out_features, layer.norm.eps)
        with torch.no_grad():
            codes, scale = ternarize(layer.weight.float())
            packed.packed.copy_(pack_ternary(codes))
            packed.scale.copy_(scale)
            packed.norm.weight.copy_(layer.norm.weight)
        return packed.to(layer.weight.device)

    def codes_t(self) -> torch.Tensor:
        """Int8[in, out]: the unpacked codes, transposed for the matmul (cached)."""
        if self._codes is None or self._codes.device != self.packed.device:
            self._codes = unpack_ternary(self.packed, self.in_features).t().contiguous()
        return self._codes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.float())
        codes, scale = quantize_activations(x)
        acc = codes.reshape(-1, self.in_features) @ self.codes_t().to(torch.float32)
        y = acc.view(*x.shape[:-1], self.out_features)
        return y * (self.scale / scale)


def pack_bitlinears(model: nn.Module) -> int:
    """Replace every :class:`BitLinear` of ``model`` by its :class:`PackedBitLinear`, in
    place; returns how many were packed."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, BitLinear):
                setattr(parent, name, PackedBitLinear.from_bitlinear(child))
                count += 1
    return count


def is_packed(model: nn.Module) -> bool:
    return any(isinstance(m, PackedBitLinear) for m in model.modules())
