"""The flat family beyond the protocol suite (tests/test_protocol.py): tying, the sliding
KV cache, masks."""

import dataclasses

import torch

from conftest import TINY
from untok.checkpoint import save_checkpoint
from untok.config import ModelConfig
from untok.models import build_model, load
from untok.units import PAD, VOCAB_SIZE


def test_tied_head_shares_the_table():
    model = build_model(TINY)
    assert model.head.weight is model.embed.table.weight
    untied = build_model(ModelConfig(**{**TINY.__dict__, "head": "linear"}))
    assert untied.num_params() == model.num_params() + VOCAB_SIZE * TINY.dim


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


def test_step_in_chunks_equals_forward(tiny_model):
    ids = torch.randint(0, 256, (1, 30))
    with torch.no_grad():
        full = tiny_model(ids)
        state = tiny_model.new_state(1)
        parts = []
        for a, b in [(0, 4), (4, 15), (15, 16), (16, 30)]:
            scores, state = tiny_model.step(state, ids[:, a:b])
            parts.append(scores.logits)
    torch.testing.assert_close(torch.cat(parts, 1), full.logits, atol=1e-4, rtol=1e-4)


def test_cache_slides_past_the_context(tiny_model):
    """Past the context the cache keeps the last `context` units."""
    ids = torch.randint(0, 256, (1, 80))
    with torch.no_grad():
        state = tiny_model.new_state(1)
        for i in range(80):
            scores, state = tiny_model.step(state, ids[:, i:i + 1])
    cache = state.layers[0]
    assert cache.end == 80
    assert set(cache.positions.tolist()) - {-1} == set(range(80 - TINY.context, 80))
    assert state.position == 80 and torch.isfinite(scores.logits).all()


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
            scores, state = model.step(state, ids[:, i:i + 1])
            window = model(ids[:, max(0, i + 1 - C):i + 1]).logits[:, -1]
            torch.testing.assert_close(scores.logits[:, -1], window, atol=1e-4, rtol=1e-4)


def test_tying_survives_save_and_load(tiny_model, tmp_path):
    save_checkpoint(tmp_path / "ckpt", tiny_model)
    loaded = load(tmp_path / "ckpt")
    assert loaded.config == tiny_model.config
    assert loaded.head.weight is loaded.embed.table.weight


def test_loss_ignores_pad_and_mask(tiny_model):
    ids = torch.randint(0, 256, (1, 10))
    targets = torch.randint(0, 256, (1, 10))
    padded = targets.clone()
    padded[0, 5:] = PAD
    mask = torch.zeros_like(targets, dtype=torch.bool)
    mask[0, :5] = True
    assert torch.allclose(tiny_model.loss(ids, padded), tiny_model.loss(ids, targets, mask))
    assert not torch.allclose(tiny_model.loss(ids, targets), tiny_model.loss(ids, padded))
