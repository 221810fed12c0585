"""The T-Free family beyond the protocol suite: hashing, the dictionary, the likelihood."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import untok
from untok.config import resolve
from untok.data.ingest import ingest
from untok.errors import UntokError
from untok.models import build_model
from untok.trigrams import hash_trigrams, lowercase, trigrams, word_code
from untok.word_units import END, Spelling, WordUnits, fit_dictionary
from untok.words import SPACE, split


def test_trigrams_are_the_padded_byte_windows():
    got = trigrams("Hi")
    want = sorted(b0 | b1 << 8 | b2 << 16 for b0, b1, b2 in [b" Hi", b"Hi "])
    assert got.tolist() == want
    assert len(trigrams("caf\u00e9")) == 5  # byte windows split the 2-byte \u00e9


@pytest.mark.parametrize(("v", "m", "k"), [(8192, 8, 2), (1000, 10, 3), (64, 16, 0)])
def test_every_trigram_gets_m_distinct_ids(v, m, k):
    tri = np.random.default_rng(0).integers(0, 1 << 24, 5000)
    ids = hash_trigrams(tri, v, m, k)
    assert ids.shape == (5000, m) and ids.min() >= 0 and ids.max() < v
    assert all(len(set(row)) == m for row in ids)


def test_a_trigram_shares_k_ids_with_its_lowercase_form():
    upper, lower = (hash_trigrams(trigrams(w)[1:2], 8192, 8, 2)[0] for w in ("Hel", "hel"))
    assert lowercase(trigrams("Hel")).tolist() == trigrams("hel").tolist()
    assert upper[:2].tolist() == lower[:2].tolist() and len(set(upper) & set(lower)) == 2


def test_hashing_is_pinned():
    """The same ids on every machine and in every run (a checkpoint depends on them)."""
    assert word_code("Hello", 8192, 8, 2)[0].tolist() == \
        [3391, 226, 5253, 2088, 7115, 3950, 785, 5812]
    assert word_code(SPACE[1], 8192, 8, 2).shape == (1, 8)  # special words hashed whole


def test_the_dictionary_comes_from_the_train_split_only(tmp_path):
    text = tmp_path / "t.txt"
    text.write_bytes(b"alpha beta alpha gamma alpha beta\n" * 50 + b"zeta omega\n" * 10)
    store = ingest([str(text)], tmp_path / "s", progress=False, val_bytes=110)
    val_words = set(split(store.split_data("val")))
    fitted = fit_dictionary(store.split_data("train", b"\n"), 100)
    assert fitted["dictionary"] == ["alpha", "beta", "gamma"]  # a size above the count: all
    assert {"omega", "zeta"} <= val_words and not {"omega", "zeta"} & set(fitted["dictionary"])
    assert fitted["distinct_words"] == 3
    with pytest.raises(UntokError, match="no words"):
        fit_dictionary(b"   \n\n  ", 10)


def units_with(words):
    counts = fit_dictionary(" ".join(words).encode(), 100)
    return WordUnits(counts["dictionary"], 256, 4, 1, spelling=counts["spelling"])


def test_probabilities_over_dictionary_and_escape_sum_to_one():
    config = resolve(preset_name="tfree-tiny").model
    model = build_model(config, units=units_with(["the", "cat", "sat"])).eval()
    ids = torch.tensor([[model.units.bos, *model.units.encode(b"the cat sat")]])
    with torch.no_grad():
        lp = model(ids)._word_log_probs()
    assert lp.shape == (4, model.units.dict_size + 1)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(4))


def test_a_word_bias_is_each_dictionary_word_s_log_prior():
    config = resolve(preset_name="tfree-tiny", overrides=["model.words.word_bias=true"]).model
    model = build_model(config, units=units_with(["the", "cat", "sat"])).eval()
    ids = torch.tensor([[model.units.bos, *model.units.encode(b"the cat sat")]])
    cat = model.units.index["cat"]
    with torch.no_grad():
        before = model(ids)._word_log_probs()
        model.word_bias[cat] += 2.0
        after = model(ids)._word_log_probs()
    torch.testing.assert_close(after.exp().sum(-1), torch.ones(4))
    others = [i for i in range(model.units.dict_size + 1) if i != cat]
    shift = after[:, others] - before[:, others]  # every other candidate: the same shift
    torch.testing.assert_close(shift, shift[:, :1].expand_as(shift))
    torch.testing.assert_close(after[:, cat] - before[:, cat] - shift[:, 0],
                               torch.full((4,), 2.0))


def test_bits_are_the_word_and_spelling_costs():
    """An out-of-dictionary word costs the escape plus its spelling, by a hand count."""
    units = units_with(["ab", "ab", "b"])
    config = resolve(preset_name="tfree-tiny").model
    model = build_model(config, units=units).eval()
    ids = torch.tensor([[units.bos, *units.encode(b"ab ba")]])  # "ba" is not in it
    assert units.words[int(ids[0, 2])] == "ba" and int(ids[0, 2]) >= units.dict_size
    with torch.no_grad():
        scores = model(ids[:, :-1])
        got = scores.log_prob(ids[:, 1:])[0]
        words = scores._word_log_probs()
    escape = float(words[1, units.dict_size])  # no context word yet: the escape is next
    spelled = units.spelling.log_prob(b"ba")
    assert float(got[1]) == pytest.approx(escape + spelled, abs=1e-5)
    assert float(got[0]) == pytest.approx(float(words[0, units.index["ab"]]), abs=1e-6)
    # by hand (Witten-Bell, E = the word boundary): the distinct words were "ab" and "b"
    # (all in the dictionary, so all spelled; each counted once): trigrams EEa, Eab, abE,
    # EEb, EbE 1 each; bigrams Ea 1, Eb 1, ab 1, bE 2; unigrams a 1, b 2, E 2 (+1 each
    # over 257)
    p0 = {"a": 2 / 262, "b": 3 / 262, "E": 3 / 262}
    b_after_ee = (1 + 2 * (1 + 2 * p0["b"]) / 4) / 4  # context EE: 2 seen, 2 types
    a_after_eb = (p0["a"] / 3) / 2  # EbE seen once; context b: 2 seen, 1 type
    end_after_ba = p0["E"] / 2  # "ba" never seen: context a (1 seen, 1 type)
    hand = math.log(b_after_ee) + math.log(a_after_eb) + math.log(end_after_ba)
    assert spelled == pytest.approx(hand, abs=1e-9)


@pytest.mark.parametrize("order", [1, 2, 5])
def test_the_spelling_model_is_a_distribution_in_every_context(order):
    rows = Spelling.fit(Counter({"caf\u00e9": 3, "cat": 2, "dog": 1, "category": 1}), order)
    spelling = Spelling(rows)
    assert spelling.order == order and len(rows[0]) == order + 2
    for context in [(), (END, END), (END, ord("c")), (ord("c"), ord("a")), (7, 9),
                    tuple(b"catego")]:
        assert spelling.probs(*context).sum() == pytest.approx(1.0)
    assert spelling.log_prob(b"cat") > spelling.log_prob(b"tac")
    table = spelling.log_table([b"cat", b"categ"], 6)  # the prior the speller adds to
    assert table[0, 3, END] == pytest.approx(spelling.log_prob(b"cat") - sum(
        table[0, t, c] for t, c in enumerate(b"cat")), abs=1e-5)
    assert not table[0, 4:].any()


def test_a_longer_spelling_context_predicts_seen_words_better():
    words = Counter({"category": 1, "catalogue": 1, "cattle": 1, "dogma": 1})
    short, long = (Spelling(Spelling.fit(words, order)) for order in (2, 5))
    assert long.log_prob(b"category") > short.log_prob(b"category")


def test_context_words_are_candidates_from_their_first_appearance_on():
    """A word outside the dictionary is escaped and spelled when it first appears and
    scored like a dictionary word afterwards; positions before it do not see it."""
    units = units_with(["the", "cat", "sat"])
    model = build_model(resolve(preset_name="tfree-tiny").model, units=units).eval()
    ids = torch.tensor([[units.bos, *units.encode(b"the Zorg sat the Zorg cat")]])
    zorg = units.index["Zorg"]
    other = ids.clone()
    other[0, 2] = units.index["cat"]  # the same text with "cat" for the first "Zorg"
    with torch.no_grad():
        scores, changed = model(ids[:, :-1]), model(other[:, :-1])
        lp, escaped = scores.candidate_log_prob(ids[:, 1:])
        words = scores._word_log_probs()
        torch.testing.assert_close(words.exp().sum(-1), torch.ones(len(words)))
        before = changed._word_log_probs()
    assert escaped[0].tolist() == [False, True, False, False, False, False]
    assert scores.extras[0, 1].tolist() == [-1] and scores.extras[0, 2].tolist() == [zorg]
    torch.testing.assert_close(words[:2, :units.dict_size], before[:2, :units.dict_size])
    assert bool(torch.isfinite(lp).all())
    assert float(lp[0, 4]) == pytest.approx(float(words[4, units.dict_size]), abs=1e-6)


def test_target_log_probs_equal_the_full_distribution_and_train_finitely():
    """candidate_log_prob scores only the targets (and a normaliser per position): the same
    numbers as gathering from the whole distribution, with finite gradients at positions
    that have no context word yet."""
    units = units_with(["the", "cat", "sat"])
    model = build_model(resolve(preset_name="tfree-tiny").model, units=units)
    ids = torch.tensor([[units.bos, *units.encode(b"the Zorg sat Qix the Zorg cat Qix")]])
    scores = model(ids[:, :-1])
    lp, escaped = scores.candidate_log_prob(ids[:, 1:])
    (-lp.sum()).backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters()
               if p.grad is not None)
    with torch.no_grad():
        whole = model(ids[:, :-1])
        whole._word_log_probs()  # (computed first: candidate_log_prob then gathers from it)
        expected, expected_escaped = whole.candidate_log_prob(ids[:, 1:])
    torch.testing.assert_close(lp.detach(), expected)
    assert escaped.tolist() == expected_escaped.tolist() and int(escaped.sum()) == 2


def test_the_multilabel_loss_is_added_with_its_weight():
    """loss = softmax cross-entropy + multilabel_weight x the multi-label loss; at 0 the
    multi-label term is not computed at all."""
    units = units_with(["the", "cat", "sat"])
    model = build_model(resolve(preset_name="tfree-tiny").model, units=units)
    ids = torch.tensor([[units.bos, *units.encode(b"the cat sat the Zorg cat")]])

    def loss_at(weight: float) -> float:
        model.config = replace(model.config, words=replace(model.config.words,
                                                           multilabel_weight=weight))
        with torch.no_grad():
            return float(model.loss(ids[:, :-1], ids[:, 1:]))

    softmax_only, one, three = loss_at(0.0), loss_at(1.0), loss_at(3.0)
    assert one > softmax_only
    assert three - softmax_only == pytest.approx(3 * (one - softmax_only), rel=1e-5)
    with pytest.raises(UntokError, match="multilabel_weight"):
        resolve(preset_name="tfree-tiny", overrides=["model.words.multilabel_weight=-1"])


def test_step_carries_the_context_words():
    units = units_with(["the", "cat", "sat"])
    model = build_model(resolve(preset_name="tfree-tiny").model, units=units).eval()
    ids = torch.tensor([[units.bos, *units.encode(b"the Zorg sat the Zorg cat")]])
    with torch.no_grad():
        full = model(ids[:, :-1]).log_prob(ids[:, 1:])
        state = model.new_state(1)
        scores, state = model.step(state, ids[:, :3])
        parts = [scores.log_prob(ids[:, 1:4])]
        for t in range(3, ids.shape[1] - 1):
            scores, state = model.step(state, ids[:, t:t + 1])
            parts.append(scores.log_prob(ids[:, t + 1:t + 2]))
    assert state.seen == [[units.index["Zorg"]]]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)


def test_the_speller_starts_at_the_prior_and_learns_from_the_context():
    """An escaped word costs the escape plus the speller's bytes (the n-gram prior at
    initialisation); training on the model's own loss lowers that cost."""
    units = units_with(["the", "cat"])
    model = build_model(resolve(preset_name="tfree-tiny").model, units=units)
    ids = torch.tensor([[units.bos, *units.encode(b"the Zorg the cat")]])
    zorg = units.index["Zorg"]

    def spelled() -> float:
        with torch.no_grad():
            scores = model(ids[:, :-1])
            return float(scores.spelling_log_prob([1], torch.tensor([zorg]))[0])

    assert spelled() == pytest.approx(units.spelling.log_prob(b"Zorg"), abs=1e-4)
    before = spelled()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(20):
        optimizer.zero_grad()
        model.loss(ids[:, :-1], ids[:, 1:]).backward()
        optimizer.step()
    assert spelled() > before + 1.0
    with torch.no_grad():
        scores = model(ids[:, :-1])
        lp, escaped = scores.candidate_log_prob(ids[:, 1:])
        total = scores.log_prob(ids[:, 1:])
    assert bool(escaped[0, 1])
    assert float(total[0, 1]) == pytest.approx(float(lp[0, 1]) + spelled(), abs=1e-4)


