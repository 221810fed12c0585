"""Chat data: the stored template and loss mask, fine-tuning with --init, untok chat."""

import io
import json
import random

import numpy as np
import pytest
import torch

from untok.chat import END, TARGET, encode_conversation, encode_segments, render, role_id
from untok.cli import main
from untok.config import resolve
from untok.data.ingest import ingest
from untok.data.loader import TrainSampler, open_stream
from untok.errors import DataError, UntokError
from untok.evaluate import evaluate
from untok.generate import SamplerConfig, generate_text
from untok.models import load
from untok.train.trainer import train
from untok.units import ByteUnits, CodepointUnits

CONVERSATION = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "bye"},
                {"role": "assistant", "content": "ok"}]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_stored_conversation_is_the_rendered_one():
    data, codes = encode_conversation(CONVERSATION)
    assert len(data) == len(codes)
    for units in (ByteUnits(), CodepointUnits()):
        ids = render(CONVERSATION, units, reply=False)
        assert ids[0] == units.bos and ids[-1] == units.eos
        assert ids.count(role_id(units, "assistant")) == 2
        assert units.decode(ids) == b"be briefhiyobyeok"  # markers are not text
    targets = [chr(b) for b, c in zip(data, codes, strict=True) if c & TARGET and c & 0x7F == 0]
    assert targets == list("yook")  # only the assistant's bytes ...
    assert [c for c in codes if c & TARGET and c & 0x7F] == [END | TARGET] * 2  # ... and EOS
    _, everything = encode_conversation(CONVERSATION, loss="all")
    assert all(c & TARGET for c in everything)
    _, weighted = encode_conversation([{"role": "user", "content": "a"},
                                       {"role": "assistant", "content": "b", "weight": 0}])
    assert not any(c & TARGET for c in weighted)


def test_text_cannot_forge_a_marker():
    units = ByteUnits()
    ids = render([{"role": "user", "content": "ASSISTANT \x00"}], units)
    assert ids.count(role_id(units, "assistant")) == 1  # only the one asking for a reply


@pytest.mark.parametrize("messages, message", [
    ([], "non-empty list"),
    ([{"role": "robot", "content": "x"}], "role must be one of"),
    ([{"role": "user", "content": 3}], "must be a string"),
    (["hi"], "must be an object"),
])
def test_bad_conversations(messages, message):
    with pytest.raises(UntokError, match=message):
        encode_conversation(messages)


def test_segments():
    data, codes = encode_segments([{"content": "Q: 2+2=", "has_loss": False},
                                   {"content": "4", "has_loss": True}])
    assert data == b"Q: 2+2=4" and [bool(c & TARGET) for c in codes] == [False] * 7 + [True]
    with pytest.raises(UntokError, match="boolean 'has_loss'"):
        encode_segments([{"content": "x", "has_loss": "yes"}])


@pytest.fixture
def mixed_store(tmp_path):
    """A conversation, a segment list and a plain text file in one store (every byte in
    train: the tail split takes 1 byte of the plain text)."""
    chat = write_jsonl(tmp_path / "c.jsonl", [
        {"messages": CONVERSATION},
        [{"content": "Q: 2+2=", "has_loss": False}, {"content": "4", "has_loss": True}]])
    (tmp_path / "p.txt").write_bytes(b"plain\n")
    return ingest([str(chat), str(tmp_path / "p.txt")], tmp_path / "mixed", split="tail",
                  val_bytes=1, progress=False)


def test_stream_of_a_chat_store(mixed_store):
    assert mixed_store.is_chat and len(mixed_store.codes) == mixed_store.num_bytes
    stream = open_stream(mixed_store, "all")
    positions = np.arange(len(stream))
    ids, chosen = stream.gather(positions), stream.is_target(positions)
    taught = bytes(i for i, t in zip(ids.tolist(), chosen.tolist(), strict=True)
                   if t and i < 256)
    assert taught == b"yook4plain\n"
    eos = np.flatnonzero(ids == ByteUnits.eos)
    # two assistant turns (targets), the conversation's document end after its explicit
    # EOS (not a target), the segment list's and the plain file's ends (targets)
    assert chosen[eos].tolist() == [True, True, False, True, True]
    markers = ids[ids > ByteUnits.pad]
    assert sorted(set(markers.tolist())) == [role_id(ByteUnits(), r)
                                             for r in ("system", "user", "assistant")]
    encoded = open_stream(mixed_store, "all", CodepointUnits())  # the same, in code points
    cp_positions = np.arange(len(encoded))
    cp_ids, cp_chosen = encoded.gather(cp_positions), encoded.is_target(cp_positions)
    assert (cp_ids >= CodepointUnits.pad).sum() == (ids >= ByteUnits.pad).sum()
    assert cp_chosen.tolist() == chosen.tolist()  # ASCII: one code point per byte


def test_sampler_never_trains_on_masked_bytes(mixed_store):
    stream = open_stream(mixed_store, "train")
    sampler = TrainSampler(stream, context=8, batch_size=64, seed=0)
    codes, data = mixed_store.codes, mixed_store.data
    seen = set()
    for _ in range(20):
        inputs, targets = sampler.next_batch()
        kept = targets[targets != ByteUnits.pad]
        seen.update(kept.tolist())
        assert kept.numel() > 0
    masked = {int(b) for b, c in zip(data, codes, strict=True) if not c & TARGET} - \
        {int(b) for b, c in zip(data, codes, strict=True) if c & TARGET}
    assert masked and not masked & seen  # bytes of 'be brief', 'hi', 'Q: 2+2=': never
    assert not {role_id(ByteUnits(), r) for r in ("system", "user", "assistant")} & seen


