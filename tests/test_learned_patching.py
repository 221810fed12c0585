"""Learned chunking (``--patching learned``) beyond what test_blt.py runs for every patcher
(shapes, no future byte leaks, step == forward, max_len): the router's pieces, gradients
end to end, the ratio loss steering patch length, and `untok patches`."""

import dataclasses

import pytest
import torch

from untok.checkpoint import save_checkpoint
from untok.config import PatchingConfig, resolve
from untok.errors import ConfigError
from untok.models import build_model, load
from untok.nn.routing import (
    BoundaryRouter,
    patch_weights,
    ratio_loss,
    smooth_one,
    smooth_patches,
)
from untok.units import BOS

TEXT = b"the cat sat on the mat. A dog, a bird; zebras! 12 34 " * 8


def learned(**patching):
    base = resolve(preset_name="blt-tiny").model
    options = {"kind": "learned", "target_len": 3.0, "max_len": 8, **patching}
    torch.manual_seed(0)
    return build_model(dataclasses.replace(base, patching=PatchingConfig(**options)))


def batch(size: int = 4, length: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(TEXT) - length - 1, (size,), generator=g).tolist()
    ids = torch.tensor([list(TEXT[s:s + length + 1]) for s in starts])
    ids[:, 0] = BOS
    return ids


def test_router_starts_as_a_turn_detector():
    """Identity projections: p = (1 - cos(h_t, h_{t-1})) / 2, p_0 = 1; step == forward."""
    router = BoundaryRouter(8)
    h = torch.randn(2, 10, 8)
    p = router(h)
    expected = (1 - torch.nn.functional.cosine_similarity(h[:, 1:], h[:, :-1], dim=-1)) / 2
    assert torch.equal(p[:, 0], torch.ones(2))
    torch.testing.assert_close(p[:, 1:], expected)
    stepped = [router.step(h[:, t], h[:, t - 1] if t else None) for t in range(10)]
    torch.testing.assert_close(torch.stack(stepped, 1), p)


def test_smoothing_scan_equals_the_step_recurrence():
    torch.manual_seed(0)
    g, w = torch.randn(3, 9, 5), torch.rand(3, 9)
    previous, steps = None, []
    for j in range(9):
        previous = smooth_one(g[:, j:j + 1], w[:, j], previous)
        steps.append(previous)
    torch.testing.assert_close(smooth_patches(g, w.clamp(1e-4, 1 - 1e-4)),
                               torch.cat(steps, 1))


def test_patch_weights_are_the_probability_at_each_patch_start():
    p = torch.tensor([[1.0, 0.2, 0.9, 0.3, 0.7], [1.0, 0.1, 0.2, 0.4, 0.3]])
    starts = p > 0.5
    weights = patch_weights(p, starts, 3)
    torch.testing.assert_close(weights, torch.tensor([[1 - 1e-4, 0.9, 0.7],
                                                      [1 - 1e-4, 1 - 1e-4, 1 - 1e-4]]))


def test_ratio_loss_is_one_at_the_target_and_more_elsewhere():
    target = 4.0
    at_target = ratio_loss(torch.full((1, 400), 0.25), torch.arange(400)[None] % 4 == 0,
                           target)
    torch.testing.assert_close(at_target, torch.tensor(1.0))
    too_many = ratio_loss(torch.full((1, 400), 0.75), torch.arange(400)[None] % 2 == 0,
                          target)
    assert too_many > 1.2


def test_gradients_reach_the_router_and_stay_causal():
    model = learned().train()
    ids = batch(1, 40)
    emb = model.embed.table(ids[:, :-1]).detach().requires_grad_(True)
    original = model.embed.forward
    model.embed.forward = lambda _: emb
    try:
        model(ids[:, :-1]).logits[0, 20].sum().backward()
    finally:
        model.embed.forward = original
    assert emb.grad[0, 21:].abs().sum() == 0 and emb.grad[0, :21].abs().sum() > 0
    model.zero_grad()
    model.loss(ids[:, :-1], ids[:, 1:]).backward()
    assert model.router.q.weight.grad.abs().sum() > 0
    assert model.router.k.weight.grad.abs().sum() > 0


def test_the_ratio_loss_steers_patch_length_towards_its_target():
    """From the router's initial ~1.7-byte patches, a strong ratio loss towards 6 bytes
    lengthens them; towards 1.2 bytes shortens them."""
    def mean_len_after(target: float) -> tuple[float, float]:
        model = learned(target_len=target, max_len=12, ratio_weight=5.0).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        ids = batch(8, 40, seed=1)

        def mean_len() -> float:
            starts, _ = model.patcher(ids[:, :-1])
            return starts.numel() / starts.sum().item()
        before = mean_len()
        for _ in range(40):
            optimizer.zero_grad()
            model.loss(ids[:, :-1], ids[:, 1:]).backward()
            optimizer.step()
        return before, mean_len()

    before, longer = mean_len_after(6.0)
    assert longer > before + 1.0, (before, longer)
    before, shorter = mean_len_after(1.2)
    assert shorter < before - 0.2, (before, shorter)


def test_training_reports_loss_not_bpb_and_eval_counts_only_bytes(tmp_path, store):
    """The learned BLT's training loss adds the ratio loss, so the trainer labels it
    `loss`; evaluation (scores only) stays in bits per byte."""
    import json

    from untok.cli import main

    out = tmp_path / "run"
    assert main(["train", "--data", str(store.paths["bin"].with_suffix("")), "--preset",
                 "blt-tiny", "--patching", "learned", "--set", "model.patching.target_len=3",
                 "--set", "model.patching.max_len=8", "--steps", "3", "--out", str(out),
                 "--quiet"]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert steps and all("loss_bpb" not in r for r in steps)
    assert any("val_bpb" in r for r in records)
    model = load(out / "last")
    assert model.config.patching.kind == "learned" and model.router is not None


def test_untok_patches_shows_learned_boundaries(capsys, tmp_path):
    from untok.cli import main

    save_checkpoint(tmp_path / "learned", learned())
    assert main(["patches", str(tmp_path / "learned"), "--text", "hello, world"]) == 0
    out = capsys.readouterr().out
    assert "patching: learned" in out and "  p " in out
    assert main(["patches", str(tmp_path / "learned"), "--text", "hello", "--json"]) == 0
    report = __import__("json").loads(capsys.readouterr().out)
    assert len(report["boundary_probs"]) == 5 and report["starts"][0] == 0

    base = resolve(preset_name="blt-tiny").model
    save_checkpoint(tmp_path / "space", build_model(base))
    code = main(["patches", str(tmp_path / "space"), "--patching", "learned", "--text", "x"])
    err = capsys.readouterr().err
    assert code != 0 and "--patching learned" in err and "Traceback" not in err


@pytest.mark.parametrize("options, message", [
    ({"target_len": 1.0}, "1 < model.patching.target_len"),
    ({"target_len": 9.0, "max_len": 8}, "model.patching.target_len < model.patching.max_len"),
    ({"ratio_weight": -1.0}, "ratio_weight must be >= 0"),
])
def test_bad_learned_settings(options, message):
    with pytest.raises(ConfigError, match=message):
        learned(**options)
