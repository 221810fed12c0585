"""Packed linear layers (untok.nn.packed): the decoding engine's oneDNN products."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from untok.config import ModelConfig
from untok.models import build_model
from untok.nn.packed import onednn_available, packed_linears

pytestmark = pytest.mark.skipif(not onednn_available(),
                                reason="this torch build has no oneDNN linear operators")


def test_packed_decoding_matches_and_is_restored():
    model = build_model(ModelConfig(dim=32, num_layers=2, num_heads=2, context=32)).eval()
    ids = torch.randint(0, 256, (3, 12))
    with torch.no_grad():
        plain, _ = model.step(model.new_state(3), ids)
        with packed_linears(model):
            assert all("forward" in m.__dict__ for m in model.modules()
                       if type(m) is nn.Linear)
            packed, _ = model.step(model.new_state(3), ids)
        again, _ = model.step(model.new_state(3), ids)
    assert torch.allclose(packed.logits, plain.logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(again.logits, plain.logits)  # the plain path is back, bit for bit
    assert not any("forward" in m.__dict__ or "_untok_packed" in m.__dict__
                   for m in model.modules())


def test_gradients_and_changed_weights_take_the_right_path():
    layer = nn.Linear(16, 8, bias=True)
    x = torch.randn(4, 16)
    with packed_linears(layer):
        y = layer(x)  # gradients on: F.linear itself
        assert torch.equal(y, F.linear(x, layer.weight, layer.bias)) and y.requires_grad
        with torch.no_grad():
            assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5)
            layer.weight.mul_(2)  # packed again: not the stale weights
            assert torch.allclose(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5)
    wide = nn.Linear(16, 8).double()  # other dtypes: F.linear, bit for bit
    with packed_linears(wide), torch.no_grad():
        assert torch.equal(wide(x.double()), F.linear(x.double(), wide.weight, wide.bias))