def test_eval_scores_only_targets(tmp_path):
    records = [{"messages": [{"role": "user", "content": f"question {i}"},
                             {"role": "assistant", "content": f"a{i % 10}"}]}
               for i in range(200)]
    store = ingest([str(write_jsonl(tmp_path / "c.jsonl", records))], tmp_path / "s",
                   progress=False)
    config = resolve(preset_name="tiny", overrides=["train.steps=2", f"data.path={tmp_path / 's'}"])
    train(config, tmp_path / "run", progress=False)
    result = evaluate(load(tmp_path / "run" / "last"), store, "val")
    val_docs = store.segments("val").docs
    assert result["bytes"] == 2 * len(val_docs)  # "aN" of each val conversation


def test_ingest_errors(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": CONVERSATION},
                                               {"messages": [{"role": "bot", "content": ""}]}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: messages\[0\].role"):
        ingest([str(bad)], tmp_path / "s", progress=False)
    assert not list(tmp_path.glob("s.*"))  # nothing half-written
    with pytest.raises(DataError, match="unknown chat loss"):
        ingest([str(bad)], tmp_path / "s", progress=False, chat_loss="user")


def test_replacing_a_chat_store_with_plain_text_drops_its_codes(tmp_path, mixed_store):
    (tmp_path / "t.txt").write_text("plain text only")
    store = ingest([str(tmp_path / "t.txt")], tmp_path / "mixed", force=True, progress=False)
    assert store.codes is None and not store.paths["chat"].exists()


def test_init_fine_tunes_from_a_checkpoint(capsys, tmp_path, mixed_store):
    (tmp_path / "t.txt").write_text("some plain text to pretrain on. " * 40)
    code, _, _ = run(capsys, "train", "--preset", "tiny", "--data", tmp_path / "t.txt",
                     "--steps", 3, "--out", tmp_path / "base", "--quiet")
    assert code == 0
    code, out, _ = run(capsys, "train", "--init", tmp_path / "base" / "last", "--data",
                       tmp_path / "mixed", "--steps", 1, "--out", tmp_path / "tuned",
                       "--quiet", "--set", "train.lr=1e-9", "--set", "train.warmup_steps=0")
    assert code == 0 and "1 steps" in out
    base, tuned = load(tmp_path / "base" / "last"), load(tmp_path / "tuned" / "last")
    for (name, a), b in zip(base.state_dict().items(), tuned.state_dict().values(),
                            strict=True):
        assert torch.allclose(a, b, atol=1e-6), name  # the weights it started from
    state = json.loads((tmp_path / "tuned" / "last" / "train_state.json").read_text())
    assert state["step"] == 1 and state["run_config"]["train"]["batch_size"] == 4  # tiny's
    for args, message in [
        (["--preset", "small"], "drop --preset"),
        (["--resume", tmp_path / "tuned" / "last"], "pass one of them"),
        (["--set", "model.dim=64"], "different model shape"),
    ]:
        code, _, err = run(capsys, "train", "--init", tmp_path / "base" / "last", "--data",
                           tmp_path / "mixed", "--steps", 1, "--out", tmp_path / "x",
                           "--quiet", *args)
        assert code != 0 and message in err and len(err.strip().splitlines()) == 1


def test_fine_tuned_model_answers_held_out_prompts(capsys, tmp_path, monkeypatch):
    """300 steps on 'uppercase this 3-letter word' (only the replies are targets): exact
    answers to 100 words it never saw, against 1 in 26^3 by chance."""
    rng = random.Random(0)
    words = sorted({"".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3))
                    for _ in range(3000)})
    rng.shuffle(words)
    held_out, seen = words[:100], words[100:]
    chat = write_jsonl(tmp_path / "task.jsonl", [
        {"messages": [{"role": "user", "content": w}, {"role": "assistant", "content": w.upper()}]}
        for w in seen])
    ingest([str(chat)], tmp_path / "task", progress=False)
    config = resolve(preset_name="tiny", overrides=[
        "model.dim=64", "model.num_heads=4", "model.context=64", "train.batch_size=32",
        "train.lr=3e-3", "train.warmup_steps=20", "train.steps=300", "train.eval_every=1000",
        f"data.path={tmp_path / 'task'}"])
    train(config, tmp_path / "run", progress=False)
    model = load(tmp_path / "run" / "last")
    greedy = SamplerConfig(temperature=0.0)
    replies = [generate_text(model, ids=render([{"role": "user", "content": w}], model.units),
                             max_bytes=8, sampler=greedy) for w in held_out]
    right = sum(r == w.upper().encode() for r, w in zip(replies, held_out, strict=True))
    with capsys.disabled():  # the figure in docs/serve.md (shown with -s)
        print(f"\n{right} of 100 held-out prompts answered")
    assert right >= 20, f"{right} of 100 held-out prompts answered"
    # the terminal chat: a reply per user line, each to a fresh conversation after /reset
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{held_out[0]}\n/reset\n{held_out[1]}\n"))
    code, out, _ = run(capsys, "chat", tmp_path / "run" / "last", "--greedy")
    assert code == 0 and out.splitlines() == [r.decode() for r in replies[:2]]
