"""The decoding worker: one thread owns the model and advances every request's sequences.

A request becomes one :class:`Sequence` per choice. The worker admits new sequences (one
forward over the prompt each), then advances every active sequence by one unit per round,
so concurrent requests progress together and none waits for another to finish. Each
sequence samples with its own ``torch.Generator`` (seeded from the request), so a seed
gives the same output however many other requests run beside it. A sequence whose client
went away is dropped at the next round.

What a sequence produces reaches the request through ``Event`` s on an ``asyncio.Queue``,
posted thread-safely onto the server's event loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from untok.generate import SamplerConfig, sample_next
from untok.scores import Logits, Scores
from untok.serve.text import Release


@dataclass(frozen=True)
class Spec:
    """One sequence to generate: prompt unit ids (BOS first), at most ``max_units`` new
    units, the sampler, its seed (None: random), stop strings, and how many alternatives
    to report with each unit's log-probability (None: no log-probabilities)."""

    prompt: list[int]
    max_units: int
    sampler: SamplerConfig
    seed: int | None = None
    stops: tuple[bytes, ...] = ()
    top_logprobs: int | None = None


@dataclass(frozen=True)
class Unit:
    """A generated unit: its bytes, log P in nats, and the best alternatives."""

    data: bytes
    logprob: float
    top: tuple[tuple[bytes, float], ...] = ()


@dataclass(frozen=True)
class Event:
    """``kind`` is ``text`` (``data`` bytes and the ``units`` they complete), ``end``
    (``finish_reason``: stop or length; the units generated) or ``error`` (``message``)."""

    index: int
    kind: str
    data: bytes = b""
    units: tuple[Unit, ...] = ()
    finish_reason: str = ""
    completion_units: int = 0
    message: str = ""


@dataclass(eq=False)
class Sequence:
    spec: Spec
    index: int
    queue: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    cancelled: bool = False
    state: Any = None
    scores: Scores | None = None
    generator: torch.Generator | None = None
    release: Release | None = None
    produced: int = 0
    last: list[int] = field(default_factory=list)

    def post(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


def alternatives(scores: Scores, units: Any, k: int) -> tuple[tuple[bytes, float], ...]:
    """The ``k`` most likely next text units of a one-position ``scores`` (B = 1) with
    their log-probabilities, for models whose scores are plain logits (others: none)."""
    if not k or not isinstance(scores, Logits):
        return ()
    logp = F.log_softmax(scores.logits.float().reshape(-1), -1)[:units.num_content]
    values, ids = logp.topk(min(k, logp.shape[0]))
    return tuple((units.decode([int(i)]), float(v)) for v, i in zip(values, ids, strict=True))


class Engine:
    """Serves ``model`` from a worker thread; :meth:`submit` from any thread."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.units = model.units
        self.device = next(model.parameters()).device
        self.pending: deque[Sequence] = deque()
        self.active: list[Sequence] = []
        self.wake = threading.Condition()
        self.running = True
        self.thread = threading.Thread(target=self._run, name="untok-engine", daemon=True)
        self.thread.start()

    def submit(self, spec: Spec, index: int, queue: asyncio.Queue,
               loop: asyncio.AbstractEventLoop) -> Sequence:
        seq = Sequence(spec, index, queue, loop)
        with self.wake:
            self.pending.append(seq)
            self.wake.notify()
        return seq

    def busy(self) -> int:
        """Sequences admitted or waiting."""
        return len(self.active) + len(self.pending)

    def close(self) -> None:
        with self.wake:
            self.running = False
            self.wake.notify()
        self.thread.join(timeout=10)

    # -- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self.wake:
                while self.running and not self.pending and not self.active:
                    self.wake.wait()
                if not self.running:
                    return
                admitted = list(self.pending)
                self.pending.clear()
            with torch.inference_mode():
                for seq in admitted:
                    self._guarded(seq, self._admit)
                for seq in list(self.active):
                    self._guarded(seq, self._advance)

    def _guarded(self, seq: Sequence, work) -> None:
        """Run ``work(seq)``; a failure ends that sequence with an error event only."""
        try:
            if seq.cancelled:
                self._drop(seq)
            else:
                work(seq)
        except Exception as exc:  # noqa: BLE001 (reported to that client, the server goes on)
            self._drop(seq)
            seq.post(Event(seq.index, "error", message=f"generation failed: {exc}"))

    def _drop(self, seq: Sequence) -> None:
        if seq in self.active:
            self.active.remove(seq)

    def _admit(self, seq: Sequence) -> None:
        spec, model = seq.spec, self.model
        seq.generator = torch.Generator(device=self.device)
        seq.generator.manual_seed(spec.seed if spec.seed is not None else torch.seed())
        seq.release = Release(list(spec.stops))
        seq.last = [i for i in spec.prompt if i < self.units.num_content][-2:]
        if spec.max_units == 0:
            return self._end(seq, "length")
        seq.state = model.new_state(1)
        scores, seq.state = model.step(seq.state, torch.tensor([spec.prompt],
                                                                device=self.device))
        seq.scores = scores[:, -1]
        self.active.append(seq)

    def _advance(self, seq: Sequence) -> None:
        spec, units = seq.spec, self.units
        chosen = sample_next(seq.scores, spec.sampler, seq.generator)  # Long[1]
        value = int(chosen)
        if value >= units.num_content:  # EOS: the model ends its output
            return self._end(seq, "stop")
        # the bytes the unit adds after the last ones (a word may bring the space before it)
        piece = units.decode(seq.last + [value])[len(units.decode(seq.last)):]
        seq.last = (seq.last + [value])[-2:]
        unit = None
        if spec.top_logprobs is not None:
            unit = Unit(piece, float(seq.scores.log_prob(chosen)[0]),
                        alternatives(seq.scores, units, spec.top_logprobs))
        seq.produced += 1
        self._send(seq, *seq.release.push(piece, unit))
        if seq.release.stopped:
            return self._end(seq, "stop", flush=False)
        if seq.produced >= spec.max_units:
            return self._end(seq, "length")
        scores, seq.state = self.model.step(seq.state, chosen[:, None])
        seq.scores = scores[:, -1]

    def _send(self, seq: Sequence, data: bytes, units: list) -> None:
        if data or units:
            seq.post(Event(seq.index, "text", data=data,
                           units=tuple(u for u in units if u is not None)))

    def _end(self, seq: Sequence, reason: str, flush: bool = True) -> None:
        if flush:
            self._send(seq, *seq.release.finish())
        self._drop(seq)
        seq.post(Event(seq.index, "end", finish_reason=reason,
                       completion_units=seq.produced))
