"""BLT beyond the protocol suite (tests/test_protocol.py runs its space, fixed, learned and
mmfree examples): every patcher, entropy patching with a real entropy model, patch boundaries."""

import dataclasses
import math
import zlib

import pytest
import torch

from untok.checkpoint import save_checkpoint
from untok.compression import CRC, HEADER, HEADERS, compress, decompress
from untok.config import ModelConfig, PatchingConfig, resolve
from untok.errors import ConfigError
from untok.models import ByteLM, build_model, load
from untok.units import BOS, VOCAB_SIZE
from untok.weights_digest import saved_weights_sha256s

TINY_ENTROPY = ModelConfig(dim=32, num_layers=1, num_heads=2, context=64)
PATCHERS = ["fixed", "space", "entropy", "entropy-relative", "entropy-newline", "learned"]


THRESHOLDS: dict[str, float] = {}


@pytest.fixture(scope="module")
def entropy_ckpt(tmp_path_factory):
    """A random tiny entropy model, and thresholds at quantiles of its entropies on the
    test text (so that patches really vary in length)."""
    torch.manual_seed(0)
    model = build_model(TINY_ENTROPY)
    ckpt = save_checkpoint(tmp_path_factory.mktemp("ent") / "ckpt", model)
    with torch.no_grad():
        logp = model(sample_ids(4, 44)).logits.log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1).flatten() / math.log(2)
    THRESHOLDS["global"] = float(entropy.quantile(0.7))
    THRESHOLDS["relative"] = float(entropy.diff().abs().quantile(0.7))
    return str(ckpt)


def blt_config(kind: str, entropy_ckpt: str, **patching) -> ModelConfig:
    base = resolve(preset_name="blt-tiny").model
    options = {"fixed": {"kind": "fixed", "patch_size": 3},
               "space": {"kind": "space", "max_len": 6},
               "entropy": {"kind": "entropy", "threshold": THRESHOLDS["global"],
                           "max_len": 6},
               "entropy-relative": {"kind": "entropy", "relative": THRESHOLDS["relative"],
                                    "max_len": 5},
               "entropy-newline": {"kind": "entropy", "threshold": THRESHOLDS["global"],
                                   "max_len": 6, "newline_reset": True},
               "learned": {"kind": "learned", "target_len": 3, "max_len": 6}}[kind]
    if options["kind"] == "entropy":
        options["entropy_model"] = entropy_ckpt
    return dataclasses.replace(base, patching=PatchingConfig(**{**options, **patching}))


def make(kind, entropy_ckpt):
    torch.manual_seed(0)
    return build_model(blt_config(kind, entropy_ckpt)).eval()


def sample_ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    text = b"the cat sat on the mat.\nA dog, a bird; zebras! 12 34\n" * 4
    starts = torch.randint(0, len(text) - length, (batch,), generator=g)
    ids = torch.tensor([list(text[s:s + length]) for s in starts.tolist()])
    ids[:, 0] = BOS
    return ids


@pytest.mark.parametrize("kind", PATCHERS)
def test_shapes_protocol_and_patches(kind, entropy_ckpt):
    model = make(kind, entropy_ckpt)
    assert isinstance(model, ByteLM)
    ids = sample_ids(3, 40)
    assert model(ids).logits.shape == (3, 40, VOCAB_SIZE)
    starts, _ = model.patcher(ids)
    assert starts[:, 0].all() and 1 < starts.sum(1).min() < 40  # real patches


@pytest.mark.parametrize("kind", PATCHERS)
@pytest.mark.parametrize("t", [5, 23, 39])
def test_no_future_byte_leaks(kind, t, entropy_ckpt):
    """Changing byte t moves no logit, patch boundary or entropy before t."""
    model = make(kind, entropy_ckpt)
    ids = sample_ids(2, 40, seed=t)
    changed = ids.clone()
    changed[:, t] = (changed[:, t] + 17) % 256
    changed[:, t + 1:] = torch.randint(0, 256, changed[:, t + 1:].shape)
    with torch.no_grad():
        torch.testing.assert_close(model(changed).logits[:, :t], model(ids).logits[:, :t],
                                   atol=1e-5, rtol=1e-5)
        (s1, e1), (s2, e2) = model.patcher(ids), model.patcher(changed)
    assert torch.equal(s1[:, :t], s2[:, :t])
    if e1 is not None:
        torch.testing.assert_close(e1[:, :t + 1], e2[:, :t + 1])  # H_t predicts byte t


