"""The tokun families: the chunk autoencoder as a model (strict accuracy, noise, round
trips, the CLI) and the tokun-lm chunk language model (character-level causality inside a
chunk, an encoder taken from an autoencoder checkpoint, frozen or trained)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import untok
from untok.checkpoint import save_checkpoint
from untok.chunks import chunk
from untok.cli import main
from untok.config import resolve
from untok.errors import CheckpointError, ConfigError
from untok.models import build_model, load
from untok.nn.checked_decoding import CheckedDecoding
from untok.reconstruction import decode_vectors, round_trip
from untok.units import CP_PAD

AE = {"family": "tokun", "unit": "codepoint", "context": 32,
      "chunks": {"levels": [4], "dim": 64, "byte_dim": 16}}
LM = {"family": "tokun-lm", "unit": "codepoint", "dim": 32, "num_layers": 2, "num_heads": 2,
      "context": 24, "chunks": {"levels": [4], "dim": 64, "byte_dim": 16, "decoder_dim": 32}}
TEXT = "Der Fuchs springt über den Hund. Лиса прыгает. 狐狸跳过狗。 \U0001f98a!\n".encode()


def config(section: dict, *overrides: str):
    return resolve(base={"model": section}, overrides=overrides).model


def trained_autoencoder(steps: int = 300) -> torch.nn.Module:
    """A small autoencoder fitted to TEXT: rows of the text repeated (chunks at every
    alignment) and of the text alone (its padded end)."""
    torch.manual_seed(0)
    model = build_model(config(AE))
    ids = torch.cat([chunk(torch.from_numpy(model.units.encode(text)), 32, CP_PAD)
                     for text in (TEXT * 4, TEXT)])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model.loss(ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def autoencoder():
    return trained_autoencoder()


# -- the autoencoder ---------------------------------------------------------------------


def test_a_trained_autoencoder_round_trips_several_scripts(autoencoder):
    result = round_trip(autoencoder, TEXT)
    assert result["decoded"] == TEXT and result["chars_right"] == result["chars"]
    assert result["chunks"] == -(-result["chars"] // 4) and result["dim"] == 64
    assert decode_vectors(autoencoder, result["vectors"]) == TEXT  # padding dropped


def test_noise_on_the_vectors_costs_accuracy_only_when_large(autoencoder):
    right = [round_trip(autoencoder, TEXT, noise=level)["chars_right"]
             for level in (0.0, 0.1, 3.0)]
    assert right[0] == right[1] or right[1] >= 0.9 * right[0]
    assert right[2] < right[0]  # noise larger than the signal breaks it: the test can fail


def test_decoded_codes_that_are_no_character_become_the_replacement(autoencoder):
    vectors = torch.randn(1, 8, 64) * 50  # far outside what the encoder makes
    ids = autoencoder.decode(vectors)
    assert ((ids < 0xD800) | (ids > 0xDFFF) | ((ids >= 0xDC80) & (ids <= 0xDCFF))).all()
    assert (ids <= untok.units.CP_PAD).all()
    autoencoder.units.decode(ids[0].numpy())  # decodes without error


def test_evaluation_scores_strict_accuracy_per_file_and_under_noise(autoencoder, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_bytes(TEXT * 3)
    (docs / "b.txt").write_bytes(bytes(range(256)) * 2)  # never trained on
    store = untok.open_data(str(docs), progress=False)
    result = untok.evaluate(autoencoder, store, "train", per_file=True)
    rows = {Path(r["name"]).name: r for r in result["per_file"]}
    assert result["metric"] == "reconstruction_bits"
    assert result["chars"] == sum(r["chars"] for r in rows.values())
    assert rows["a.txt"]["strict_accuracy"] > 0.95  # (its chunks start at BOS here)
    assert rows["b.txt"]["strict_accuracy"] < rows["a.txt"]["strict_accuracy"]
    assert result["noise"]["1.0"] <= result["noise"]["0.1"] + 1e-9


def test_the_autoencoder_cli_encodes_decodes_and_refuses_language_models(
        autoencoder, tmp_path, capsys, tiny_model):
    save_checkpoint(tmp_path / "ae", autoencoder)
    assert main(["tokun", "encode", str(tmp_path / "ae"), "--text", TEXT.decode()]) == 0
    out = capsys.readouterr().out
    assert f"characters right: {len(TEXT.decode())} of {len(TEXT.decode())}" in out
    assert main(["tokun", "encode", str(tmp_path / "ae"), "--text", TEXT.decode(),
                 "--json"]) == 0
    encoded = capsys.readouterr().out
    (tmp_path / "v.json").write_text(encoded)
    assert main(["tokun", "decode", str(tmp_path / "ae"), "--file",
                 str(tmp_path / "v.json")]) == 0
    assert capsys.readouterr().out == TEXT.decode() + "\n"
    (tmp_path / "bad.json").write_text("[1, 2")
    assert main(["tokun", "decode", str(tmp_path / "ae"), "--file",
                 str(tmp_path / "bad.json")]) == 2
    assert "not JSON" in capsys.readouterr().err
    (tmp_path / "short.json").write_text("[[1, 2]]")
    assert main(["tokun", "decode", str(tmp_path / "ae"), "--file",
                 str(tmp_path / "short.json")]) == 2
    assert "64 numbers each" in capsys.readouterr().err
    save_checkpoint(tmp_path / "lm", tiny_model)
    assert main(["tokun", "encode", str(tmp_path / "lm"), "--text", "x"]) == 2
    err = capsys.readouterr().err
    assert "not an autoencoder" in err and len(err.strip().splitlines()) == 1


def test_autoencoder_eval_prints_strict_accuracy_per_file(autoencoder, tmp_path, capsys):
    save_checkpoint(tmp_path / "ae", autoencoder)
    (tmp_path / "t.txt").write_bytes(TEXT * 20)
    assert main(["eval", str(tmp_path / "ae"), "--data", str(tmp_path / "t.txt"),
                 "--per-file"]) == 0
    out = capsys.readouterr().out
    assert "strict accuracy" in out and "under noise" in out and "t.txt" in out


@pytest.mark.parametrize("overrides, message", [
    (("model.unit='byte'",), "codepoint"),
    (("model.context=30",), "multiple of the chunk size"),
    (("model.chunks.levels=[1]",), "merge factors"),
    (("model.chunks.width=2",), "width must be 3"),
    (("model.chunks.decoder_window=-1",), "decoder_window must be >= 0"),
    (("model.chunks.decoder_window=8", "model.chunks.previous_char=true"), "previous_char"),
    (("model.embedding.ngrams=[2,3]",), "decoder_window"),  # an autoencoder has none
])
def test_bad_chunk_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(AE, *overrides)


@torch.no_grad()
@pytest.mark.parametrize("levels", [[4], [16], [4, 4]])
def test_checked_decoding_fixes_bytes_the_decoder_got_wrong(levels):
    """Logits that rank the true byte second at one to three slots of a chunk: the
    decoder alone is wrong there, the check against the encoder puts every byte right;
    a noisy vector (no bytes encode to it exactly) is decoded as the decoder reads it."""
    torch.manual_seed(0)
    model = build_model(config({**AE, "chunks": {**AE["chunks"], "levels": levels}},
                               f"model.context={16 * 4}"))
    check = CheckedDecoding(model.autoencoder.encoder)
    data = torch.randint(0, 256, (12, model.config.chunks.size, 3))
    vectors = model.autoencoder.encode(data)
    logits = torch.nn.functional.one_hot(data, 256).float() * 5
    rng = np.random.default_rng(0)
    for row in range(8):
        slots = rng.permutation(data.shape[1])[:row % 3 + 1]
        for g, w in zip(slots, rng.integers(3, size=len(slots)), strict=True):
            logits[row, g, w, (data[row, g, w] + 1 + row) % 256] = 9  # the truth second
    assert not (logits.argmax(-1) == data).all(-1).all(-1)[:8].any()
    assert (check(vectors, logits) == data).all()
    noisy = vectors + 0.3 * torch.randn_like(vectors)
    assert torch.equal(check(noisy, logits), logits.argmax(-1))


# -- the chunk language model ---------------------------------------------------------------

DECODERS = [(), ("model.chunks.previous_char=true",),  # the chunk decoder, the sequence one
            ("model.chunks.decoder_window=6", "model.chunks.decoder_layers=2",
             "model.embedding.ngrams=[2,3]", "model.embedding.buckets=64")]


def text_ids(model, length: int, seed: int = 0) -> torch.Tensor:
    ids = model.units.encode(TEXT * 8)
    start = np.random.default_rng(seed).integers(0, len(ids) - length)
    return torch.from_numpy(ids[start:start + length])[None]


@torch.no_grad()
@pytest.mark.parametrize("decoder", DECODERS)
def test_no_character_sees_a_later_one_even_inside_its_chunk(decoder):
    torch.manual_seed(0)
    model = build_model(config(LM, *decoder)).eval()
    ids = text_ids(model, 24)
    base = model(ids).hidden
    for t in range(24):  # every position, so every place inside a chunk
        changed = ids.clone()
        changed[0, t] = ord("#") if ids[0, t] != ord("#") else ord("%")
        moved = (model(changed).hidden - base).abs().amax(-1)[0]  # (T,)
        assert moved[:t].max() <= 1e-6 if t else True, t  # predictions of chars <= t
        assert moved[t:].max() > 0, t  # ... and it is used afterwards


@torch.no_grad()
@pytest.mark.parametrize("decoder", DECODERS)
def test_step_one_character_at_a_time_equals_forward_across_chunk_boundaries(decoder):
    torch.manual_seed(0)
    model = build_model(config(LM, *decoder)).eval()
    ids = text_ids(model, 23, seed=1)
    full = model(ids).hidden
    state = model.new_state(1)
    first, state = model.step(state, ids[:, :6])  # a prompt ending inside a chunk
    rest = [model.step(state, ids[:, t:t + 1])[0].hidden for t in range(6, 23)]
    torch.testing.assert_close(torch.cat([first.hidden, *rest], 1), full, atol=1e-5,
                               rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("previous", [False, True])
def test_a_chunks_first_slot_reads_the_character_before_it(previous):
    """With the context vector silenced, a chunk's first character is predicted from the
    last character of the chunk before (``previous_char``) or from nothing."""
    torch.manual_seed(0)
    model = build_model(config(LM, f"model.chunks.previous_char={str(previous).lower()}")).eval()
    model.context_in.weight.zero_()
    model.context_in.bias.zero_()
    ids = text_ids(model, 12)
    base = model(ids).hidden
    for t in range(4):  # the characters of chunk 0
        changed = ids.clone()
        changed[0, t] = ord("#") if ids[0, t] != ord("#") else ord("%")
        moved = (model(changed).hidden - base).abs().amax(-1)[0, 3]  # predicts character 4
        assert (moved > 0) == (previous and t == 3), (t, moved)


def save_ae(tmp_path, model=None):
    path = tmp_path / "ae"
    save_checkpoint(path, model or build_model(config(AE)))
    return str(path)


def test_a_frozen_encoder_comes_from_the_autoencoder_and_stays(tmp_path, autoencoder):
    path = save_ae(tmp_path, autoencoder)
    lm = build_model(config(LM, f"model.chunks.encoder={path!r}",
                            "model.chunks.train_encoder=false"))
    source = autoencoder.autoencoder.encoder.state_dict()
    for name, value in lm.encoder.state_dict().items():
        assert torch.equal(value, source[name]), name
    assert not any(p.requires_grad for p in lm.encoder.parameters())
    before = {n: p.clone() for n, p in lm.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in lm.parameters() if p.requires_grad], lr=1e-2)
    ids = text_ids(lm, 25)
    lm.loss(ids[:, :-1], ids[:, 1:]).backward()
    optimizer.step()
    for name, p in lm.named_parameters():
        assert torch.equal(p, before[name]) == name.startswith("encoder."), name


def test_a_trained_encoder_starts_from_the_autoencoder_and_learns(tmp_path, autoencoder):
    path = save_ae(tmp_path, autoencoder)
    lm = build_model(config(LM, f"model.chunks.encoder={path!r}"))
    assert all(p.requires_grad for p in lm.encoder.parameters())
    ids = text_ids(lm, 25)
    lm.loss(ids[:, :-1], ids[:, 1:]).backward()
    assert lm.encoder.merges[0].proj.weight.grad.abs().sum() > 0


def test_the_frozen_model_saves_and_loads_without_its_encoder_checkpoint(tmp_path):
    path = save_ae(tmp_path)
    lm = build_model(config(LM, f"model.chunks.encoder={path!r}",
                            "model.chunks.train_encoder=false")).eval()
    save_checkpoint(tmp_path / "lm", lm)
    import shutil

    shutil.rmtree(path)  # the LM's checkpoint holds its encoder's weights
    loaded = load(tmp_path / "lm")
    ids = text_ids(lm, 24)
    assert torch.equal(loaded(ids).hidden, lm(ids).hidden)


def test_bad_encoder_checkpoints_are_one_line_errors(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="model.chunks.encoder"):
        build_model(config(LM, f"model.chunks.encoder={str(tmp_path / 'none')!r}"))
    save_checkpoint(tmp_path / "flat", tiny_model)
    with pytest.raises(CheckpointError, match="'flat' model, not a tokun autoencoder"):
        build_model(config(LM, f"model.chunks.encoder={str(tmp_path / 'flat')!r}"))
    other = build_model(config(AE, "model.chunks.dim=48"))
    path = save_ae(tmp_path, other)
    with pytest.raises(CheckpointError, match="chunks.dim = 48"):
        build_model(config(LM, f"model.chunks.encoder={path!r}"))
    with pytest.raises(ConfigError, match="freezes a trained encoder"):
        config(LM, "model.chunks.train_encoder=false")


def test_the_chunk_model_learns_generates_and_scores_bits_per_byte(tmp_path, text_file):
    run = resolve(preset_name="tokun-lm-tiny", overrides=[
        f"data.path={str(text_file)!r}", "train.steps=150", "train.eval_every=150",
        "train.eval_bytes=1024", "train.lr=3e-3"])
    result = untok.fit(run, tmp_path / "run", progress=False)
    assert result.unit == "codepoint" and result.best_val_bpb < 8
    model = load(tmp_path / "run" / "best")
    text = untok.generate_text(model, "First Citizen:\n", max_bytes=40, seed=0)
    assert 0 < len(text) <= 40
    scored = untok.evaluate(model, untok.open_data(str(text_file), progress=False),
                            max_bytes=2048)
    assert scored["bytes"] > 0 and 0 < scored["bpb"] < 8


def test_invalid_utf8_and_every_script_have_a_finite_code_length():
    torch.manual_seed(0)
    model = build_model(config(LM)).eval()
    data = b"\xff\xfe ok \xc3 " + TEXT
    ids = torch.from_numpy(model.units.encode(data))[None]
    with torch.no_grad():
        nll = -model(ids[:, :-1]).log_prob(ids[:, 1:])
    assert torch.isfinite(nll).all() and (nll > 0).all()


def test_random_characters_replace_about_their_share():
    from untok.models.tokun import with_random_chars

    torch.manual_seed(0)
    ids = torch.full((64, 256), ord("a"))
    mixed = with_random_chars(ids, 0.25)
    share = float((mixed != ids).float().mean())
    assert 0.2 < share < 0.3 and int(mixed.max()) <= CP_PAD and int(mixed.min()) >= 0
    model = build_model(config(AE, "model.chunks.random_chars=0.25"))
    model.train()
    assert torch.isfinite(model.loss(ids[:2, :32]))


def test_empty_and_one_character_texts(autoencoder):
    with pytest.raises(untok.UntokError, match="nothing to encode"):
        round_trip(autoencoder, b"")
    result = round_trip(autoencoder, b"D")
    assert result["chunks"] == 1 and result["chars"] == 1
