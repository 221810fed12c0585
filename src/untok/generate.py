"""Sampling and the streaming generation loop."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from untok.errors import ConfigError
from untok.models.registry import capabilities, require
from untok.nn.entropy import entropy_bits
from untok.scores import Scores
from untok.units import to_bytes

SAMPLERS = ("standard", "adaptive")


@dataclass(frozen=True, kw_only=True)
class SamplerConfig:
    """How the next unit is picked.

    ``standard``: ``temperature = 0`` is greedy decoding; ``top_k = 0`` and ``top_p = 1``
    disable those filters.

    ``adaptive`` (entropy-adaptive): with H the entropy in bits of the model's
    next-unit distribution, greedy when H < ``low``, top-k sampling (k = ``top_k``, 10 when
    unset) when ``low`` <= H < ``high``, and sampling from the whole distribution when
    H >= ``high``; ``temperature`` applies to both sampling bands, ``top_p`` is not used.
    A code-point model picks its plane, block and character one after the other, and the
    rule applies to each level's distribution.
    """

    sampler: str = "standard"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    low: float = 0.3
    high: float = 2.5

    def validate(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}")
        if self.temperature < 0:
            raise ConfigError("--temperature must be >= 0 (0 = greedy)")
        if self.top_k < 0:
            raise ConfigError("--top-k must be >= 0 (0 = off)")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError("--top-p must be in (0, 1]")
        if self.sampler == "adaptive":
            if not 0.0 <= self.low <= self.high:
                raise ConfigError("the adaptive sampler needs 0 <= --low <= --high (bits)")
            if self.temperature == 0:
                raise ConfigError("the adaptive sampler samples: give --temperature > 0 "
                                  "(or use --greedy without --sampler adaptive)")


def _top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, -torch.inf)


Generators = torch.Generator | Sequence[torch.Generator] | None


def draw(probs: torch.Tensor, generator: Generators) -> torch.Tensor:
    """One index per row of ``probs`` Float[N, K] drawn in proportion to it: Long[N].

    ``generator`` may be one per row (a batch of independent requests): each row then
    draws exactly what ``torch.multinomial`` would draw for it alone with its generator
    (the same exponential race: the argmax of p / E, E ~ Exp(1) per option)."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator)[:, 0]
    race = torch.cat([torch.empty_like(probs[:1]).exponential_(1, generator=g)
                      for g in generator])
    return (probs / race).argmax(-1)


def pick(logits: torch.Tensor, sampler: SamplerConfig,
         generator: Generators = None) -> torch.Tensor:
    """Choose one index per row of logits Float[N, K] (excluded options at -inf): Long[N].
    ``generator``: one for the batch, one per row, or None (the global one)."""
    logits = logits.float()
    if sampler.sampler == "adaptive":
        entropy = entropy_bits(logits)
        scaled = logits / sampler.temperature
        middle = _top_k(scaled, sampler.top_k or 10)
        scaled = torch.where((entropy < sampler.high)[:, None], middle, scaled)
        sampled = draw(scaled.softmax(-1), generator)
        return torch.where(entropy < sampler.low, logits.argmax(-1), sampled)
    if sampler.temperature == 0:
        return logits.argmax(-1)
    logits = logits / sampler.temperature
    if sampler.top_k:
        logits = _top_k(logits, sampler.top_k)
    if sampler.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a unit when the units ranked before it already reach top_p
        drop = probs.cumsum(-1) - probs >= sampler.top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -torch.inf))
    return draw(logits.softmax(-1), generator)


def sample_next(scores: Scores, sampler: SamplerConfig,
                generator: Generators = None) -> torch.Tensor:
    """Pick the next unit from a model's scores at one position (shape (B,)): text units
    and EOS only. Returns Long[B]. ``generator`` may be one per row (see :func:`draw`)."""
    return scores.choose(lambda logits: pick(logits, sampler, generator))


