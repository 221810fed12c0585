"""The budget of a training run: whether it can be met, how far through it the run is
(which drives the learning-rate schedule and the progress bar) and when to stop, keeping
back the time the final evaluation and checkpoint will take."""

from __future__ import annotations

import math
import time

from tqdm import tqdm

from untok.data.loader import eval_windows
from untok.errors import ConfigError
from untok.evaluate import evaluate_stream


def budget_message() -> str:
    return "give a training budget: --steps N, --bytes N or --minutes M " \
           "(or train.steps / train.bytes / train.minutes in a recipe)"


class Budget:
    """What :class:`~untok.train.trainer.Trainer` knows about its budget (a mixin: it reads
    the trainer's config, step counter, model and validation stream)."""

    def _check_step_cost(self) -> None:
        """Refuse a time budget that cannot buy one step; warn about very slow steps."""
        t, c = self.config.train, self.config.model
        flops = self.model.flops_per_byte() * self.units_per_step
        fastest = flops / self.peak  # seconds per step at 100% of the measured peak
        what = f"one training step ({flops:.2e} FLOPs: batch {t.batch_size} x " \
               f"{t.grad_accum} x context {c.context:,}) needs at least {fastest:,.0f} s " \
               f"on this machine (its peak is {self.peak / 1e9:,.0f} GFLOP/s, " \
               f"{self.peak_source.source})"
        if t.minutes is not None and fastest > 60 * t.minutes:
            raise ConfigError(f"{what}, more than the whole {t.minutes:g}-minute budget; "
                              "lower model.context, model.dim or train.batch_size, or raise "
                              "--minutes")
        if fastest > 10:
            self.say(f"warning: {what}; lower model.context or train.batch_size for "
                     "faster steps")

    @property
    def total_steps(self) -> int | None:
        """Step budget implied by ``steps`` and ``bytes`` (the smaller), if any."""
        t = self.config.train
        limits = [t.steps] if t.steps else []
        if t.bytes:
            limits.append(math.ceil(t.bytes / self.units_per_step))
        return min(limits) if limits else None

    def progress_fraction(self, elapsed: float) -> float:
        t = self.config.train
        fractions = []
        if self.total_steps:
            fractions.append(self.step / self.total_steps)
        if t.minutes:  # a resumed run continues the curve over old time + new budget
            fractions.append((self.seconds_before + elapsed)
                             / (self.seconds_before + 60 * t.minutes))
        return max(fractions)

    def budget_reached(self, elapsed: float, eval_due: bool = False) -> bool:
        """Whether to stop now. A time budget keeps back what the final evaluation and
        checkpoint will take (and the periodic one when ``eval_due``), so that the whole
        invocation fits it; a due evaluation that would leave no time for the final one is
        the final one."""
        t = self.config.train
        steps_done = self.total_steps is not None and self.step >= self.total_steps
        if steps_done or t.minutes is None:
            return steps_done
        evaluations = 2 if eval_due else 1
        return elapsed + evaluations * self.final_seconds() >= 60 * t.minutes

    def final_seconds(self) -> float:
        """Expected seconds of the final evaluation and checkpoint: the last measured one,
        else an estimate from timing one evaluation batch."""
        if self.eval_seconds is None and self.eval_estimate is None:
            self.eval_estimate = self._probe_eval()
        return self.eval_seconds if self.eval_seconds is not None else self.eval_estimate

    def _probe_eval(self, batches: int = 4) -> float:
        """The final evaluation's windows x the time per window of a short evaluation of
        ``batches`` batches (timed after a warm-up window), plus a second for the
        checkpoint."""
        t, context = self.config.train, self.config.model.context
        stride = t.eval_stride or max(context // 2, 1)
        length = len(self.val_stream) if t.eval_bytes is None else \
            min(len(self.val_stream), t.eval_bytes + 1)
        windows = len(eval_windows(length, context, stride))
        probe = dict(stride=stride, max_bytes=batches * t.batch_size * stride,
                     batch_size=t.batch_size, device=self.device, dtype=self.dtype,
                     checked=False)
        evaluate_stream(self.model, self.val_stream, **{**probe, "max_bytes": stride})
        began = time.perf_counter()
        evaluate_stream(self.model, self.val_stream, **probe)
        probed = len(eval_windows(min(length, probe["max_bytes"] + 1), context, stride))
        return windows * (time.perf_counter() - began) / probed + 1.0

    def _progress_bar(self) -> tqdm:
        """Steps for a step budget; seconds for a time budget."""
        if self.total_steps:
            return tqdm(total=self.total_steps, initial=self.step, disable=not self.progress,
                        unit="step", dynamic_ncols=True, desc="train")
        return tqdm(total=round(60 * self.config.train.minutes), disable=not self.progress,
                    unit="s", dynamic_ncols=True, desc=f"train step {self.step}",
                    bar_format="{desc}{percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")

    def _advance(self, bar: tqdm, elapsed: float) -> None:
        """One step on a step bar; the elapsed seconds on a time bar."""
        if self.total_steps:
            bar.update(1)
        else:
            bar.set_description(f"train step {self.step}", refresh=False)
            bar.update(min(round(elapsed), bar.total) - bar.n)