def test_an_escape_is_spelled_when_chosen_and_wrong_when_greedy():
    units = units_with(["the", "cat"])
    model = build_model(resolve(preset_name="tfree-tiny").model, units=units).eval()
    with torch.no_grad():
        model.escape_bias.fill_(1e4)
        scores = model(torch.tensor([[units.bos]]))
        assert scores.greedy().tolist() == [[-1]]
        chosen = int(scores.choose(lambda logp: logp.argmax(-1))[0, 0])
    assert units.words[chosen] in ("the", "cat")  # spelled greedily from those two


def test_eval_bits_per_byte_count_every_byte_once(tmp_path, text_file):
    run = resolve(preset_name="tfree-tiny", overrides=[f"data.path={str(text_file)!r}",
                                                       "train.steps=3"])
    untok.fit(run, tmp_path / "run", progress=False)
    model = untok.load(tmp_path / "run" / "best")
    store = untok.open_data(str(text_file), progress=False)
    result = untok.evaluate(model, store, "val")
    assert result["bytes"] == store.split_bytes()["val"]  # implicit spaces counted once
    assert np.isfinite(result["bpb"]) and result["units"] < result["bytes"]


def test_the_dictionary_travels_in_the_checkpoint(tmp_path, text_file):
    """The words and spelling counts are in units.json: a checkpoint loads (and scores the
    same) after the cached dictionary file is gone."""
    run = resolve(preset_name="tfree-tiny", overrides=[f"data.path={str(text_file)!r}",
                                                       "train.steps=2"])
    untok.fit(run, tmp_path / "run", progress=False)
    model = untok.load(tmp_path / "run" / "best")
    Path(model.config.words.dictionary).unlink()
    again = untok.load(tmp_path / "run" / "best")
    assert again.units.words[:again.units.dict_size] == \
        model.units.words[:model.units.dict_size]

    def bits(m):
        ids = torch.tensor([[m.units.bos, *m.units.encode(b"First Citizen: Zorg Zorg")]])
        with torch.no_grad():
            return m(ids[:, :-1]).log_prob(ids[:, 1:])

    torch.testing.assert_close(bits(again), bits(model))


