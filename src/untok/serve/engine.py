"""The decoding worker: one thread owns the model and advances every request's sequences.

A request becomes one :class:`Sequence` per choice. The worker admits new sequences (one
forward over the prompt each), then advances every active sequence by one unit per round,
so concurrent requests progress together and none waits for another to finish.

Sequences decode in *cohorts*, one batched ``step`` per cohort and round. For families
whose decoding states join (``Capabilities.joins_rows``: the flat family, transformer or
MatMul-free) a cohort holds up to ``max_batch`` sequences: a new one is prefilled alone,
placed on the cohort's clock so that its prompt ends where the others are, and joined to
the batch (:meth:`untok.models.flat.FlatState.join`); a finished one is selected out.
Other families decode each sequence as a cohort of one. Each sequence samples with its
own ``torch.Generator`` (seeded from the request), so a seed gives the same output
however many other requests run beside it; the rows of a cohort that share sampler
settings are still drawn in one batched call (:func:`untok.generate.draw`). A sequence
whose client went away is dropped at the next round.

What a sequence produces reaches the request through ``Event`` s on an ``asyncio.Queue``,
handed to the server's event loop thread-safely, one callback per round.

The worker is the one thread of the process that computes with the model: other model work
(scoring a text) is handed to it with :meth:`Engine.call`. With OpenMP (the CPU build of
torch), every thread that runs a parallel region keeps its own pool of worker threads, and
once the pools hold more threads than there are cores their threads stop spinning between
regions: a decode step from a second computing thread then ran 1.3-1.9x slower on 2 cores
(``bench/serve.py``). The server's main thread therefore computes with one thread
(:func:`untok.cli.decoding.cmd_serve`), and the worker sets its own count.
"""

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from untok.generate import SamplerConfig, sample_next
from untok.models.registry import capabilities
from untok.nn.packed import packed_linears
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
    """One choice of one request while it decodes: where its events go, whether its
    client left, and its sampling state."""

    spec: Spec
    index: int
    queue: asyncio.Queue
    loop: asyncio.AbstractEventLoop
    cancelled: bool = False
    scores: Scores | None = None  # of its first unit (from its prompt), shape (1,)
    row: int = 0  # its row in its cohort's last step (where its next unit's scores are)
    generator: torch.Generator | None = None
    release: Release | None = None
    produced: int = 0
    last: list[int] = field(default_factory=list)


def deliver(items: list[tuple[Sequence, Event]]) -> None:
    """On the event loop: put each event on its sequence's queue."""
    for seq, event in items:
        seq.queue.put_nowait(event)


def fill_gaps(keep: list[int]) -> list[int]:
    """An order of the kept rows ``keep`` (ascending) that moves fewest: a kept row
    among the first ``len(keep)`` stays, and the others fill the gaps."""
    n, kept = len(keep), set(keep)
    movers = iter(i for i in keep if i >= n)
    return [i if i in kept else next(movers) for i in range(n)]


def alternatives(scores: Scores, units: Any, k: int) -> tuple[tuple[bytes, float], ...]:
    """The ``k`` most likely next text units of a one-position ``scores`` (B = 1) with
    their log-probabilities, for models whose scores are plain logits (others: none)."""
    if not k or not isinstance(scores, Logits):
        return ()
    logp = F.log_softmax(scores.logits.float().reshape(-1), -1)[:units.num_content]
    values, ids = logp.topk(min(k, logp.shape[0]))
    return tuple((units.decode([int(i)]), float(v)) for v, i in zip(values, ids, strict=True))


@dataclass(eq=False)
class Cohort:
    """Sequences decoded as one batch: row i of ``state`` is ``rows[i]``."""

    rows: list[Sequence]
    state: Any
    scores: Scores | None = None  # the last step's, shape (B,)


