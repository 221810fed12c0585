import dataclasses

import pytest
import torch

from conftest import TINY
from untok.config import ModelConfig
from untok.models import ByteLM, build_model
from untok.train.checkpoint import load, save_checkpoint
from untok.units import PAD, VOCAB_SIZE


def test_shapes_and_protocol(tiny_model):
    ids = torch.randint(0, 256, (3, 17))
    logits = tiny_model(ids)
    assert logits.shape == (3, 17, VOCAB_SIZE)
    assert isinstance(tiny_model, ByteLM)
    assert tiny_model.flops_per_byte() > 6 * tiny_model.num_params() * 0.5
    loss = tiny_model.loss(ids, ids)
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_tied_head_shares_the_table():
    model = build_model(TINY)
    assert model.head.weight is model.embed.table.weight
    untied = build_model(ModelConfig(**{**TINY.__dict__, "tie_embeddings": False}))
    assert untied.num_params() == model.num_params() + VOCAB_SIZE * TINY.dim


@pytest.mark.parametrize("t", [0, 5, 31])
def test_no_future_byte_leaks(tiny_model, t):
    ids = torch.randint(0, 256, (2, 32))
    changed = ids.clone()
    changed[:, t] = (changed[:, t] + 1) % 256
    with torch.no_grad():
        a, b = tiny_model(ids), tiny_model(changed)
    assert torch.equal(a[:, :t], b[:, :t]), "a prediction before t saw byte t"
    assert not torch.allclose(a[:, t:], b[:, t:]), "byte t must matter from t on"


def test_gradients_do_not_leak():
    model = build_model(TINY)
    ids = torch.randint(0, 256, (1, 20))
    emb = model.embed(ids).detach().requires_grad_(True)
    from untok.nn.attention import rope_angles

    cos, sin = rope_angles(torch.arange(20), TINY.head_dim, TINY.rope_base)
    x = emb
    for block in model.blocks:
        x = block(x, cos, sin)
    x[0, 9].sum().backward()
    assert emb.grad[0, 10:].abs().max() == 0
    assert emb.grad[0, :10].abs().max() > 0


@pytest.mark.parametrize("prompt_len", [1, 7, 32])
def test_step_equals_forward(tiny_model, prompt_len):
    ids = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        full = tiny_model(ids)
        state = tiny_model.new_state(2)
        first, state = tiny_model.step(state, ids[:, :prompt_len])
        parts = [first]
        for i in range(prompt_len, 32):
            logits, state = tiny_model.step(state, ids[:, i:i + 1])
            parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)


def test_step_in_chunks_equals_forward(tiny_model):
    ids = torch.randint(0, 256, (1, 30))
    with torch.no_grad():
        full = tiny_model(ids)
        state = tiny_model.new_state(1)
        parts = []
        for a, b in [(0, 4), (4, 15), (15, 16), (16, 30)]:
            logits, state = tiny_model.step(state, ids[:, a:b])
            parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)


def test_cache_slides_past_the_context(tiny_model):
    """Past the context the cache keeps the last `context` units."""
    ids = torch.randint(0, 256, (1, 80))
    with torch.no_grad():
        state = tiny_model.new_state(1)
        for i in range(80):
            logits, state = tiny_model.step(state, ids[:, i:i + 1])
    assert state.caches[0].length == TINY.context
    assert state.position == 80 and torch.isfinite(logits).all()


def test_sliding_window_is_exact_for_one_layer():
    """With one layer the cache holds exactly the window's keys (RoPE is relative), so
    every step past the context equals a forward over the last `context` units. (Deeper
    layers cache keys computed from units that have since left the window.)"""
    config = dataclasses.replace(TINY, num_layers=1)
    torch.manual_seed(0)
    model = build_model(config)
    model.init_weights()
    C = config.context
    ids = torch.randint(0, 256, (1, 3 * C))
    with torch.no_grad():
        state = model.new_state(1)
        for i in range(3 * C):
            logits, state = model.step(state, ids[:, i:i + 1])
            window = model(ids[:, max(0, i + 1 - C):i + 1])[:, -1]
            torch.testing.assert_close(logits[:, -1], window, atol=1e-4, rtol=1e-4)


def test_save_load_round_trip(tiny_model, tmp_path):
    save_checkpoint(tmp_path / "ckpt", tiny_model)
    loaded = load(tmp_path / "ckpt")
    assert loaded.config == tiny_model.config
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), tiny_model(ids), atol=0, rtol=0)
    assert loaded.head.weight is loaded.embed.table.weight


def test_a_few_steps_lower_the_loss():
    model = build_model(TINY)
    ids = torch.tensor([list(b"the cat sat on the mat. " * 2)[:33]] * 4)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model.loss(inputs, targets).item()
    for _ in range(30):
        loss = model.loss(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first * 0.7


def test_loss_ignores_pad_and_mask(tiny_model):
    ids = torch.randint(0, 256, (1, 10))
    targets = torch.randint(0, 256, (1, 10))
    padded = targets.clone()
    padded[0, 5:] = PAD
    mask = torch.zeros_like(targets, dtype=torch.bool)
    mask[0, :5] = True
    assert torch.allclose(tiny_model.loss(ids, padded), tiny_model.loss(ids, targets, mask))
    assert not torch.allclose(tiny_model.loss(ids, targets), tiny_model.loss(ids, padded))
