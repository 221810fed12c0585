"""The model protocol, checked on every registered family x backbone x option.

The cases come from the registry itself (:func:`untok.models.registry.examples`): a family
that registers puts its examples under every test here with no test edited. The bigram
family of ``toy_family.py`` is registered from the tests alone and passes the same suite.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import toy_family  # noqa: F401  (registers the bigram family)
import untok
from untok.checkpoint import save_checkpoint
from untok.config import resolve
from untok.models import build_model, capabilities, load
from untok.models.registry import FAMILIES, examples
from untok.scores import Scores

ALL_CASES = examples()
# language models take the suite below; autoencoders (language_model = False) theirs
CASES = [(n, c) for n, c in ALL_CASES if FAMILIES[c.family].capabilities(c).language_model]
AUTOENCODERS = [(n, c) for n, c in ALL_CASES if (n, c) not in CASES]
IDS = [name for name, _ in CASES]
TEXTS = [b"", b"hello, world\n", "caf\u00e9 \u20ac \U0001f600 \u4e2d\u6587".encode(),
         b"\xff\xfe invalid \xc3 utf-8 \xe2\x82", bytes(range(256))]


def step_tolerance(config) -> float:
    """step == forward to 1e-4 in log-probability; a MatMul-free backbone to 2e-3, because
    its BitLinear layers quantize activations per position to 8 bits: the scan (forward)
    and the recurrent step sum in another order, and a last-bit difference before the
    rounding can move one activation by a whole quantization level."""
    return 2e-3 if config.backbone == "mmfree" else 1e-4


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    name, config = request.param
    torch.manual_seed(0)
    return name, config, build_model(config).eval()


def sample_ids(model, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Ids of real text (with BOS first), Long[batch, length]."""
    text = ("The quick brown fox jumps over the lazy dog. " * 40).encode()
    units = model.units
    ids = units.encode(text)
    rng = np.random.default_rng(seed)
    rows = [np.concatenate([[units.bos], ids[s:s + length - 1]])
            for s in rng.integers(0, len(ids) - length, batch)]
    return torch.from_numpy(np.stack(rows))


def test_every_family_has_examples():
    assert {"flat", "blt", "bigram"} <= set(FAMILIES)
    for family in FAMILIES.values():
        assert family.examples, f"family {family.name} registers no examples to test"


def test_shapes(case):
    _, config, model = case
    ids = sample_ids(model, 2, config.context)
    scores = model(ids)
    assert isinstance(scores, Scores) and tuple(scores.shape) == tuple(ids.shape)
    log_prob = scores.log_prob(ids[:, 1:].roll(1, 1).repeat(1, 2)[:, :ids.shape[1]])
    assert log_prob.shape == ids.shape and torch.isfinite(log_prob).all()
    assert (log_prob <= 1e-5).all()
    chosen = scores[:, -1].greedy()
    assert chosen.shape == (2,)
    units = model.units
    assert ((chosen < units.num_content) | (chosen == units.eos)).all()
    assert model.num_params() > 0 and model.flops_per_byte() > 0
    if capabilities(model).can_compress:
        assert scores.byte_logits.shape == (*ids.shape, 256)


@pytest.mark.parametrize("data", TEXTS, ids=range(len(TEXTS)))
def test_units_round_trip(case, data):
    _, _, model = case
    units = model.units
    ids = units.encode(data)
    assert units.decode(ids) == data
    assert int(units.byte_lengths(ids).sum()) == len(data)
    assert ids.dtype == np.int64 and (ids < units.num_content).all()
    specials = np.array([units.bos, units.eos, units.pad])
    assert (units.byte_lengths(specials) == 0).all() and units.decode(specials) == b""
    assert units.vocab_size >= units.num_content + 3


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_no_future_unit_leaks(case, where):
    """Scores at positions <= t do not move when every unit after t changes."""
    _, config, model = case
    ids = sample_ids(model, 2, config.context)
    t = int(where * (ids.shape[1] - 1))
    changed = ids.clone()
    changed[:, t + 1:] = sample_ids(model, 2, config.context, seed=1)[:, t + 1:]
    targets = sample_ids(model, 2, config.context, seed=2)
    with torch.no_grad():
        before = model(ids).log_prob(targets)[:, :t + 1]
        after = model(changed).log_prob(targets)[:, :t + 1]
    torch.testing.assert_close(before, after, atol=1e-5, rtol=0)


def test_step_equals_forward(case):
    """A prompt chunk, then one unit at a time, scores as the whole sequence does."""
    _, config, model = case
    ids = sample_ids(model, 1, config.context)
    targets = sample_ids(model, 1, config.context, seed=3)
    with torch.no_grad():
        whole = model(ids).log_prob(targets)
        state = model.new_state(1)
        prompt = ids.shape[1] // 3
        parts, scores_chunk = [], None
        scores_chunk, state = model.step(state, ids[:, :prompt])
        parts.append(scores_chunk.log_prob(targets[:, :prompt]))
        for i in range(prompt, ids.shape[1]):
            scores, state = model.step(state, ids[:, i:i + 1])
            parts.append(scores.log_prob(targets[:, i:i + 1]))
    stepped = torch.cat(parts, dim=1)
    tolerance = step_tolerance(config)
    torch.testing.assert_close(stepped, whole, atol=tolerance, rtol=tolerance)