def test_gradients_do_not_leak(entropy_ckpt):
    model = make("space", entropy_ckpt).train()
    ids = sample_ids(1, 40)
    emb = model.embed.table(ids).detach().requires_grad_(True)
    original = model.embed.forward
    model.embed.forward = lambda _: emb
    try:
        model(ids).logits[0, 20].sum().backward()
    finally:
        model.embed.forward = original
    assert emb.grad[0, 21:].abs().sum() == 0 and emb.grad[0, :21].abs().sum() > 0


@pytest.mark.parametrize("kind", PATCHERS)
def test_step_equals_forward(kind, entropy_ckpt):
    model = make(kind, entropy_ckpt)
    ids = sample_ids(1, 44, seed=3)
    with torch.no_grad():
        full = model(ids)
        state = model.new_state(1)
        prompt, parts = 9, []
        scores, state = model.step(state, ids[:, :prompt])
        parts.append(scores.logits)
        for i in range(prompt, ids.shape[1]):
            scores, state = model.step(state, ids[:, i:i + 1])
            parts.append(scores.logits)
    torch.testing.assert_close(torch.cat(parts, 1), full.logits, atol=1e-4, rtol=1e-4)
    starts, _ = model.patcher(ids)
    assert state.patches == int(starts.sum()) - 1  # every patch but the open one closed


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["space", "entropy", "learned"])
def test_compiled_decoding_matches_eager(kind, entropy_ckpt):
    """The compiled byte steps (static caches, every patch-memory slot masked) score as the
    forward pass does, and generate what eager decoding does past the context, where the
    local caches and the ring of completed patches wrap."""
    from untok.generate import SamplerConfig, compile_decoding, generate_text

    eager = make(kind, entropy_ckpt)
    compiled = compile_decoding(make(kind, entropy_ckpt))
    assert compiled.static_decoding
    assert kind != "entropy" or compiled.patcher.entropy_model.static_decoding
    ids = sample_ids(1, 44, seed=3)
    with torch.no_grad():
        scores, state = compiled.step(compiled.new_state(1), ids)
        torch.testing.assert_close(scores.logits, eager(ids).logits, atol=1e-4, rtol=1e-4)
    assert state.memory.filled.sum() == 1 + state.patches
    greedy = SamplerConfig(temperature=0)
    long = 8 * eager.config.context  # >= 64 patches of at most 6 bytes: the ring wraps
    assert generate_text(compiled, b"the cat", max_bytes=long, sampler=greedy) == \
        generate_text(eager, b"the cat", max_bytes=long, sampler=greedy)


def test_patcher_step_equals_forward(entropy_ckpt):
    for kind in PATCHERS:
        patcher = make(kind, entropy_ckpt).patcher
        ids = sample_ids(1, 44, seed=5)
        starts, entropies = patcher(ids)
        state = patcher.new_state(1, ids.device)
        probs = patcher.boundary_probs(ids) if kind == "learned" else torch.zeros(ids.shape)
        stepped = [patcher.step(state, ids[:, i], probs[:, i]) for i in range(ids.shape[1])]
        assert torch.equal(torch.stack([s for s, _ in stepped], 1), starts), kind
        if entropies is not None:
            torch.testing.assert_close(torch.stack([e for _, e in stepped[1:]], 1),
                                       entropies[:, 1:], atol=1e-4, rtol=1e-4)


def test_generation_past_the_context(entropy_ckpt):
    from untok.generate import SamplerConfig, generate_text

    model = make("entropy", entropy_ckpt)
    out = generate_text(model, b"the cat", max_bytes=120, sampler=SamplerConfig(top_k=4),
                        seed=0)
    assert len(out) == 120  # context is 48 bytes: every cache slides


@pytest.mark.parametrize("kind", ["space", "entropy"])
def test_save_load_round_trip(kind, entropy_ckpt, tmp_path):
    model = make(kind, entropy_ckpt)
    save_checkpoint(tmp_path / "blt", model)
    loaded = load(tmp_path / "blt")
    assert loaded.config == model.config
    ids = sample_ids(2, 30)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)
    if kind == "entropy":  # the entropy model travels inside the checkpoint
        assert loaded.config.patching.entropy_shape == TINY_ENTROPY
        for a, b in zip(loaded.patcher.entropy_model.parameters(),
                        model.patcher.entropy_model.parameters(), strict=True):
            assert torch.equal(a, b) and not a.requires_grad


