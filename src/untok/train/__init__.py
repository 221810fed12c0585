"""Training: the loop, optimisers and schedules, distributed wrapping."""

from untok.train.trainer import Trainer, TrainResult, train

__all__ = ["TrainResult", "Trainer", "train"]
