"""Training: the loop, optimisers and schedules, checkpoints."""

from untok.train.checkpoint import load, save_checkpoint
from untok.train.trainer import Trainer, TrainResult, train

__all__ = ["TrainResult", "Trainer", "load", "save_checkpoint", "train"]