def test_compression_with_an_entropy_model_finds_its_model(entropy_ckpt, tmp_path):
    """A BLT and its entropy model tie two groups of weights, which safetensors saves in
    either order: the container names the weights themselves, so every decompression, in
    this process or after a save and load, finds the model (it failed about every other
    time when the file's hash named the model); a file of format 5, which names one of the
    saved orders, decodes as well."""
    model = make("entropy", entropy_ckpt)
    text = b"To be, or not to be, that is the question:\n" * 3
    blob = compress(text, model, chunk_size=60, batch_size=1)
    assert len(saved_weights_sha256s(model)) == 2  # (two tied groups: two orders)
    for _ in range(4):
        assert decompress(blob, model) == text
    save_checkpoint(tmp_path / "blt", model)
    assert decompress(blob, load(tmp_path / "blt")) == text
    fields = list(HEADER.unpack_from(blob))
    for saved in saved_weights_sha256s(model):
        head = HEADERS[5].pack(fields[0], 5, *fields[2:4], saved, *fields[5:-1])
        old = head + CRC.pack(zlib.crc32(head)) + blob[HEADER.size + CRC.size:]
        assert decompress(old, model) == text


def test_a_few_steps_lower_the_loss(entropy_ckpt):
    torch.manual_seed(0)
    model = build_model(blt_config("entropy", entropy_ckpt))
    frozen = [p.clone() for p in model.patcher.entropy_model.parameters()]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=3e-3)
    ids = sample_ids(4, 41)
    losses = []
    for _ in range(15):
        loss = model.loss(ids[:, :-1], ids[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5
    for a, b in zip(frozen, model.patcher.entropy_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_entropy_patching_needs_a_model():
    with pytest.raises(ConfigError, match="entropy model"):
        resolve(preset_name="blt-tiny", overrides=["model.patching.kind=entropy"])


def test_entropy_model_must_read_bytes(tmp_path):
    other = build_model(dataclasses.replace(TINY_ENTROPY, vocab_size=512))
    save_checkpoint(tmp_path / "wide", other)
    config = resolve(preset_name="blt-tiny", overrides=[
        "model.patching.kind=entropy", f"model.patching.entropy_model='{tmp_path / 'wide'}'",
        "model.patching.threshold=2.0"]).model
    with pytest.raises(ConfigError, match="must read bytes"):
        build_model(config)


def test_missing_entropy_checkpoint_is_a_clear_error(tmp_path):
    from untok.errors import UntokError

    config = resolve(preset_name="blt-tiny", overrides=[
        "model.patching.kind=entropy", f"model.patching.entropy_model='{tmp_path / 'nope'}'"
    ]).model
    with pytest.raises(UntokError, match="not found"):
        build_model(config)


def test_text_shorter_than_a_patch(entropy_ckpt):
    model = make("fixed", entropy_ckpt)
    ids = torch.tensor([[BOS, 104]])  # one patch, still open
    with torch.no_grad():
        assert model(ids).logits.shape == (1, 2, VOCAB_SIZE)
        assert torch.isfinite(model(ids).logits).all()


def test_cli_trains_every_patcher_and_inspects_patches(capsys, tmp_path, text_file):
    """`untok train --preset blt-tiny --patching ...` end to end, then `untok patches`."""
    import json

    from untok.cli import main

    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert code == 0, err
        return out

    run("train", "--data", text_file, "--preset", "entropy-small", "--steps", 3,
        "--out", tmp_path / "ent", "--quiet", "--set", "model.context=32",
        "--set", "model.dim=32")
    for kind in ("fixed", "space", "entropy"):
        args = ["train", "--data", text_file, "--preset", "blt-tiny", "--steps", 3,
                "--patching", kind, "--out", tmp_path / kind, "--quiet"]
        if kind == "entropy":
            args += ["--entropy-model", tmp_path / "ent" / "last"]
        run(*args)
        model = load(tmp_path / kind / "last")
        assert model.config.patching.kind == kind
    fitted = load(tmp_path / "entropy" / "last").config.patching
    assert fitted.threshold is not None and fitted.entropy_shape.dim == 32

    report = json.loads(run("patches", tmp_path / "ent" / "last", "--text",
                            "the cat sat on the mat. " * 8, "--fit", "4", "--json"))
    assert report["patching"]["kind"] == "entropy" and report["starts"][0] == 0
    assert 2.5 < report["mean_patch_len"] < 6
    assert len(report["entropies"]) == report["bytes"] == 192
    assert set(report["entropy"]) == {"mean", "std", "median", "min", "max"}
    text = run("patches", tmp_path / "space" / "last", "--text", "hello, world")
    assert "'hello, '" in text and "'world'" in text and "mean length 6.00" in text
    text = run("patches", tmp_path / "entropy" / "last", "--file", text_file)
    assert "entropy (bits): mean" in text and "more patches" in text


@pytest.mark.parametrize("args, message", [
    (["--text", "x", "--file", "y"], "exactly one of --text or --file"),
    (["--text", ""], "the text is empty"),
    (["--file", "/nonexistent/file"], "cannot read"),
])
def test_cli_patches_bad_input(capsys, tmp_path, args, message):
    from untok.cli import main

    save_checkpoint(tmp_path / "m", build_model(TINY_ENTROPY))
    code = main(["patches", str(tmp_path / "m"), *args])
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err


def test_no_patch_exceeds_max_len(entropy_ckpt):
    from untok.patching import patch_lengths

    ids = torch.tensor([[BOS, *b"a" * 50, *b" " * 30, *b"word " * 5]])
    for kind in PATCHERS:
        patcher = make(kind, entropy_ckpt).patcher
        starts, _ = patcher(ids)
        assert patch_lengths(starts[0]).max() <= patcher.max_len, kind


def test_fit_threshold_hits_the_target_and_rejects_impossible_ones():
    from untok.patching import apply_max_len, fit_threshold, mean_patch_len

    entropies = torch.rand(4, 500) * 6
    threshold = fit_threshold(entropies, 4.0, max_len=16)
    assert abs(mean_patch_len(apply_max_len(entropies > threshold, 16)) - 4.0) < 0.1
    with pytest.raises(ConfigError, match="max_len"):
        fit_threshold(entropies, 20.0, max_len=16)


def test_precomputed_entropies_feed_training(capsys, tmp_path, store):
    """`untok data entropies` writes per-unit entropies equal to the patcher's own; a BLT
    with that entropy model then trains from them (and ignores stale ones)."""
    import json

    import numpy as np

    from untok.cli import main
    from untok.data.entropies import entropy_paths, open_entropies
    from untok.data.loader import UnitStream
    from untok.patching import chunked_entropies

    torch.manual_seed(0)
    ent = save_checkpoint(tmp_path / "ent", build_model(TINY_ENTROPY))
    assert main(["data", "entropies", str(store.paths["bin"].with_suffix("")), "-m",
                 str(ent), "--quiet"]) == 0
    assert "wrote entropies" in capsys.readouterr().out
    config = build_model(dataclasses.replace(
        resolve(preset_name="blt-tiny").model,
        patching=PatchingConfig(kind="entropy", entropy_model=str(ent), threshold=7.0))
    ).config
    arrays = open_entropies(store, config.patching)
    stream = UnitStream(store, "val")
    ids = torch.from_numpy(stream.window(0, len(stream)))
    model = build_model(config)
    expected = chunked_entropies(model.patcher, ids, chunk=300)
    np.testing.assert_allclose(arrays["val"], expected.numpy(), atol=2e-2)  # float16
    assert open_entropies(store, dataclasses.replace(config.patching, newline_reset=True)) \
        is None

    def train(out: str, *extra: str) -> dict:
        assert main(["train", "--data", str(store.paths["bin"].with_suffix("")), "--preset",
                     "blt-tiny", "--patching", "entropy", "--entropy-model", str(ent),
                     "--steps", "1", "--out", str(tmp_path / out), "--quiet", *extra]) == 0
        start = json.loads((tmp_path / out / "metrics.jsonl").read_text().splitlines()[0])
        assert start["event"] == "start"
        return start

    paths = entropy_paths(store)
    written = paths["train"].stat().st_mtime_ns
    assert train("run")["precomputed_entropies"] is True
    assert paths["train"].stat().st_mtime_ns == written  # a matching cache is reused
    paths["meta"].unlink()
    assert train("run2", "--set", "train.entropy_cache=false")["precomputed_entropies"] \
        is False  # without the files it still trains, running the entropy model
    assert not paths["meta"].exists()
    assert train("run3")["precomputed_entropies"] is True  # by default: computed once
    np.testing.assert_allclose(open_entropies(store, config.patching)["val"],
                               expected.numpy(), atol=2e-2)


def test_entropy_model_must_be_a_flat_transformer(tmp_path):
    mmfree = build_model(resolve(preset_name="mmfree-tiny").model)
    save_checkpoint(tmp_path / "mm", mmfree)
    config = resolve(preset_name="blt-tiny", overrides=[
        "model.patching.kind=entropy", f"model.patching.entropy_model='{tmp_path / 'mm'}'",
        "model.patching.threshold=2.0"]).model
    with pytest.raises(ConfigError, match="flat byte transformer"):
        build_model(config)