def generate(model: nn.Module, prompt: str | bytes = b"", *, max_bytes: int = 256,
             sampler: SamplerConfig | None = None, seed: int | None = None,
             stop: Iterable[str | bytes] = (), use_cache: bool = True,
             ids: Sequence[int] | None = None) -> Iterator[bytes]:
    """Yield the bytes of each generated unit after ``prompt``: one byte at a time for a
    byte model, one whole character (1-4 bytes) at a time for a code-point model.
    ``ids`` (unit ids, ``BOS`` first, e.g. a conversation from :func:`untok.chat.render`)
    replace ``BOS`` + ``prompt``.

    Stops at ``EOS``, before the output would exceed ``max_bytes`` bytes, or once the
    output ends with one of the ``stop`` strings (which is yielded). ``use_cache=False``
    re-runs the full forward for every unit (the slow reference path, for benchmarks).
    Options are checked when this is called, before the first unit is asked for.
    """
    require(model, "language_model", "generation needs next-unit scores; an autoencoder "
            "only reconstructs (untok tokun encode/decode): train a tokun-lm model to "
            "generate", ConfigError)
    sampler = sampler or SamplerConfig()
    sampler.validate()
    if max_bytes < 0:
        raise ConfigError("--max-bytes must be >= 0")
    if ids is None:
        ids = [model.units.bos, *model.units.encode(to_bytes(prompt)).tolist()]
    return _generate(model, list(ids), max_bytes, sampler, seed,
                     [to_bytes(s) for s in stop if s], use_cache)


@torch.no_grad()  # (on the generator itself: each resumption runs in it; not inference
# mode, whose tensors the model's lazy caches would keep and training could not use)
def _generate(model: nn.Module, ids: list[int], max_bytes: int, sampler: SamplerConfig,
              seed: int | None, stops: list[bytes], use_cache: bool) -> Iterator[bytes]:
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else torch.seed())
    context = model.config.context
    unit = model.units
    history = ids[-context:]
    if max_bytes == 0:
        return
    if use_cache:
        state = model.new_state(1)
        logits, state = model.step(state, torch.tensor([history], device=device))
    else:
        logits = model(torch.tensor([history], device=device))
    longest_stop = max((len(s) for s in stops), default=0)
    last = [i for i in history if i < unit.num_content][-2:]  # what the next unit follows
    tail = b""  # the last bytes of the output, enough to spot a stop string
    emitted = 0
    while emitted < max_bytes:
        chosen = sample_next(logits[:, -1], sampler, generator)
        value = int(chosen)
        if value >= unit.num_content:  # EOS
            return
        # the bytes the unit adds after the last ones (a word may bring the space before it)
        piece = unit.decode(last + [value])[len(unit.decode(last)):]
        last = (last + [value])[-2:]
        emitted += len(piece)
        if emitted > max_bytes:
            return
        yield piece
        if stops:
            tail = (tail + piece)[-longest_stop:]
            if any(tail.endswith(s) for s in stops):
                return
        history = (history + [value])[-context:]
        if use_cache:
            logits, state = model.step(state, chosen[:, None])
        else:
            logits = model(torch.tensor([history], device=device))


def compile_decoding(model: nn.Module, mode: str | None = None) -> nn.Module:
    """Compile the model's one-unit decoding step with ``torch.compile`` in place.

    The step has static shapes, so it compiles once (tens of seconds on a CPU) and then
    decodes faster: worth it for long generations and servers, not for one short sample.
    ``mode="reduce-overhead"`` also captures the step in a CUDA graph (one launch per unit
    instead of one per kernel: what batch-1 decoding on a GPU is bound by). The functions
    compiled are the model's ``compiled_steps``, and those of models inside it (a BLT's
    entropy model); models whose family lacks ``compiled_decoding`` are returned unchanged.
    """
    for module in model.modules():
        steps = getattr(module, "compiled_steps", ())
        if steps and capabilities(module).compiled_decoding:
            module.static_decoding = True  # fixed-shape caches from now on
            for name in steps:
                setattr(module, name, torch.compile(getattr(module, name), dynamic=False,
                                                    mode=mode))
    return model


def generate_text(model: nn.Module, prompt: str | bytes = b"", **options) -> bytes:
    """All generated bytes at once (see :func:`generate`)."""
    return b"".join(generate(model, prompt, **options))
