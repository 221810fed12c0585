import math

import numpy as np
import pytest
import torch

from untok.config import ModelConfig
from untok.data.ingest import ingest
from untok.data.loader import UnitStream
from untok.evaluate import evaluate
from untok.scores import Logits
from untok.units import NUM_BYTES, VOCAB_SIZE, ByteUnits


class UniformLM(torch.nn.Module):
    """Equal logits over the 256 bytes and EOS: exactly log2(257) bits per byte."""

    config = ModelConfig(context=16)  # a flat byte model's config
    units = ByteUnits()

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        logits = torch.full((*ids.shape, VOCAB_SIZE), -torch.inf)
        logits[..., :NUM_BYTES + 2] = 0.0
        logits[..., NUM_BYTES] = -torch.inf  # BOS is never predicted
        return Logits(logits, self.units)


def test_uniform_model_scores_log2_257(store):
    result = evaluate(UniformLM(), store, "val")
    assert result["bpb"] == pytest.approx(math.log2(257))
    assert result["perplexity"] == pytest.approx(257)
    assert result["confidence_mean"] == pytest.approx(1 / 257)
    assert result["bytes"] == store.split_bytes()["val"], "every val byte scored once"


def test_eval_is_deterministic_and_counts_every_byte(store, tiny_model):
    a = evaluate(tiny_model, store, "val", batch_size=3)
    b = evaluate(tiny_model, store, "val", batch_size=7, stride=16)
    assert a == {**a, **{k: b[k] for k in ("bpb", "accuracy", "bytes")}}
    assert a["bytes"] == store.split_bytes()["val"]
    assert 0 <= a["accuracy"] <= 1
    assert a["confidence_min"] <= a["confidence_mean"] <= a["confidence_max"]


def test_eval_matches_a_direct_computation(store, tiny_model):
    """With stride == context, windows are disjoint: compare with one plain forward each."""
    stream = UnitStream(store, "val")
    result = evaluate(tiny_model, store, "val", stride=32, max_bytes=200)
    ids = torch.from_numpy(stream.window(0, 201))
    bits, count = 0.0, 0
    for start in range(0, 200, 32):
        chunk = ids[start:start + 33]
        with torch.no_grad():
            logp = torch.log_softmax(tiny_model(chunk[None, :-1]).logits[0], -1)
        for i, target in enumerate(chunk[1:].tolist()):
            if target < 256:
                bits -= logp[i, target].item() / math.log(2)
                count += 1
    assert result["bytes"] == count
    assert result["bpb"] == pytest.approx(bits / count, rel=1e-5)


def test_per_file_breakdown(tmp_path, tiny_model):
    root = tmp_path / "files"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(120):
        (root / f"{i:03d}.txt").write_bytes(bytes(rng.integers(97, 123, 40)))
    store = ingest([str(root)], tmp_path / "s", val_fraction=0.2, progress=False)
    result = evaluate(tiny_model, store, "val", per_file=True)
    rows = result["per_file"]
    assert sum(r["bytes"] for r in rows) == result["bytes"]
    total_bits = sum(r["bpb"] * r["bytes"] for r in rows)
    assert total_bits / result["bytes"] == pytest.approx(result["bpb"])
    assert all(r["name"].endswith(".txt") for r in rows)
