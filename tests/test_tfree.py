"""The T-Free family beyond the protocol suite: hashing, the dictionary, the likelihood."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import untok
from untok.config import resolve
from untok.data.ingest import ingest
from untok.errors import UntokError
from untok.models import build_model
from untok.models.tfree import END, WordUnits, fit_dictionary
from untok.trigrams import hash_trigrams, lowercase, trigrams, word_code
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
    spelling = np.log((units.spelling + 0.5) / (units.spelling + 0.5).sum(1, keepdims=True))
    path = [END, ord("b"), ord("a"), END]
    spelled = sum(spelling[a, b] for a, b in zip(path[:-1], path[1:], strict=False))
    escape = float(words[1, units.dict_size])
    assert float(got[1]) == pytest.approx(escape + spelled, abs=1e-5)
    assert float(got[0]) == pytest.approx(float(words[0, units.index["ab"]]), abs=1e-6)
    # by hand: the words were "ab" twice and "b" once, so the counts are START->a 2,
    # START->b 1, a->b 2, b->END 3; add-half over 257 symbols for START->b, b->a, a->END
    hand = math.log(1.5 / (3 + 128.5)) + math.log(0.5 / (3 + 128.5)) + \
        math.log(0.5 / (2 + 128.5))
    assert spelled == pytest.approx(hand, abs=1e-9)


def test_eval_bits_per_byte_count_every_byte_once(tmp_path, text_file):
    run = resolve(preset_name="tfree-tiny", overrides=[f"data.path={str(text_file)!r}",
                                                       "train.steps=3"])
    untok.fit(run, tmp_path / "run", progress=False)
    model = untok.load(tmp_path / "run" / "best")
    store = untok.open_data(str(text_file), progress=False)
    result = untok.evaluate(model, store, "val")
    assert result["bytes"] == store.split_bytes()["val"]  # implicit spaces counted once
    assert np.isfinite(result["bpb"]) and result["units"] < result["bytes"]


def test_a_dictionary_size_of_zero_is_a_config_error():
    with pytest.raises(UntokError, match="dict_size must be >= 1"):
        resolve(preset_name="tfree-tiny", overrides=["model.words.dict_size=0"])


def test_cli_trains_evaluates_generates_and_shows_words(capsys, tmp_path, text_file):
    from untok.cli import main

    run = tmp_path / "run"
    assert main(["train", "--data", str(text_file), "--preset", "tfree-tiny", "--steps", "4",
                 "--out", str(run), "--quiet"]) == 0
    assert (run / "best" / "units.json").is_file()
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
