"""The MatMul-free backbone beyond the protocol suite (tests/test_protocol.py runs it in
flat and BLT models): BitLinear, packing, the scan, constant-size state, export."""


import pytest
import torch

from untok.checkpoint import save_checkpoint
from untok.config import resolve
from untok.models import build_model, load
from untok.nn.bitlinear import (
    BitLinear,
    PackedBitLinear,
    pack_ternary,
    unpack_ternary,
)
from untok.nn.mlgru import linear_scan

MMFREE = resolve(preset_name="mmfree-tiny").model


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(MMFREE).eval()


def test_bitlinear_matches_a_float64_reference():
    torch.manual_seed(0)
    layer = BitLinear(24, 16).double()
    torch.nn.init.normal_(layer.weight, std=0.3)
    x = torch.randn(3, 5, 24, dtype=torch.float64)
    # the BitLinear formulas (docs/architecture.md, backbones), written out directly
    normed = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5)
    s_x = 127.0 / normed.abs().amax(-1, keepdim=True)
    x_q = torch.clamp(torch.round(normed * s_x), -128, 127) / s_x
    s_w = layer.weight.abs().mean()
    w_q = torch.clamp(torch.round(layer.weight / s_w), -1, 1) * s_w
    torch.testing.assert_close(layer(x), x_q @ w_q.T, atol=1e-12, rtol=1e-12)
    assert set(torch.unique(torch.round(layer.weight / s_w).clamp(-1, 1)).tolist()) <= \
        {-1.0, 0.0, 1.0}


def test_straight_through_gradients_reach_the_master_weights():
    layer = BitLinear(8, 4)
    x = torch.randn(2, 8, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


@pytest.mark.parametrize("in_features", [4, 7, 33])
def test_pack_unpack_round_trip(in_features):
    codes = torch.randint(-1, 2, (5, in_features))
    packed = pack_ternary(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (5, -(-in_features // 4))
    assert torch.equal(unpack_ternary(packed, in_features), codes.to(torch.int8))


@pytest.mark.parametrize("rows", [1, 40])
def test_packed_bitlinear_equals_fake_quant(rows):
    torch.manual_seed(1)
    layer = BitLinear(64, 48)
    torch.nn.init.normal_(layer.weight, std=0.05)
    torch.nn.init.uniform_(layer.norm.weight, 0.5, 1.5)
    packed = PackedBitLinear.from_bitlinear(layer)
    x = torch.randn(rows, 3, 64)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), layer(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("with_h0", [False, True])
def test_scan_equals_the_loop_in_float64(with_h0):
    torch.manual_seed(0)
    f = torch.rand(2, 37, 5, dtype=torch.float64)
    c = torch.randn(2, 37, 5, dtype=torch.float64)
    h0 = torch.randn(2, 5, dtype=torch.float64) if with_h0 else None
    h = h0 if with_h0 else torch.zeros(2, 5, dtype=torch.float64)
    expected = []
    for t in range(37):
        h = f[:, t] * h + c[:, t]
        expected.append(h)
    torch.testing.assert_close(linear_scan(f, c, h0), torch.stack(expected, 1), atol=1e-5,
                               rtol=1e-5)


def test_state_is_constant_in_size(model):
    with torch.no_grad():
        state = model.new_state(1)
        for _ in range(100):
            _, state = model.step(state, torch.randint(0, 256, (1, 1)))
    assert [h.shape for h in state.layers] == [(1, MMFREE.dim)] * MMFREE.num_layers


def test_packed_export_round_trip(capsys, model, tmp_path):
    """`untok export --ternary`: 2-bit codes on disk, logits equal the training path's."""
    from untok.cli import main
    from untok.nn.bitlinear import BitLinear, PackedBitLinear

    save_checkpoint(tmp_path / "m", model)
    assert main(["export", str(tmp_path / "m"), "--ternary", "-o", str(tmp_path / "p")]) == 0
    assert "BitLinear layers packed" in capsys.readouterr().out
    packed = load(tmp_path / "p")
    assert not any(isinstance(m, BitLinear) for m in packed.modules())
    layers = [m for m in packed.modules() if isinstance(m, PackedBitLinear)]
    assert layers and all(m.packed.dtype == torch.uint8 for m in layers)
    ids = torch.randint(0, 256, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(packed(ids).logits, model(ids).logits, atol=1e-3, rtol=1e-3)
        state = packed.new_state(1)
        scores, _ = packed.step(state, ids[:1, :5])
        torch.testing.assert_close(scores.logits, model(ids[:1, :5]).logits, atol=1e-3,
                                   rtol=1e-3)
    source = (tmp_path / "m" / "model.safetensors").stat().st_size
    assert (tmp_path / "p" / "model.safetensors").stat().st_size < source


def test_export_rejects_bad_input(capsys, tmp_path):
    from untok.cli import main

    save_checkpoint(tmp_path / "flat", build_model(resolve(preset_name="tiny").model))
    code = main(["export", str(tmp_path / "flat"), "--ternary", "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code != 0 and "--ternary packs BitLinear layers" in err
    assert "\n" not in err.strip() and not (tmp_path / "x").exists()
    code = main(["export", str(tmp_path / "flat"), "-o", str(tmp_path / "x")])
    assert code != 0 and "--ternary" in capsys.readouterr().err


def test_cached_ternary_weights_follow_training_and_inference_mode():
    """Without autograd BitLinear reuses its ternarized weight until the weight changes."""
    torch.manual_seed(0)
    layer = BitLinear(8, 4)
    x = torch.randn(2, 8)
    with torch.no_grad():
        before = layer(x)
        layer.weight.mul_(-1)  # an in-place update (as an optimizer step is)
        torch.testing.assert_close(layer(x), -before)
    with torch.inference_mode():  # tensors created here track no version: still works
        built = build_model(MMFREE).eval()
        scores, _ = built.step(built.new_state(1), torch.tensor([[256, 65]]))
    assert torch.isfinite(scores.logits).all()