class Engine:
    """Serves ``model`` from a worker thread; :meth:`submit` from any thread.

    ``max_batch``: most sequences in one cohort. A cohort's clock begins at the model's
    context (so any prompt fits before it) and takes no new rows once it has run
    ``clock_limit`` units; new sequences then open a fresh cohort, and the old one ends
    when its last sequence does."""

    def __init__(self, model: nn.Module, max_batch: int = 16,
                 threads: int | None = None) -> None:
        self.model = model
        self.threads = threads or torch.get_num_threads()  # the worker's compute threads
        self.units = model.units
        self.device = next(model.parameters()).device
        self.max_batch = max_batch if capabilities(model).joins_rows else 1
        self.base = model.config.context + 1  # (every prompt then begins after 0: its
        # cache has the layout of the cohort's, see KVCache.empty)
        self.clock_limit = 64 * model.config.context
        self.pending: deque[Sequence] = deque()
        self.calls: deque[tuple[Future, Callable, tuple]] = deque()
        self.cohorts: list[Cohort] = []
        self.outbox: list[tuple[Sequence, Event]] = []  # posted once per round
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

    def call(self, work: Callable, *args: Any) -> Future:
        """Run ``work(*args)`` on the worker between two rounds; its result (or exception)
        arrives through the returned future (``asyncio.wrap_future`` on an event loop)."""
        future: Future = Future()
        with self.wake:
            self.calls.append((future, work, args))
            self.wake.notify()
        return future

    def busy(self) -> int:
        """Sequences admitted or waiting."""
        return sum(len(c.rows) for c in self.cohorts) + len(self.pending)

    def close(self) -> None:
        with self.wake:
            self.running = False
            self.wake.notify()
        self.thread.join(timeout=10)
        for future, _, _ in self.calls:  # never run: their callers get CancelledError
            future.cancel()

    # -- the worker ------------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_num_threads(self.threads)  # (per thread under OpenMP)
        with packed_linears(self.model):  # (batched steps: 1.15x, see untok.nn.packed)
            self._serve()

    def _serve(self) -> None:
        while True:
            with self.wake:
                while self.running and not (self.pending or self.cohorts or self.calls):
                    self.wake.wait()
                if not self.running:
                    return
                admitted, calls = list(self.pending), list(self.calls)
                self.pending.clear()
                self.calls.clear()
            for future, work, args in calls:
                self._answer(future, work, args)
            with torch.inference_mode():
                for seq in admitted:
                    self._guarded([seq], self._admit, seq)
                self._flush()
                for cohort in list(self.cohorts):
                    self._guarded(cohort.rows, self._round, cohort)
                    self._flush()

    @staticmethod
    def _answer(future: Future, work: Callable, args: tuple) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(work(*args))
        except Exception as exc:  # noqa: BLE001 (raised where the result is awaited)
            future.set_exception(exc)

    def _post(self, seq: Sequence, event: Event) -> None:
        self.outbox.append((seq, event))

    def _flush(self) -> None:
        """Hand the outbox to the event loops (one callback each, not one per event)."""
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for seq, event in self.outbox:
            by_loop.setdefault(seq.loop, []).append((seq, event))
        self.outbox = []
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(deliver, items)

    def _guarded(self, seqs: list[Sequence], work, arg) -> None:
        """Run ``work(arg)``; a failure ends the sequences involved with an error event
        and the server goes on."""
        try:
            work(arg)
        except Exception as exc:  # noqa: BLE001 (reported to those clients)
            self.cohorts = [c for c in self.cohorts if not set(c.rows) & set(seqs)]
            for seq in seqs:
                self._post(seq, Event(seq.index, "error",
                                      message=f"generation failed: {exc}"))

    def _cohort_with_room(self) -> Cohort | None:
        if self.max_batch == 1 or not self.cohorts:
            return None
        youngest = self.cohorts[-1]
        if len(youngest.rows) < self.max_batch and \
                youngest.state.position < self.base + self.clock_limit:
            return youngest
        return None

    def _admit(self, seq: Sequence) -> None:
        spec, model = seq.spec, self.model
        if seq.cancelled:
            return
        seq.generator = torch.Generator(device=self.device)
        seq.generator.manual_seed(spec.seed if spec.seed is not None else torch.seed())
        seq.release = Release(list(spec.stops))
        seq.last = [i for i in spec.prompt if i < self.units.num_content][-2:]
        if spec.max_units == 0:
            return self._end(seq, "length")
        cohort = self._cohort_with_room()
        if self.max_batch > 1:  # the prompt ends on the cohort's clock
            start = (cohort.state.position if cohort else self.base) - len(spec.prompt)
            state = model.new_state(1, position=start)
        else:
            state = model.new_state(1)
        scores, state = model.step(state, torch.tensor([spec.prompt], device=self.device))
        seq.scores = scores[:, -1]
        if cohort is None:
            self.cohorts.append(Cohort([seq], state))
        else:
            cohort.state = cohort.state.join(state, start)
            cohort.rows.append(seq)

    def _round(self, cohort: Cohort) -> None:
        """One unit for every sequence of ``cohort``, then one batched step."""
        live = [i for i, seq in enumerate(cohort.rows) if not seq.cancelled]
        chosen = {}  # row -> its next unit, for the rows that go on
        for i, value in zip(live, self._sample(cohort, [cohort.rows[i] for i in live]),
                            strict=True):
            if self._accept(cohort.rows[i], value, cohort):
                chosen[i] = value
        if not chosen:
            self.cohorts.remove(cohort)
            return
        rows = fill_gaps(list(chosen))
        if len(rows) < len(cohort.rows):
            cohort.state = cohort.state.select(torch.tensor(rows, device=self.device))
        cohort.rows = [cohort.rows[i] for i in rows]
        scores, cohort.state = self.model.step(
            cohort.state, torch.tensor([chosen[i] for i in rows], device=self.device)[:, None])
        cohort.scores = scores[:, -1]
        for i, seq in enumerate(cohort.rows):
            seq.scores, seq.row = None, i

    def _sample(self, cohort: Cohort, seqs: list[Sequence]) -> list[int]:
        """The next unit of each of ``seqs``: one batched draw per sampler setting over the
        cohort's last step (each row with its own generator), alone for a sequence just
        admitted (its scores come from its prompt)."""
        values = [0] * len(seqs)
        groups: dict[SamplerConfig, list[int]] = {}
        for j, seq in enumerate(seqs):
            if seq.scores is not None:
                values[j] = int(sample_next(seq.scores, seq.spec.sampler, [seq.generator]))
            else:
                groups.setdefault(seq.spec.sampler, []).append(j)
        for sampler, members in groups.items():
            rows = torch.tensor([seqs[j].row for j in members], device=self.device)
            picked = sample_next(cohort.scores[rows], sampler,
                                 [seqs[j].generator for j in members])
            for j, value in zip(members, picked.tolist(), strict=True):
                values[j] = value
        return values

    def _accept(self, seq: Sequence, value: int, cohort: Cohort) -> bool:
        """Send what ``value``, ``seq``'s next unit, releases; False when ``seq`` ends."""
        spec, units = seq.spec, self.units
        if value >= units.num_content:  # EOS: the model ends its output
            self._end(seq, "stop")
            return False
        # the bytes the unit adds after the last ones (a word may bring the space before it)
        piece = units.decode(seq.last + [value])[len(units.decode(seq.last)):]
        seq.last = (seq.last + [value])[-2:]
        unit = None
        if spec.top_logprobs is not None:
            scores = seq.scores if seq.scores is not None else \
                cohort.scores[seq.row:seq.row + 1]
            chosen = torch.tensor([value], device=self.device)
            unit = Unit(piece, float(scores.log_prob(chosen)[0]),
                        alternatives(scores, units, spec.top_logprobs))
        seq.produced += 1
        self._send(seq, *seq.release.push(piece, unit))
        if seq.release.stopped:
            self._end(seq, "stop", flush=False)
            return False
        if seq.produced >= spec.max_units:
            self._end(seq, "length")
            return False
        return True

    def _send(self, seq: Sequence, data: bytes, units: list) -> None:
        if data or units:
            self._post(seq, Event(seq.index, "text", data=data,
                                  units=tuple(u for u in units if u is not None)))

    def _end(self, seq: Sequence, reason: str, flush: bool = True) -> None:
        if flush:
            self._send(seq, *seq.release.finish())
        self._post(seq, Event(seq.index, "end", finish_reason=reason,
                              completion_units=seq.produced))
