import copy

import pytest
import torch

from untok.config import ModelConfig
from untok.errors import ConfigError
from untok.generate import SamplerConfig, compile_decoding, generate_text, sample_next
from untok.scores import Logits
from untok.units import BOS, EOS, PAD, ByteUnits


def test_greedy_is_deterministic_and_matches_no_cache(tiny_model):
    greedy = SamplerConfig(temperature=0)
    a = generate_text(tiny_model, "hello", max_bytes=40, sampler=greedy)
    b = generate_text(tiny_model, "hello", max_bytes=40, sampler=greedy, use_cache=False)
    assert len(a) == 40 and a == b


def test_seeded_sampling_is_reproducible(tiny_model):
    options = dict(max_bytes=50, sampler=SamplerConfig(temperature=1.0, top_k=20))
    a = generate_text(tiny_model, b"x", seed=7, **options)
    b = generate_text(tiny_model, b"x", seed=7, **options)
    c = generate_text(tiny_model, b"x", seed=8, **options)
    assert a == b and a != c


BYTES = ByteUnits()


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = torch.randn(4, 264)
    logits[:, EOS + 1:] = 100.0  # never chosen: not bytes
    logits[:, BOS] = 100.0
    logits[:, 0] = 50.0  # BOS (100) is masked, so byte 0 wins
    best = torch.zeros(4, dtype=torch.long)
    assert torch.equal(sample_next(Logits(logits, BYTES), SamplerConfig(temperature=0)), best)
    assert torch.equal(sample_next(Logits(logits, BYTES), SamplerConfig(top_k=1)), best)
    assert torch.equal(sample_next(Logits(logits, BYTES), SamplerConfig(top_p=1e-6)), best)


def test_top_k_restricts_the_support():
    logits = torch.arange(264, dtype=torch.float).repeat(2000, 1) * 0.01
    picks = sample_next(Logits(logits, BYTES), SamplerConfig(top_k=3),
                        torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == {EOS, 255, 254}  # BOS (256) is never a candidate


@pytest.mark.parametrize("sampler", [SamplerConfig(), SamplerConfig(top_k=5),
                                     SamplerConfig(sampler="adaptive", low=1.0, high=4.0)])
def test_one_generator_per_row_draws_what_each_row_draws_alone(sampler):
    """A server batches independent requests: row i with generator i must pick what it
    would pick alone (torch.multinomial with that generator), whatever the other rows."""
    logits = torch.randn(6, 264) * 3
    for trial in range(20):
        seeds = [100 * trial + i for i in range(6)]
        batched = sample_next(Logits(logits, BYTES), sampler,
                              [torch.Generator().manual_seed(s) for s in seeds])
        alone = [int(sample_next(Logits(logits[i:i + 1], BYTES), sampler,
                                 torch.Generator().manual_seed(s)))
                 for i, s in enumerate(seeds)]
        assert batched.tolist() == alone


def test_top_p_keeps_the_nucleus():
    logits = torch.full((3000, 264), -1e9)
    logits[:, 10], logits[:, 11], logits[:, 12] = 2.0, 1.0, -1.0
    # probabilities 0.705, 0.259, 0.035: the smallest set reaching 0.8 is {10, 11}
    picks = sample_next(Logits(logits, BYTES), SamplerConfig(top_p=0.8),
                        torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == {10, 11}
    picks = sample_next(Logits(logits, BYTES), SamplerConfig(top_p=0.7),
                        torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == {10}


def test_specials_are_never_emitted():
    logits = torch.zeros(5000, 264)
    logits[:, [BOS, PAD, 260]] = 50.0
    picks = sample_next(Logits(logits, BYTES), SamplerConfig(),
                        torch.Generator().manual_seed(0))
    assert not set(picks.tolist()) & {BOS, PAD, 260}


def test_stop_string_and_max_bytes_zero(tiny_model):
    greedy = SamplerConfig(temperature=0)
    free = generate_text(tiny_model, "ab", max_bytes=30, sampler=greedy)
    stop = free[5:8]
    stopped = generate_text(tiny_model, "ab", max_bytes=30, sampler=greedy, stop=[stop])
    assert stopped.endswith(stop) and free.startswith(stopped) and len(stopped) <= 8
    assert generate_text(tiny_model, "ab", max_bytes=0) == b""


class CountingLM(torch.nn.Module):
    """Emits 'a' until it has seen 4 units, then EOS."""

    config = ModelConfig(context=16)  # a flat byte model's config
    units = ByteUnits()

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        logits = torch.zeros(*ids.shape, 264)
        logits[..., 97] = 1.0
        logits[..., EOS] = (torch.arange(ids.shape[1]) >= 4).float() * 2.0
        return Logits(logits, self.units)

    def new_state(self, batch_size):
        return []

    def step(self, state, ids):
        state = state + ids[0].tolist()
        return self.forward(torch.tensor([state]))[:, -ids.shape[1]:], state


def test_eos_stops_generation():
    out = generate_text(CountingLM(), "", max_bytes=10, sampler=SamplerConfig(temperature=0))
    assert out == b"aaaa"  # BOS + 4 bytes seen -> EOS


def test_long_prompt_and_generation_past_context(tiny_model):
    prompt = bytes(range(97, 123)) * 4  # longer than the 32-unit context
    out = generate_text(tiny_model, prompt, max_bytes=60, sampler=SamplerConfig(top_k=5),
                        seed=0)
    assert len(out) == 60


@pytest.mark.slow
def test_compiled_decoding_matches_eager(tiny_model):
    greedy = SamplerConfig(temperature=0)
    prompt = b"compiled decoding "
    eager = generate_text(tiny_model, prompt, max_bytes=48, sampler=greedy)
    compiled = compile_decoding(copy.deepcopy(tiny_model))
    assert generate_text(compiled, prompt, max_bytes=48, sampler=greedy) == eager
    assert generate_text(compiled, b"x", max_bytes=8, sampler=greedy) == \
        generate_text(tiny_model, b"x", max_bytes=8, sampler=greedy)


def test_invalid_utf8_prompt_is_fine(tiny_model):
    out = generate_text(tiny_model, b"\xff\xfe\xc3", max_bytes=5, seed=0)
    assert len(out) == 5


@pytest.mark.parametrize("sampler", [SamplerConfig(temperature=-1), SamplerConfig(top_k=-2),
                                     SamplerConfig(top_p=0.0)])
def test_invalid_sampler(sampler, tiny_model):
    with pytest.raises(ConfigError):
        generate_text(tiny_model, "x", sampler=sampler)


def test_decoding_runs_without_autograd(tiny_model):
    """Every step of a generation runs without autograd, including those taken while the
    caller iterates (the generator itself, not only the call that made it), and the model
    still trains afterwards (what it cached while decoding is usable by autograd)."""
    from untok.generate import generate

    modes = []
    step = tiny_model.step

    def recording(*args, **kwargs):
        modes.append(torch.is_grad_enabled())
        return step(*args, **kwargs)

    tiny_model.step = recording
    try:
        assert len(b"".join(generate(tiny_model, "ab", max_bytes=5, seed=0))) <= 5
    finally:
        del tiny_model.step
    assert len(modes) >= 2 and not any(modes)
    ids = torch.randint(0, 256, (2, 9))
    tiny_model.train()
    tiny_model.loss(ids[:, :-1], ids[:, 1:]).backward()