def test_a_dictionary_size_of_zero_is_a_config_error():
    with pytest.raises(UntokError, match="dict_size must be >= 1"):
        resolve(preset_name="tfree-tiny", overrides=["model.words.dict_size=0"])


def test_cli_trains_evaluates_generates_and_shows_words(capsys, tmp_path, text_file):
    from untok.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", str(text_file), "--preset", "tfree-tiny", "--steps", "4",
                 "--dict-size", "50", "--out", str(run), "--quiet"]) == 0
    assert (run / "best" / "units.json").is_file()
    assert untok.load(run / "best").config.words.dict_size == 50
    capsys.readouterr()
    assert main(["eval", str(run / "best"), "--data", str(text_file), "--json"]) == 0
    assert '"bpb"' in capsys.readouterr().out
    assert main(["generate", str(run / "best"), "--prompt", "First", "--max-bytes", "40",
                 "--seed", "0"]) == 0
    out = capsys.readouterr().out.encode()
    assert out.startswith(b"First ") and len(out) <= len(b"First") + 40 + 1  # + newline
    assert main(["words", str(run / "best"), "--text", "First Citizen:  x"]) == 0
    out = capsys.readouterr().out
    assert "'First'" in out and "dict" in out and "per 100 bytes" in out
    assert main(["words", "--text", "hi", "--json"]) == 0
    assert '"words_per_100_bytes"' in capsys.readouterr().out
    assert main(["words", "--text", ""]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["presets"]) == 0
    assert "tfree-small" in capsys.readouterr().out


