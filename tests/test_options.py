"""Options of the flat model and trainer from the tokenizer-free literature beyond the
protocol suite (tests/test_protocol.py runs every option's example): wave embeddings, the
code-point unit, the distance head, differential attention, the entropy-adaptive sampler
and the Q-learning learning-rate controller."""

import json
import math

import numpy as np
import pytest
import torch

from conftest import SHARED, shakespeare
from untok.checkpoint import read_train_state
from untok.compression import CompressionError, compress
from untok.config import resolve
from untok.data.ingest import ingest
from untok.data.loader import EncodedStream, UnitStream
from untok.errors import ConfigError
from untok.evaluate import evaluate
from untok.generate import SamplerConfig, entropy_bits, generate, pick
from untok.models import build_model, load
from untok.nn.attention import CausalSelfAttention, lambda_init_of, rope_angles
from untok.nn.codepoint_head import CodepointHead, CodepointScores
from untok.nn.embeddings import WaveEmbedding
from untok.train.lr_control import QLearnController
from untok.train.trainer import train
from untok.units import (
    CP_BOS,
    CP_EOS,
    CP_PAD,
    CP_VOCAB_SIZE,
    NUM_CODEPOINTS,
    VOCAB_SIZE,
    CodepointUnits,
    decode_codepoints,
    encode_codepoints,
    utf8_lengths,
)

OPTIONS = {
    "wave": ["model.embedding=wave"],
    "wave-untied": ["model.embedding=wave", "model.head=linear"],
    "differential": ["model.attention=differential"],
    "mse": ["model.head=distance"],
    "mse-wave": ["model.head=distance", "model.embedding=wave"],
    "codepoint": ["model.unit=codepoint"],
    "codepoint-wave": ["model.unit=codepoint", "model.embedding=wave"],
    "codepoint-differential": ["model.unit=codepoint", "model.attention=differential"],
}
CJK = "我们在这里学习中文。日本語の文章です。한국어 문장입니다. Ελληνικά! Привет, мир. "


def config_of(name, *extra):
    return resolve(preset_name="tiny", overrides=[*OPTIONS[name], *extra])


def build(name):
    torch.manual_seed(0)
    return build_model(config_of(name).model)


def sample_ids(model, batch=2, length=32):
    if model.config.unit == "codepoint":
        text = (CJK * 4).encode()
        ids = torch.from_numpy(encode_codepoints(text)[:length].copy())
        return torch.stack([ids.roll(i * 5) for i in range(batch)])
    return torch.randint(0, 256, (batch, length))


@pytest.fixture(params=list(OPTIONS))
def option(request):
    return request.param


