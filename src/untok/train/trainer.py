"""The training loop.

The model code is single-device and knows nothing of precision or compilation: the
trainer builds the model, applies ``torch.compile`` and autocast from outside, samples
windows, steps AdamW with the schedule, logs, evaluates, checkpoints and stops.

Resuming restores model, optimizer, RNGs and the data position, so a run stopped at step k
and resumed to step n ends with the same weights as an uninterrupted n-step run.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from untok.checkpoint import (
    load_weights,
    read_optimizer_state,
    read_train_state,
    resolve_checkpoint,
    save_checkpoint,
)
from untok.config import RunConfig, replace
from untok.data.entropies import ensure_entropies, open_entropies
from untok.data.ingest import absolute_data_path, open_data
from untok.data.loader import TrainSampler, open_stream
from untok.errors import CheckpointError, ConfigError, UntokError
from untok.evaluate import LN2, evaluate_stream
from untok.hardware import (
    autocast,
    autocast_dtype,
    configure_backends,
    grad_scaler,
    peak_flops,
    pick_device,
    to_device,
)
from untok.models.registry import TrainingData, build_model, capabilities, prepare
from untok.train.budget import Budget, budget_message
from untok.train.distributed import (
    agree,
    device_for,
    full_optimizer_state,
    full_state_dict,
    init_world,
    load_optimizer_state,
    main_first,
    mean_over_ranks,
    no_sync,
    resolve_parallel,
    shutdown,
    wrap,
)
from untok.train.lr_control import QLearnController
from untok.train.optim import lr_at, make_optimizer
from untok.train.resume import check_resumable
from untok.train.tracking import eval_sample, open_tracker
from untok.version import __version__

Callback = Callable[["Trainer"], None]


@dataclass
class TrainResult:
    out: Path
    step: int
    units_seen: int  # of ``unit``
    best_val_bpb: float | None  # the val metric: bpb (an autoencoder: reconstruction bits)
    last_val_bpb: float | None
    stop_reason: str  # budget, early stop, interrupted or diverged
    seconds: float
    signal: int | None = None  # the signal that interrupted the run
    unit: str = "byte"  # the model's units (Units.name)
    metric: str = "bpb"  # what best_val_bpb measures


def finite(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with NaN and infinite floats as None (null): metrics stay valid JSON."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v
            for k, v in record.items()}


class Trainer(Budget):
    """One training run writing to ``out`` (``out/last``, ``out/best``, ``metrics.jsonl``).

    ``callbacks`` are called after every optimizer step with the trainer; setting
    ``trainer.stop_requested = True`` stops the run cleanly with a checkpoint.
    """

    def __init__(self, config: RunConfig, out: str | Path, *, resume: str | Path | None = None,
                 progress: bool = True, callbacks: Iterable[Callback] = ()) -> None:
        self.clock_start = time.perf_counter()  # budgets count from here: setup included
        config.validate()
        t = config.train
        if t.steps is None and t.bytes is None and t.minutes is None:
            raise ConfigError(budget_message())
        if not config.data.path:
            raise ConfigError("no training data: pass --data STORE_OR_TEXT_FILE")
        self.out = Path(out)
        self.callbacks = list(callbacks)
        device = pick_device(t.device)
        self.world = init_world(device, t.dist_timeout)
        self.device = device_for(self.world, device)
        self.parallel = resolve_parallel(t.parallel, self.world)
        self.progress = progress and self.world.is_main
        configure_backends(self.device)
        self.dtype = autocast_dtype(t.precision, self.device)
        self.scaler = grad_scaler(self.device, self.dtype)  # fp16 only: a no-op otherwise
        with main_first(self.world):  # one rank ingests a text file into the cache
            self.store = open_data(config.data.path, val_fraction=config.data.val_fraction,
                                   val_bytes=config.data.val_bytes, progress=self.progress)
        # the run config keeps an absolute data path: a resume works from any directory
        self.config = config = replace(config, data={"path": absolute_data_path(
            config.data.path)})
        # the family's prepare hook completes the model config from the train split (e.g.
        # BLT fits its entropy threshold); the run config keeps what was asked for
        with main_first(self.world):  # rank 0 writes the entropy cache, if any, first
            model_config = prepare(config.model, TrainingData(self.store, self.device,
                                                              self.progress))
            if t.entropy_cache:
                ensure_entropies(self.store, model_config.patching, self.progress)
        torch.manual_seed(t.seed)
        self.model = build_model(model_config, self.device)
        self.train_stream = open_stream(self.store, "train", self.model.units)
        self.val_stream = open_stream(self.store, "val", self.model.units)
        # what evaluation minimises: bpb, or an autoencoder's reconstruction bits per byte
        self.val_metric = "bpb" if capabilities(self.model).language_model else \
            "reconstruction_bits"
        self.entropies = open_entropies(self.store, self.model.config.patching) \
            if capabilities(self.model).patches else None
        self.sampler = TrainSampler(self.train_stream, config.model.context, t.batch_size,
                                    seed=t.seed, side=self.entropies and self.entropies["train"],
                                    rank=self.world.rank, world_size=self.world.world_size)
        self.units_per_step = t.batch_size * t.grad_accum * config.model.context
        self.peak_source = peak_flops(self.device, self.dtype)
        self.peak = self.peak_source.flops * self.world.world_size  # every rank computes
        self._check_step_cost()
        self.controller = QLearnController(t) if t.lr_controller == "qlearn" else None
        self.tracker = open_tracker(t.tracker, self.out) if self.world.is_main else None
        self.step = 0
        self.units_seen = 0
        self.best_val_bpb: float | None = None
        self.last_val_bpb: float | None = None
        self.evals_without_improvement = 0
        self.seconds_before = 0.0  # training time of earlier invocations (resume)
        self.stop_requested = False
        self.stop_signal: int | None = None
        self.last_eval_step = -1
        self.eval_seconds: float | None = None  # the last evaluation + checkpoint
        self.eval_estimate: float | None = None  # ... before one has run
        if resume is not None:
            self._restore_weights(resume)  # into the plain module, before any sharding
        elif t.init is not None:  # fine-tuning: the weights only; a new optimizer and schedule
            load_weights(self.model, resolve_checkpoint(t.init), self.device)
        # model.loss as a module, wrapped for DDP or FSDP2 where it runs under torchrun
        self.loss_module = wrap(self.model, self.parallel, self.device, t.cpu_offload)
        if t.compile:  # the training step (loss forward, hence its backward), compiled in
            self.loss_module.compile()  # place: the state dict keeps its plain names
        self.optimizer = make_optimizer(self.model, t, self.device)
        if resume is not None:
            self._restore_state(resume)

    # -- state ---------------------------------------------------------------------------

    def _train_state(self, elapsed: float) -> dict[str, Any]:
        return {"step": self.step, "units_seen": self.units_seen,
                "best_val_bpb": self.best_val_bpb, "last_val_bpb": self.last_val_bpb,
                "evals_without_improvement": self.evals_without_improvement,
                "seconds": self.seconds_before + elapsed, "sampler": self.sampler.state_dict(),
                "seed": self.config.train.seed, "untok_version": __version__,
                "data": {"name": self.store.name, "sha256": self.store.meta["sha256"],
                         "split": self.store.meta["split"]},
                "world_size": self.world.world_size, "parallel": self.parallel,
                "lr_controller": self.controller and self.controller.state_dict(),
                "run_config": self.config.to_dict()}

    def _optimizer_state(self) -> dict[str, Any]:
        state = {"optimizer": full_optimizer_state(self.model, self.optimizer, self.parallel),
                 "parallel": self.parallel, "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.scaler.is_enabled():
            state["grad_scaler"] = self.scaler.state_dict()
        return state

    def _restore_weights(self, path: str | Path) -> None:
        path = check_resumable(path, self.config, self.store)
        load_weights(self.model, path, self.device)

    def _restore_state(self, path: str | Path) -> None:
        """Optimizer, RNGs, data position and counters (after wrapping)."""
        path = resolve_checkpoint(path, prefer="last")
        state = read_train_state(path)
        opt = read_optimizer_state(path)
        load_optimizer_state(self.model, self.optimizer, opt["optimizer"],
                             saved=opt.get("parallel", "none"), parallel=self.parallel)
        torch.set_rng_state(opt["torch_rng"])
        if "cuda_rng" in opt and self.device.type == "cuda":
            torch.cuda.set_rng_state(opt["cuda_rng"], self.device)
        if "grad_scaler" in opt and self.scaler.is_enabled():
            self.scaler.load_state_dict(opt["grad_scaler"])
        self.sampler.load_state_dict(state["sampler"])
        if self.controller is not None and state.get("lr_controller"):
            try:
                self.controller.load_state_dict(state["lr_controller"])
            except ValueError as exc:
                raise CheckpointError(f"cannot resume {path}: {exc}") from None
        self.step = state["step"]
        self.units_seen = state.get("units_seen", state.get("bytes_seen"))  # 0.1 name
        self.best_val_bpb = state["best_val_bpb"]
        self.last_val_bpb = state["last_val_bpb"]
        self.evals_without_improvement = state["evals_without_improvement"]
        self.seconds_before = state["seconds"]

    def save(self, name: str, elapsed: float) -> Path | None:
        """Write checkpoint ``name`` from rank 0 (every rank takes part in gathering it)."""
        model = self.model
        if self.parallel == "fsdp":  # gather the shards into a plain single-device model
            weights = full_state_dict(self.model)
            if self.world.is_main:
                model = build_model(self.config.model, "cpu", init=False)
                model.load_state_dict(weights)
        optimizer_state = self._optimizer_state()
        if not self.world.is_main:
            return None
        return save_checkpoint(self.out / name, model, train_state=self._train_state(elapsed),
                               optimizer_state=optimizer_state, metrics=self.metrics_path)

    def _loss_name(self, loss: float) -> tuple[str, str, float]:
        """(metrics key, bar label, value) of a training loss in nats per unit: bits per
        unit under the units' label (bpb for bytes, bpc for code points), or the model's
        own loss when it is not a cross-entropy (``model.nll_loss`` False)."""
        if not getattr(self.model, "nll_loss", True):
            return "loss", "loss", loss
        label = self.model.units.loss_label
        return f"loss_{label}", label, loss / LN2

    def current_lr(self, elapsed: float) -> float:
        """The schedule's learning rate, or the controller's once warmup is over."""
        t = self.config.train
        if self.controller is not None and self.step >= t.warmup_steps:
            return self.controller.lr
        return lr_at(t, self.step, self.progress_fraction(elapsed))

    # -- loop ----------------------------------------------------------------------------

    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    def say(self, message: str) -> None:
        """Print a line above the progress bar (rank 0 only)."""
        if self.world.is_main:
            tqdm.write(message)

    def log(self, record: dict[str, Any]) -> None:
        if not self.world.is_main:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(finite(record)) + "\n")
        if self.tracker is not None:
            self.tracker.write(finite(record))

    def train_step(self, lr: float) -> tuple[float, float]:
        """One optimizer step over ``grad_accum`` micro-batches; (loss in nats, grad norm)."""
        t = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            if self.controller is not None:  # it may steer beta1 too
                group["betas"] = (self.controller.beta1, t.beta2)
        total = torch.zeros((), device=self.device)
        for micro in range(t.grad_accum):
            inputs, targets = self.sampler.next_batch()
            inputs, targets = to_device(inputs, self.device), to_device(targets, self.device)
            extra = {} if self.sampler.side_batch is None else \
                {"entropies": to_device(self.sampler.side_batch, self.device)}  # precomputed
            with no_sync(self.loss_module, skip=micro < t.grad_accum - 1):
                with autocast(self.device, self.dtype):
                    loss = self.loss_module(inputs, targets, **extra) / t.grad_accum
                self.scaler.scale(loss).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)  # clip the true gradients
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        total = mean_over_ranks(total, self.world)
        self.scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.units_seen += self.units_per_step
        return float(total), float(norm)

    def run_eval(self, max_bytes: int | None) -> float:
        t = self.config.train
        result = evaluate_stream(self.model, self.val_stream, stride=t.eval_stride,
                                 max_bytes=max_bytes, batch_size=t.batch_size,
                                 device=self.device, dtype=self.dtype, checked=False)
        self.last_val_bpb = result[self.val_metric]
        return self.last_val_bpb

    def _install_signal_handlers(self) -> dict[int, Any]:
        def handler(signum: int, _frame: Any) -> None:
            if self.stop_requested:  # second signal: stop now
                raise KeyboardInterrupt
            self.stop_requested = True
            self.stop_signal = signum
            self.say(f"{signal.Signals(signum).name}: saving a checkpoint and stopping "
                     "(send again to stop at once)")

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers
                previous[sig] = signal.signal(sig, handler)
        return previous

    def _log_step(self, bar: tqdm, loss: float, lr: float, grad_norm: float, rate: float,
                  elapsed: float) -> None:
        """One metrics record and the bar's figures; ``rate`` in units per second."""
        mfu = rate * self.model.flops_per_byte() / self.peak
        name, label, shown = self._loss_name(loss)
        self.log({"step": self.step, name: shown, "lr": lr, "grad_norm": grad_norm,
                  "units_per_s": rate, "mfu": mfu, "units_seen": self.units_seen,
                  "seconds": elapsed})
        unit = "B" if self.model.units.identity else f" {self.model.units.name}s"
        bar.set_postfix_str(f"{label} {shown:.3f} lr {lr:.2e} {rate / 1e3:.1f}k{unit}/s "
                            f"mfu {mfu:.0%}")

    def run(self) -> TrainResult:
        """Train until the budget, early stopping or a stop request; return a summary."""
        t = self.config.train
        self.out.mkdir(parents=True, exist_ok=True)
        previous_handlers = self._install_signal_handlers()
        bar = self._progress_bar()
        self.log({"event": "start", "step": self.step, "params": self.model.num_params(),
                  "device": str(self.device), "matmul_peak_flops": self.peak,
                  "peak_source": self.peak_source.source,
                  "precomputed_entropies": self.entropies is not None,
                  "config": self.config.to_dict()})
        started = self.clock_start
        window_start, window_steps = time.perf_counter(), 0
        reason = "budget"
        try:
            [finished] = agree(self.world, self.device,
                               self.budget_reached(time.perf_counter() - started))
            while not finished:
                elapsed = time.perf_counter() - started
                lr = self.current_lr(elapsed)
                loss, grad_norm = self.train_step(lr)
                if self.controller is not None and self.step > t.warmup_steps:
                    self.controller.observe(loss, grad_norm)
                window_steps += 1
                if not math.isfinite(loss):
                    reason = "diverged"
                    self.say(f"loss is {loss} at step {self.step}: stopping; lower "
                             "train.lr or raise train.warmup_steps")
                    break
                now = time.perf_counter()
                if self.step % t.log_every == 0:
                    rate = window_steps * self.units_per_step / (now - window_start)
                    window_start, window_steps = now, 0
                    self._log_step(bar, loss, lr, grad_norm, rate, now - started)
                self._advance(bar, now - started)
                for callback in self.callbacks:
                    callback(self)
                # every rank must take the same decision (time budgets and signals differ)
                due = self.step % t.eval_every == 0
                finished, stop = agree(self.world, self.device,
                                       self.budget_reached(now - started, due),
                                       self.stop_requested)
                finished = finished or stop
                if self.step % t.eval_every == 0 or finished:
                    if self.evaluate_and_save(t.eval_bytes, now - started, bar):
                        reason = "early stop"
                        break
                    window_start, window_steps = time.perf_counter(), 0  # rate excludes eval
                if stop:
                    reason = "interrupted"
                    break
            if self.last_eval_step != self.step and reason != "diverged":
                self.evaluate_and_save(t.eval_bytes, time.perf_counter() - started, bar)
        finally:
            bar.close()
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        seconds = time.perf_counter() - started
        self.log({"event": "end", "step": self.step, "reason": reason, "seconds": seconds,
                  "best_val_bpb": self.best_val_bpb})
        if self.tracker is not None:
            self.tracker.close()
        return TrainResult(self.out, self.step, self.units_seen, self.best_val_bpb,
                           self.last_val_bpb, reason, seconds, self.stop_signal,
                           self.model.units.name, self.val_metric)

    def evaluate_and_save(self, max_bytes: int | None, elapsed: float, bar: tqdm) -> bool:
        """Evaluate, save ``best`` if improved and ``last``; True when patience runs out."""
        t = self.config.train
        began = time.perf_counter()
        self.last_eval_step = self.step
        bpb = self.run_eval(max_bytes)
        improved = self.best_val_bpb is None or bpb < self.best_val_bpb
        if improved:
            self.best_val_bpb = bpb
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        evaluated = time.perf_counter() - began
        self.log({"event": "eval", "step": self.step, "metric": self.val_metric,
                  "val_bpb": bpb, "best_val_bpb": self.best_val_bpb, "seconds": elapsed,
                  "eval_seconds": evaluated})
        self.say(f"step {self.step}: val {self.val_metric.replace('_', ' ')} {bpb:.4f}"
                 f"{' (best)' if improved else f' (best {self.best_val_bpb:.4f})'}")
        if self.world.is_main and self.parallel == "none" and \
                (sample := eval_sample(self.model, self.store, t.sample_bytes)):
            self.log({"event": "sample", "step": self.step, **sample})
        if improved:
            self.save("best", elapsed)
        self.save("last", elapsed)
        self.eval_seconds = time.perf_counter() - began
        return t.patience is not None and self.evals_without_improvement >= t.patience


def train(config: RunConfig, out: str | Path, *, resume: str | Path | None = None,
          progress: bool = True, callbacks: Iterable[Callback] = ()) -> TrainResult:
    """Train a model as described by ``config``, writing checkpoints under ``out``.

    Launched by torchrun, every process calls this; rank 0 prints and writes.
    """
    try:
        return Trainer(config, out, resume=resume, progress=progress,
                       callbacks=callbacks).run()
    except torch.distributed.DistError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UntokError(f"lost contact with the other training processes (one died or "
                         f"hangs; see its error above): {first}") from None
    finally:
        shutdown()