def test_characters_are_counted_with_the_implicit_spaces():
    units = units_with(["the", "caf\u00e9"])
    text = "the caf\u00e9,  \u00e9t\u00e9\nthe".encode()
    ids = units.encode(text)
    assert int(units.char_counts(ids[None])[0].sum()) == len(text.decode())
    assert int(units.byte_lengths(ids[None])[0].sum()) == len(text)


def test_binary_data_and_a_corpus_without_repeats_are_words_too():
    data = bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8))
    fitted = fit_dictionary(data, 10)  # escape words and symbols: still a dictionary
    units = WordUnits(fitted["dictionary"], 256, 4, 1, spelling=fitted["spelling"])
    assert units.decode(units.encode(data)) == data
    assert int(units.byte_lengths(units.encode(data)).sum()) == len(data)
    unique = fit_dictionary(b"one two three four", 10)  # no word repeats: all kept
    assert unique["dictionary"] == ["one", "two", "three", "four"]


def test_eval_reports_words_per_100_bytes_and_the_out_of_dictionary_rate(tmp_path):
    units = units_with(["the", "cat"])
    model = build_model(resolve(preset_name="tfree-tiny").model, units=units)
    text = tmp_path / "t.txt"
    text.write_bytes(b"the cat the dog\n" * 40)
    store = ingest([str(text)], tmp_path / "s", progress=False, val_bytes=160)
    result = untok.evaluate(model, store, "val")
    assert result["units_per_100_bytes"] == pytest.approx(100 * 50 / 160)  # 5 words a line
    assert result["out_of_vocabulary"] == pytest.approx(0.2)  # "dog" is spelled
