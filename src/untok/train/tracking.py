"""Experiment tracking: the records of ``metrics.jsonl`` mirrored to TensorBoard or to
Weights & Biases (``--log tensorboard`` / ``--log wandb``; extras, off by default).

Step records give the scalars ``train/loss_bpb``, ``train/lr``, ``train/grad_norm``,
``train/units_per_s`` and ``train/mfu``; evaluations ``val/<metric>``; the samples written
at evaluation time are text. TensorBoard's event files go to ``OUT/tensorboard``; a W&B run
is named after the run folder and lives in ``OUT/wandb`` (``WANDB_MODE=offline`` works).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from untok.data.store import ByteStore
from untok.errors import ConfigError
from untok.generate import SamplerConfig, generate_text
from untok.models.registry import capabilities

TRACKERS = ("none", "tensorboard", "wandb")
SCALARS = ("loss_bpb", "lr", "grad_norm", "units_per_s", "mfu")
PROMPT_BYTES = 32


def eval_sample(model: nn.Module, store: ByteStore, max_bytes: int) -> dict[str, Any] | None:
    """A greedy continuation (seed 0) of the val split's first bytes, as a metrics record's
    ``prompt`` and ``text``; None for an autoencoder or a store of conversations."""
    segments = store.segments("val")
    if not max_bytes or not capabilities(model).language_model or store.is_chat or \
            not len(segments.starts):
        return None
    start = int(segments.starts[0])
    head = bytes(store.data[start:start + min(PROMPT_BYTES, int(segments.lengths[0]))])
    prompt = head.decode("utf-8", errors="ignore").encode()  # no character cut in two
    was_training = model.training
    model.eval()
    try:
        text = generate_text(model, prompt, max_bytes=max_bytes, seed=0,
                             sampler=SamplerConfig(temperature=0.0))
    finally:
        model.train(was_training)
    return {"prompt": prompt.decode(), "text": text.decode("utf-8", errors="replace")}


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The tracked scalars of one metrics record, by their tracker names."""
    event = record.get("event")
    if event is None:
        return {f"train/{k}": record[k] for k in SCALARS if record.get(k) is not None}
    if event == "eval" and record.get("val_bpb") is not None:
        return {f"val/{record['metric']}": record["val_bpb"]}
    return {}


class TensorBoard:
    def __init__(self, out: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--log tensorboard needs the tensorboard package: pip install "
                              "'untok[track]'") from None
        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        step = record.get("step", 0)
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, step)
        if record.get("event") == "sample":
            self.writer.add_text("sample", record["text"], step)
        elif record.get("event") == "start":
            self.writer.add_text("config", json.dumps(record["config"], indent=1), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, out: Path) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("--log wandb needs the wandb package: pip install wandb") from None
        self.wandb, self.out, self.run = wandb, out, None

    def write(self, record: dict[str, Any]) -> None:
        if record.get("event") == "start" and self.run is None:
            self.run = self.wandb.init(project="untok", name=self.out.name, dir=str(self.out),
                                       config=record["config"], resume="allow")
        if self.run is None:
            return
        values: dict[str, Any] = scalars(record)
        if record.get("event") == "sample":
            values["sample"] = record["text"]
        if values:
            self.run.log(values, step=record.get("step", 0))

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


def open_tracker(kind: str, out: Path) -> TensorBoard | WandB | None:
    """The tracker ``kind`` (one of :data:`TRACKERS`) writing for the run in ``out``."""
    if kind not in TRACKERS:
        raise ConfigError(f"unknown tracker '{kind}'; use one of {', '.join(TRACKERS)}")
    if kind == "none":
        return None
    return (TensorBoard if kind == "tensorboard" else WandB)(out)
