"""Linear layers with weights packed once for the CPU's oneDNN matrix kernels.

A decoding step multiplies a few rows by every weight matrix. On the CPU, ``F.linear``
hands each product to a general GEMM that repacks the weight's panels on every call;
oneDNN can pack a weight once into the blocked layout its kernels read
(``torch.ops.mkldnn._reorder_linear_weight``, what ``torch.compile`` uses for frozen
weights) and then multiply with it (``_linear_pointwise``). The products of a 16-row
step of the ``small`` model then run 1.8x faster and the whole step 1.15x (one thread);
a one-row step gains nothing (it is bound by per-operation overhead, not by the
products). README "Serving" has what it gives a server.

Opt-in, inside :func:`packed_linears`, because the products round differently from
``F.linear`` (about 1e-7 relative): compression, whose decoder must repeat the encoder's
arithmetic bit for bit, never uses it. Plain ``nn.Linear`` layers only, float32 on the
CPU, without gradients; anything else, or a torch without the oneDNN operators, runs
``F.linear`` as before. A weight changed in place (its ``_version``) is packed again.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def onednn_available() -> bool:
    """Whether this torch build has the oneDNN linear operators."""
    try:
        return torch.backends.mkldnn.is_available() and \
            hasattr(torch.ops.mkldnn, "_linear_pointwise") and \
            hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    except (AttributeError, RuntimeError):
        return False


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32 or \
            weight.dtype != torch.float32:
        return F.linear(x, weight, self.bias)
    version, packed = getattr(self, "_untok_packed", (None, None))
    if version != weight._version:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 16)
        self._untok_packed = (weight._version, packed)
    return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")


@contextlib.contextmanager
def packed_linears(model: nn.Module) -> Iterator[None]:
    """Inside the block, the plain ``nn.Linear`` layers of ``model`` multiply with packed
    weights (where oneDNN can; see the module's docstring). Restored on exit."""
    layers = [m for m in model.modules() if type(m) is nn.Linear] if onednn_available() \
        else []
    for layer in layers:
        layer.forward = types.MethodType(_packed_forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
            layer.__dict__.pop("_untok_packed", None)