def test_a_few_steps_lower_the_loss(option):
    model = build(option)
    text = shakespeare().read_bytes()[:4096] if model.config.unit == "byte" else \
        (CJK * 20).encode()
    ids = torch.from_numpy(model.units.encode(text)[:8 * 33].reshape(8, 33).copy())
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses, bits = [], []
    for _ in range(60):
        loss = model.loss(ids[:, :-1], ids[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        if not model.nll_loss:  # the loss is a distance: check the bits too
            with torch.no_grad():
                bits.append(-float(model(ids[:, :-1]).log_prob(ids[:, 1:]).mean()))
    if bits:  # mse: the distance shrinks, and so do the bits of the calibrated scores
        assert losses[-1] < 0.9 * losses[0] and bits[-1] < 0.9 * bits[0], (losses, bits)
    else:
        assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("option", ["wave", "mse", "codepoint"])
def test_trainer_logs_the_loss_in_the_units_of_the_model(option, text_file, tmp_path):
    config = config_of(option, f"data.path={str(text_file)!r}", "train.steps=6",
                       "train.eval_every=3")
    result = train(config, tmp_path / "run", progress=False)
    assert result.step == 6 and math.isfinite(result.best_val_bpb)
    loaded = load(tmp_path / "run" / "best")
    assert loaded.config == config.model
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    key = {"mse": "loss", "codepoint": "loss_bpc"}.get(option, "loss_bpb")
    assert all(key in r for r in records if "step" in r and "event" not in r)


# -- wave embeddings -----------------------------------------------------------------------

def test_wave_parameters_do_not_grow_with_the_alphabet():
    small, large = WaveEmbedding(64, 32, VOCAB_SIZE), WaveEmbedding(64, 32, CP_VOCAB_SIZE)
    count = sum(p.numel() for p in small.parameters())
    assert count == sum(p.numel() for p in large.parameters())
    byte_model, cp_model = build("wave"), build("codepoint-wave")
    assert sum(p.numel() for p in byte_model.embed.parameters()) == \
        sum(p.numel() for p in cp_model.embed.parameters())
    # the table embedding of bytes does grow: 264 rows
    assert build_model(resolve(preset_name="tiny").model).embed.table.weight.shape[0] == \
        VOCAB_SIZE


@pytest.mark.parametrize("max_value,values", [
    (VOCAB_SIZE, torch.arange(0, VOCAB_SIZE)),
    (CP_VOCAB_SIZE, torch.cat([torch.arange(0, 300), torch.arange(0x4E00, 0x4F00),
                               torch.arange(0x10FF00, 0x110003)])),
])
def test_wave_init_tells_neighbours_apart(max_value, values):
    torch.manual_seed(0)
    wave = WaveEmbedding(64, 64, max_value)
    wave.init_parameters()
    features = wave.waves(values)
    gaps = (features[1:] - features[:-1]).norm(dim=-1)
    assert gaps.min() > 0.1 * features.norm(dim=-1).mean(), "neighbouring values collide"
    with torch.no_grad():
        out = wave(values)
    assert torch.isfinite(out).all() and (out[1:] - out[:-1]).norm(dim=-1).min() > 0


def test_tied_wave_output_scores_the_input_embeddings():
    model = build("wave").eval()
    ids = torch.randint(0, 256, (1, 8))
    with torch.no_grad():
        logits = model(ids).logits
        h = model._hidden(ids)
        table = model.embed(torch.arange(VOCAB_SIZE))
    assert model.head is None
    torch.testing.assert_close(logits, h @ table.T)


# -- code points ---------------------------------------------------------------------------

def multilingual_files():
    folder = SHARED / "multilingual"
    if not folder.is_dir():
        pytest.skip(f"reference corpus missing: {folder} (see ../shared/data/README.md)")
    files = sorted(folder.glob("*.txt"))
    assert len(files) == 25
    return files


def test_codepoint_round_trip_on_every_language():
    for path in multilingual_files():
        data = path.read_bytes()
        ids = encode_codepoints(data)
        assert decode_codepoints(ids) == data, path.name
        assert utf8_lengths(ids).sum() == len(data)
        assert len(ids) == len(data.decode("utf-8")), "valid UTF-8: one id per character"
        assert not ((ids >= 0xD800) & (ids <= 0xDFFF)).any()


@pytest.mark.parametrize("data", [
    b"", b"\xff", b"abc\x80\xc3", b"\xed\xa0\x80 (an encoded surrogate)",
    b"\xf4\x90\x80\x80 (past U+10FFFF)", b"\xc0\xaf overlong", bytes(range(256)),
    "\U0010ffff\ud7ff\ue000".encode() + b"\xe2\x82",
])
def test_codepoint_round_trip_on_invalid_utf8(data):
    ids = encode_codepoints(data)
    assert decode_codepoints(ids) == data
    assert utf8_lengths(ids).sum() == len(data)
    assert (ids < NUM_CODEPOINTS).all()


def test_codepoint_stream_holds_the_split(tmp_path):
    path = tmp_path / "mixed.txt"
    data = (CJK * 50).encode() + b"\xff\xfe broken \xe2\x82 bytes\n" + (CJK * 50).encode()
    path.write_bytes(data)
    store = ingest([str(path)], tmp_path / "store", progress=False)
    for split in ("train", "val"):
        bytes_stream = UnitStream(store, split)
        cp_stream = EncodedStream(store, split, CodepointUnits())
        cp_ids = cp_stream.gather(np.arange(len(cp_stream)))
        byte_ids = bytes_stream.gather(np.arange(len(bytes_stream)))
        assert decode_codepoints(cp_ids) == bytes(int(v) for v in byte_ids if v < 256)
        assert (cp_ids == CP_BOS).sum() == (byte_ids == 256).sum()
        assert len(cp_stream) < len(bytes_stream) / 2  # CJK: about a third of the steps


def test_factorized_head_is_a_distribution_over_every_id():
    # every id of planes 0..17 (a superset of the real ids: mass there is simply lost)
    torch.manual_seed(0)
    head = CodepointHead(16)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    h = torch.randn(16)
    with torch.no_grad():
        logp = torch.cat([head.log_prob(h.expand(len(ids), 16), ids) for ids in
                          torch.arange(18 << 16).split(1 << 16)]).double()
        logp[CP_PAD] = _pad_logp(head, h)  # log_prob reports 0 for PAD targets
    assert abs(float(torch.logsumexp(logp, 0))) < 1e-4


def _pad_logp(head, h):
    """log P(PAD), level by level."""
    plane, prefix = torch.tensor([CP_PAD >> 16]), torch.tensor([CP_PAD >> 8])
    levels = ((head.plane_logits(h[None]), CP_PAD >> 16),
              (head.block_logits(h[None], plane), (CP_PAD >> 8) & 255),
              (head.char_logits(h[None], prefix), CP_PAD & 255))
    return sum(float(logits.log_softmax(-1)[0, index]) for logits, index in levels)


def test_sampled_characters_are_always_text_or_eos():
    torch.manual_seed(0)
    head = CodepointHead(16)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=2.0)
    scores = CodepointScores(torch.randn(4000, 16), head)
    with torch.no_grad():
        chosen = scores.choose(lambda logits: torch.multinomial(logits.softmax(-1), 1)[:, 0])
    ok = (chosen < 0xD800) | ((chosen >= 0xDC80) & (chosen <= 0xDCFF)) | \
        ((chosen > 0xDFFF) & (chosen < NUM_CODEPOINTS)) | (chosen == CP_EOS)
    assert ok.all(), chosen[~ok][:10]
    text = chosen[chosen < NUM_CODEPOINTS]
    assert decode_codepoints(text) == decode_codepoints(encode_codepoints(
        decode_codepoints(text)))


def test_codepoint_eval_reports_bits_per_utf8_byte(tmp_path):
    path = tmp_path / "cjk.txt"
    path.write_bytes((CJK * 200).encode())
    store = ingest([str(path)], tmp_path / "store", progress=False)
    byte_model, cp_model = build_model(resolve(preset_name="tiny").model), build("codepoint")
    a, b = evaluate(byte_model, store), evaluate(cp_model, store)
    assert a["bytes"] == b["bytes"] == store.split_bytes()["val"]
    assert b["units"] < a["units"] / 2  # one step per character
    assert b["bpb"] == pytest.approx(b["bits"] / b["bytes"])
    chars = len(_val_text(store).decode())
    assert b["bits_per_char"] == pytest.approx(b["bits"] / chars)
    assert a["bits_per_char"] == pytest.approx(a["bits"] / chars)
    assert b["bpb"] > 0 and math.isfinite(b["bpb"])


def _val_text(store):
    stream = UnitStream(store, "val")
    ids = stream.gather(np.arange(len(stream)))
    return bytes(int(v) for v in ids if v < 256)


def test_codepoint_generation_streams_whole_characters():
    model = build("codepoint").eval()
    pieces = list(generate(model, "日本", max_bytes=60, seed=0))
    assert pieces and sum(map(len, pieces)) <= 60
    for piece in pieces:
        assert len(decode_codepoints(encode_codepoints(piece))) == len(piece)
        assert 1 <= len(piece) <= 4
        assert len(encode_codepoints(piece)) == 1  # one character (or one raw byte)
    again = list(generate(model, "日本", max_bytes=60, seed=0))
    assert pieces == again


def test_compression_refuses_a_codepoint_model():
    with pytest.raises(CompressionError, match="cannot serve this: compression codes bytes"):
        compress(b"hello", build("codepoint"))


# -- mse objective -------------------------------------------------------------------------

def test_mse_targets_are_stop_gradient_and_temperature_is_learned():
    model = build("mse")
    ids = torch.randint(0, 256, (2, 9))
    h = torch.randn(2, 8, model.config.dim, requires_grad=True)
    model.mse_loss(h, ids[:, 1:]).backward()
    assert model.embed.table.weight.grad is None, "the target embeddings must not move"
    assert model.log_temperature.grad is not None and model.log_temperature.grad != 0
    assert h.grad.abs().sum() > 0
    logits = model(ids).logits
    assert torch.allclose(logits.softmax(-1).sum(-1), torch.ones(2, 9))


def test_mse_scores_rank_candidates_by_distance():
    model = build("mse").eval()
    with torch.no_grad():
        model.log_temperature.fill_(0.5)
        table = model.targets()  # the embeddings at unit RMS
        h = table[[65, 200]][None].clone()  # exactly on two candidates
        scores = model.distance_scores(h)
        distance = torch.cdist(h[0], table)
    assert scores[0].argmax(-1).tolist() == [65, 200]
    assert torch.equal(scores[0].argsort(-1, descending=True)[:, :5],
                       distance.argsort(-1)[:, :5])


# -- differential attention ----------------------------------------------------------------

def test_differential_lambda_init_by_depth_and_equal_parameters():
    assert lambda_init_of(1) == pytest.approx(0.2)
    assert lambda_init_of(2) == pytest.approx(0.8 - 0.6 * math.exp(-0.3))
    assert lambda_init_of(30) < 0.8
    standard = build_model(resolve(preset_name="tiny").model)
    diff = build("differential")
    assert [b.attn.lambda_init for b in diff.blocks] == [lambda_init_of(1), lambda_init_of(2)]
    extra = sum(b.attn.lambdas.numel() + b.attn.head_norm.weight.numel() for b in diff.blocks)
    assert diff.num_params() == standard.num_params() + extra
    assert extra < 0.01 * standard.num_params()


def test_differential_attention_needs_pairs_of_heads():
    with pytest.raises(ConfigError, match="even"):
        resolve(preset_name="tiny", overrides=["model.attention=differential",
                                              "model.num_heads=1"])


# -- grouped-query attention ---------------------------------------------------------------

def test_grouped_query_attention_caches_less_and_equals_shared_heads():
    torch.manual_seed(0)
    attn = CausalSelfAttention(32, 4, kv_heads=1)
    x = torch.randn(2, 5, 32)
    cos, sin = rope_angles(torch.arange(5), 8, 10000.0)
    whole = attn(x, cos, sin)
    cache = attn.new_cache(2, 8, x.device, x.dtype)
    assert cache.k.shape == (2, 1, 8, 8)  # one key/value head, not four
    stepped = torch.cat([attn(x[:, t:t + 1], cos[t:t + 1], sin[t:t + 1], cache,
                              torch.tensor([t])) for t in range(5)], 1)
    torch.testing.assert_close(stepped, whole, atol=1e-5, rtol=1e-5)
    shared = CausalSelfAttention(32, 4)  # four heads whose keys and values are equal
    q, k, v = attn.qkv.weight.detach().split([32, 8, 8])
    shared.qkv.weight.data = torch.cat([q, k.repeat(4, 1), v.repeat(4, 1)])
    shared.out.weight.data = attn.out.weight.detach()
    torch.testing.assert_close(shared(x, cos, sin), whole, atol=1e-5, rtol=1e-5)


def test_grouped_query_attention_options_are_checked():
    assert build_model(resolve(preset_name="tiny", overrides=["model.kv_heads=1"]).model
                       ).num_params() < build_model(resolve(preset_name="tiny").model).num_params()
    with pytest.raises(ConfigError, match="kv_heads applies to standard attention"):
        resolve(preset_name="tiny", overrides=["model.attention=differential",
                                              "model.num_heads=2", "model.kv_heads=1"])


# -- entropy-adaptive sampler --------------------------------------------------------------

def test_entropy_bits():
    assert float(entropy_bits(torch.zeros(1, 256))) == pytest.approx(8.0)
    peaked = torch.full((1, 10), -torch.inf)
    peaked[0, 3] = 0.0
    assert float(entropy_bits(peaked)) == pytest.approx(0.0)


def test_adaptive_sampler_bands():
    sampler = SamplerConfig(sampler="adaptive", low=0.3, high=2.5, top_k=3)
    generator = torch.Generator().manual_seed(0)
    sure = torch.tensor([[8.0, 0.0, 0.0, 0.0]])  # H about 0.01 bits: greedy
    assert float(entropy_bits(sure)) < 0.3
    assert all(int(pick(sure, sampler, generator)) == 0 for _ in range(50))
    middle = torch.tensor([[2.0, 1.9, 1.8, -3.0, -3.0, -3.0]])  # between: top-3 only
    assert 0.3 <= float(entropy_bits(middle)) < 2.5
    seen = {int(pick(middle, sampler, generator)) for _ in range(300)}
    assert seen == {0, 1, 2}
    unsure = torch.zeros(1, 64)  # 6 bits: every option can come out
    seen = {int(pick(unsure, sampler, generator)) for _ in range(2000)}
    assert len(seen) > 40


def test_adaptive_sampler_options_are_checked():
    for bad in (dict(low=2.0, high=1.0), dict(low=-1.0), dict(temperature=0.0)):
        with pytest.raises(ConfigError):
            SamplerConfig(sampler="adaptive", **bad).validate()
    with pytest.raises(ConfigError, match="--sampler"):
        SamplerConfig(sampler="nope").validate()


def test_adaptive_generation_is_reproducible():
    model = build_model(resolve(preset_name="tiny").model).eval()
    sampler = SamplerConfig(sampler="adaptive")
    a = b"".join(generate(model, "To be", max_bytes=30, sampler=sampler, seed=3))
    b = b"".join(generate(model, "To be", max_bytes=30, sampler=sampler, seed=3))
    assert a == b and len(a) == 30


# -- Q-learning controller -----------------------------------------------------------------

def qlearn_config(*extra):
    return resolve(preset_name="tiny", overrides=["train.lr_controller=qlearn", *extra]).train


def test_controller_changes_the_lr_within_bounds():
    controller = QLearnController(qlearn_config("train.qlearn.every=2",
                                                "train.qlearn.epsilon=1.0"))
    lrs = set()
    for step in range(400):
        controller.observe(5.0 / (1 + step) + 0.01 * (step % 3), 1.0 + 0.1 * (step % 5))
        lrs.add(controller.lr)
        assert controller.lr_min <= controller.lr <= controller.lr_max
    assert len(lrs) > 5 and controller.decisions == 200
    assert np.abs(controller.table).sum() > 0
    assert controller.epsilon < 1.0


def test_controller_steers_beta1_below_one():
    controller = QLearnController(qlearn_config("train.qlearn.every=1",
                                                "train.qlearn.momentum=true",
                                                "train.qlearn.epsilon=1.0"))
    betas = set()
    for step in range(300):
        controller.observe(1.0 + (step % 7) * 0.1, 1.0)
        betas.add(controller.beta1)
        assert 0.8 <= controller.beta1 <= 0.99 < 1
    assert len(betas) > 3


def test_trainer_uses_the_controller_and_resumes_it(text_file, tmp_path):
    config = resolve(preset_name="tiny", overrides=[
        f"data.path={str(text_file)!r}", "train.steps=16", "train.eval_every=8",
        "train.lr_controller=qlearn", "train.qlearn.every=2", "train.warmup_steps=2",
        "train.qlearn.momentum=true"])
    train(config, tmp_path / "straight", progress=False)
    records = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").open()]
    lrs = [r["lr"] for r in records if "lr" in r]
    assert len(set(lrs[2:])) > 1, "the controller never changed the learning rate"
    saved = read_train_state(tmp_path / "straight" / "last")["lr_controller"]
    assert saved["decisions"] == 7 and np.abs(np.array(saved["table"])).sum() > 0

    def stop_at_7(trainer):
        if trainer.step == 7:
            trainer.stop_requested = True

    train(config, tmp_path / "resumed", progress=False, callbacks=[stop_at_7])
    train(config, tmp_path / "resumed", resume=tmp_path / "resumed" / "last", progress=False)
    resumed = read_train_state(tmp_path / "resumed" / "last")["lr_controller"]
    assert resumed == saved


# -- config --------------------------------------------------------------------------------

def test_config_keys():
    config = resolve(preset_name="tiny", overrides=[
        "model.embedding=wave", "model.unit=codepoint", "model.attention=differential",
        "train.lr_controller=qlearn"])
    assert config.model.embedding.kind == "wave" and config.model.unit == "codepoint"
    assert resolve(overrides=["model.embedding.kind=wave"]).model.embedding.kind == "wave"
    assert resolve(overrides=["model.head=distance"]).model.head == "distance"
    for bad, message in [
        (["model.embedding=waves"], "model.embedding.kind"),
        (["model.unit=char"], "model.unit"),
        (["model.attention=diff"], "model.attention"),
        (["model.head=softmax"], "model.head"),
        (["train.lr_controller=rl"], "train.lr_controller"),
        (["model.unit=codepoint", "model.head=distance"], "distance"),
        (["model.unit=codepoint", "model.embedding.ngrams=[3]"], "ngrams"),
        (["model.backbone=mmfree", "model.attention=differential"], "transformer backbone"),
        (["train.qlearn.lr_min=1", "train.qlearn.lr_max=0.1"], "lr_min"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve(preset_name="tiny", overrides=bad)


# -- command line --------------------------------------------------------------------------

def test_cli_codepoint_model_and_adaptive_sampler(capsys, tmp_path):
    from untok.cli import main

    corpus = tmp_path / "mixed.txt"
    corpus.write_bytes((CJK * 120).encode())
    run_dir = tmp_path / "run"
    assert main(["train", "--data", str(corpus), "--preset", "tiny", "--steps", "8",
                 "--out", str(run_dir), "--quiet", "--set", "model.unit=codepoint",
                 "--set", "model.embedding=wave"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run_dir / "best"), "--data", str(corpus), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["units"] < scores["bytes"] / 2 and scores["bits_per_char"] > scores["bpb"]
    assert main(["generate", str(run_dir / "best"), "--prompt", "我们", "--max-bytes", "30",
                 "--seed", "1", "--sampler", "adaptive", "--low", "0.5", "--high", "3",
                 "--no-prompt"]) == 0
    out = capsys.readouterr().out
    assert 0 < len(out.rstrip("\n").encode("utf-8", "surrogateescape")) <= 30
    assert main(["generate", str(run_dir / "best"), "--sampler", "adaptive", "--low", "3",
                 "--high", "1"]) == 2
    assert "--low <= --high" in capsys.readouterr().err
    assert main(["compress", str(corpus), "-m", str(run_dir / "best"),
                 "-o", str(tmp_path / "x.utk")]) == 2
    assert "cannot serve this: compression codes bytes" in capsys.readouterr().err
    assert not (tmp_path / "x.utk").exists()


def test_byte_models_keep_a_configured_vocabulary():
    """Another id space (e.g. a BPE baseline) sets model.vocab_size; the options keep it."""
    for extra in ([], ["model.embedding=wave"], ["model.attention=differential"]):
        config = resolve(preset_name="tiny", overrides=["model.vocab_size=512", *extra])
        model = build_model(config.model)
        assert model(torch.randint(0, 512, (1, 5))).logits.shape == (1, 5, 512)