def test_batch_decoding_when_the_family_has_it(case):
    _, _, model = case
    if capabilities(model).batch_decoding:
        scores, _ = model.step(model.new_state(3), sample_ids(model, 3, 5))
        assert tuple(scores.shape) == (3, 5)


def test_save_load_is_bit_exact(case, tmp_path):
    _, config, model = case
    save_checkpoint(tmp_path / "ckpt", model)
    loaded = load(tmp_path / "ckpt")
    assert loaded.config == model.config and loaded.units.state() == model.units.state()
    with torch.no_grad():  # (ids are relative to a units object: each encodes the text)
        ids, again = sample_ids(model, 2, config.context), sample_ids(loaded, 2, config.context)
        assert torch.equal(model(ids).log_prob(ids), loaded(again).log_prob(again))


def test_a_few_steps_lower_the_loss(case):
    _, config, model = case
    model.train()
    ids = sample_ids(model, 4, config.context + 1)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model.loss(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_trainer_runs_evaluates_checkpoints_and_compresses(case, text_file, tmp_path):
    name, config, _ = case
    model_section = {k: v for k, v in config.__dict__.items()}
    run = resolve(base={"model": _as_dict(model_section)}, overrides=[
        f"data.path={str(text_file)!r}", "train.steps=3", "train.batch_size=2",
        "train.eval_every=2", "train.eval_bytes=512", "train.warmup_steps=1"])
    result = untok.fit(run, tmp_path / "run", progress=False)
    assert result.step == 3 and result.best_val_bpb is not None
    model = load(tmp_path / "run" / "best")
    assert model.config.family == config.family
    result = untok.evaluate(model, untok.open_data(str(text_file), progress=False),
                            max_bytes=256)
    assert result["bytes"] > 0 and np.isfinite(result["bpb"])
    text = untok.generate_text(model, "The ", max_bytes=8, seed=0)
    assert len(text) <= 8
    if capabilities(model).can_compress:
        data = b"The quick brown fox. \xff"
        assert untok.decompress(untok.compress(data, model), model) == data
    else:
        with pytest.raises(untok.UntokError, match="cannot serve"):
            untok.compress(b"abc", model)


def _as_dict(section: dict) -> dict:
    import dataclasses

    return {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
            for k, v in section.items()}


# -- autoencoders: the families that are not language models -----------------------------


@pytest.fixture(params=AUTOENCODERS, ids=[name for name, _ in AUTOENCODERS])
def autoencoder(request):
    name, config = request.param
    torch.manual_seed(0)
    return name, config, build_model(config).eval()


def test_autoencoder_shapes_and_round_trip_of_its_units(autoencoder):
    _, config, model = autoencoder
    ids = sample_ids(model, 2, config.context)
    vectors = model.encode(ids)
    size = config.chunks.size
    assert vectors.shape == (2, config.context // size, config.chunks.dim)
    assert model.decode(vectors).shape == ids.shape
    for data in TEXTS:
        assert model.units.decode(model.units.encode(data)) == data


def test_autoencoder_save_load_is_bit_exact(autoencoder, tmp_path):
    _, config, model = autoencoder
    save_checkpoint(tmp_path / "ckpt", model)
    loaded = load(tmp_path / "ckpt")
    assert loaded.config == model.config
    ids = sample_ids(model, 2, config.context)
    with torch.no_grad():
        assert torch.equal(model.encode(ids), loaded.encode(ids))
        assert torch.equal(model.loss(ids), loaded.loss(ids))


def test_autoencoder_a_few_steps_lower_the_loss(autoencoder):
    _, config, model = autoencoder
    model.train()
    ids = sample_ids(model, 4, config.context)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model.loss(ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_autoencoder_trains_evaluates_and_refuses_to_generate(autoencoder, text_file,
                                                              tmp_path):
    _, config, _ = autoencoder
    run = resolve(base={"model": _as_dict(dict(config.__dict__))}, overrides=[
        f"data.path={str(text_file)!r}", "train.steps=3", "train.batch_size=2",
        "train.eval_every=2", "train.eval_bytes=512", "train.warmup_steps=1"])
    result = untok.fit(run, tmp_path / "run", progress=False)
    assert result.metric == "reconstruction_bits" and result.best_val_bpb is not None
    model = load(tmp_path / "run" / "best")
    scored = untok.evaluate(model, untok.open_data(str(text_file), progress=False),
                            max_bytes=256)
    assert scored["metric"] == "reconstruction_bits" and 0 <= scored["strict_accuracy"] <= 1
    assert scored["chars"] > 0 and set(scored["noise"]) == {"0.1", "0.5", "1.0"}
    with pytest.raises(untok.UntokError, match="cannot serve"):
        untok.generate_text(model, "The ", max_bytes=8)
    with pytest.raises(untok.UntokError, match="cannot serve"):
        untok.compress(b"abc", model)
