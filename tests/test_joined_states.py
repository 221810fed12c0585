"""Decoding states that join: sequences begun at different times, batched on one clock,
decode exactly as each does alone (what untok serve's batching relies on)."""

from __future__ import annotations

import pytest
import torch

from untok.models import build_model
from untok.models.registry import capabilities, examples

JOINABLE = [(name, config) for name, config in examples()
            if capabilities(build_model(config)).joins_rows]


def test_some_families_join():
    assert {name.split("-")[0] for name, _ in JOINABLE} >= {"flat"}
    assert any(config.backbone == "mmfree" for _, config in JOINABLE)


@pytest.mark.parametrize("name,config", JOINABLE, ids=[n for n, _ in JOINABLE])
def test_joined_rows_decode_as_alone(name, config):
    torch.manual_seed(0)
    model = build_model(config).eval()
    vocab = min(model.units.num_content, 256)
    prompts = [torch.randint(0, vocab, (1, n)) for n in (9, 3, 6)]
    follow = torch.randint(0, vocab, (3, 5))  # the units each row is fed next
    with torch.inference_mode():
        alone = []
        for i, prompt in enumerate(prompts):
            state = model.new_state(1)
            scores, state = model.step(state, prompt)
            rows = [scores[:, -1]]
            for t in range(follow.shape[1]):
                scores, state = model.step(state, follow[i:i + 1, t:t + 1])
                rows.append(scores[:, -1])
            alone.append(rows)
        # rows 0 and 1 begin together; row 2 joins after two steps; row 1 leaves after 3
        clock = config.context
        state, outputs = None, {0: [], 1: [], 2: []}
        members = []
        for i in (0, 1):
            row = model.new_state(1, position=clock - prompts[i].shape[1])
            scores, row = model.step(row, prompts[i])
            outputs[i].append(scores[:, -1])
            state = row if state is None else state.join(row, clock - prompts[i].shape[1])
            members.append(i)
        fed = {0: 0, 1: 0, 2: 0}
        for t in range(follow.shape[1]):
            if t == 2:
                start = state.position - prompts[2].shape[1]
                row = model.new_state(1, position=start)
                scores, row = model.step(row, prompts[2])
                outputs[2].append(scores[:, -1])
                state = state.join(row, start)
                members.append(2)
            if t == 3:
                state = state.select(torch.tensor([0, 2]))
                members = [0, 2]
            ids = torch.stack([follow[i, fed[i]] for i in members])[:, None]
            scores, state = model.step(state, ids)
            for j, i in enumerate(members):
                fed[i] += 1
                outputs[i].append(scores[j:j + 1, -1])
    for i, rows in outputs.items():
        assert len(rows) >= 4
        for got, want in zip(rows, alone[i], strict=False):
            for target in (7, 65, 200):
                targets = torch.tensor([target])
                with torch.inference_mode():  # some scores run their head lazily
                    torch.testing.assert_close(got.log_prob(targets), want.log_prob(targets),
                                               atol=1e-4, rtol=1e-4)


def test_cache_attends_only_to_the_window_of_its_units():
    """A dynamic cache that begins at position s reads only the slots of its own units,
    one contiguous slice wherever the ring stands, and masks nothing it returns (a single
    new unit gets no mask at all)."""
    from untok.nn.attention import KVCache

    capacity, start = 8, 13
    cache = KVCache.empty(2, 1, capacity, 4, torch.device("cpu"), torch.float32, start=start)
    for position in range(start, start + 20):
        k = torch.full((2, 1, 1, 4), float(position))
        keys, _, mask = cache.append(k, k, torch.tensor([position]))
        seen = keys[0, 0, :, 0].tolist()
        assert seen == [float(p) for p in range(max(start, position + 1 - capacity),
                                                position + 1)]
        assert mask is None
    joined = cache.join(KVCache.empty(1, 1, capacity, 4, torch.device("cpu"), torch.float32,
                                      start=start + 20), start + 20)
    keys, _, mask = joined.append(torch.zeros(3, 1, 1, 4), torch.zeros(3, 1, 1, 4),
                                  torch.tensor([start + 20]))
    assert keys.shape[2] == capacity  # the window of the oldest row
    assert mask[:2].all() and mask[2, 0, 0].sum() == 1  # the new row: only its own unit
    # a cache begun at 0 keeps one copy: its first `capacity` units are one slice, then
    # every slot is read (the same keys in ring order)
    plain = KVCache.empty(1, 1, capacity, 4, torch.device("cpu"), torch.float32)
    assert plain.k.shape[2] == capacity and cache.k.shape[2] == 2 * capacity
    for position in range(capacity + 3):
        k = torch.full((1, 1, 1, 4), float(position))
        keys, _, mask = plain.append(k, k, torch.tensor([position]))
        assert keys.shape[2] == min(position + 1, capacity) and mask is None
    keys, _, mask = plain.append(torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4),
                                 torch.tensor([capacity + 3, capacity + 4]))
    assert mask.sum(-1).tolist() == [capacity - 1, capacity]  # two units: the first
    # must not see the second


def test_rows_join_and_leave_without_copying_the_batch():
    """Joining writes the new rows into spare rows of the buffers (which double when
    full); a row leaving moves only the rows that fill its place; the others keep their
    keys and values."""
    from untok.nn.attention import KVCache

    def one(start: int, value: float) -> KVCache:
        cache = KVCache.empty(1, 1, 4, 2, torch.device("cpu"), torch.float32, start=start)
        cache.append(torch.full((1, 1, 1, 2), value), torch.full((1, 1, 1, 2), value),
                     torch.tensor([start]))
        return cache

    cache = one(5, 0.0)
    buffers = []
    for row in range(1, 5):
        cache = cache.join(one(5, float(row)), 5)
        buffers.append(cache.reserve[0].data_ptr())
    assert cache.reserve[0].shape[0] == 8 and cache.k.shape[0] == 5
    assert buffers[2] == buffers[1] and buffers[3] != buffers[2]  # 3 -> 4 rows: in place
    assert cache.k[:, 0, 5 % 4, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    kept = cache.select(torch.tensor([0, 4, 2, 3]))  # row 1 leaves, the last takes its place
    assert kept.reserve[0].data_ptr() == buffers[3]
    assert kept.k[:, 0, 5 % 4, 0].tolist() == [0.0, 4.0, 2.0, 3.0]
    assert kept.starts.tolist() == [5, 5, 5, 5]
    with pytest.raises(ValueError, match="cannot join"):
        kept.join(KVCache.empty(1, 2, 4, 2, torch.device("cpu"), torch.float32, start=5), 5)
