"""MatMul-free backbone: BitLinear, the scan, the model, BLT's global model."""

import dataclasses

import pytest
import torch

from untok.config import resolve
from untok.models import ByteLM, build_model
from untok.nn.bitlinear import (
    BitLinear,
    PackedBitLinear,
    pack_ternary,
    unpack_ternary,
)
from untok.nn.mlgru import linear_scan
from untok.train.checkpoint import load, save_checkpoint
from untok.units import VOCAB_SIZE

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
    # the formulas of DESIGN 5.5, written out directly
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


def test_shapes_and_protocol(model):
    assert isinstance(model, ByteLM)
    assert model(torch.randint(0, 256, (3, 17))).shape == (3, 17, VOCAB_SIZE)


@pytest.mark.parametrize("t", [0, 9, 30])
def test_no_future_byte_leaks(model, t):
    ids = torch.randint(0, 256, (2, 32))
    changed = ids.clone()
    changed[:, t:] = torch.randint(0, 256, changed[:, t:].shape)
    with torch.no_grad():
        torch.testing.assert_close(model(changed)[:, :t], model(ids)[:, :t], atol=0, rtol=0)


@pytest.mark.parametrize("prompt", [1, 11])
def test_step_equals_forward(model, prompt):
    ids = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        full = model(ids)
        state = model.new_state(2)
        logits, state = model.step(state, ids[:, :prompt])
        parts = [logits]
        for i in range(prompt, 40):
            logits, state = model.step(state, ids[:, i:i + 1])
            parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)


def test_state_is_constant_in_size(model):
    with torch.no_grad():
        state = model.new_state(1)
        for _ in range(100):
            _, state = model.step(state, torch.randint(0, 256, (1, 1)))
    assert [h.shape for h in state.hidden] == [(1, MMFREE.dim)] * MMFREE.num_layers


def test_save_load_round_trip(model, tmp_path):
    save_checkpoint(tmp_path / "m", model)
    loaded = load(tmp_path / "m")
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)


@pytest.mark.parametrize("ternary_head", [False, True])
def test_a_few_steps_lower_the_loss(ternary_head):
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(MMFREE, ternary_head=ternary_head))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(0, 256, (4, 33))
    losses = []
    for _ in range(20):
        loss = model.loss(ids[:, :-1], ids[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5


def test_blt_with_an_mmfree_global_model():
    config = resolve(preset_name="blt-tiny", overrides=["model.backbone='mmfree'"]).model
    torch.manual_seed(0)
    blt = build_model(config).eval()
    ids = torch.randint(97, 123, (1, 30))
    ids[0, ::5] = 32  # spaces: several patches
    with torch.no_grad():
        full = blt(ids)
        state = blt.new_state(1)
        logits, state = blt.step(state, ids)
    torch.testing.assert_close(logits, full, atol=1e-4, rtol=1e-4)
    assert state.patches >= 4


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
        torch.testing.assert_close(packed(ids), model(ids), atol=1e-3, rtol=1e-3)
        state = packed.new_state(1)
        logits, _ = packed.step(state, ids[:1, :5])
        torch.testing.assert_close(logits, model(ids[:1, :5]), atol=1e-3, rtol=1e-3)
    source = (tmp_path / "m" / "model.safetensors").stat().st_size
    assert (tmp_path / "p" / "model.safetensors").stat().st_size < source


def test_export_rejects_bad_input(capsys, tmp_path):
    from untok.cli import main

    save_checkpoint(tmp_path / "flat", build_model(resolve(preset_name="tiny").model))
    code = main(["export", str(tmp_path / "flat"), "--ternary", "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code != 0 and "no BitLinear layers" in err and not (tmp_path / "x").exists()
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
        logits, _ = built.step(built.new_state(1), torch.tensor([[256, 65]]))
    assert torch.isfinite(logits).all()
