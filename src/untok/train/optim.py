"""AdamW parameter groups and learning-rate schedules."""

from __future__ import annotations

import math

import torch
from torch import nn

from untok.config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices of Linear layers; never decay norms, embeddings or biases."""
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            is_matrix = isinstance(module, nn.Linear) and name == "weight"
            tied = isinstance(module, nn.Embedding)
            (decay if is_matrix and not tied else no_decay).append(param)
    # a head tied to the embedding is reached first through the Embedding: never decayed
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, config: TrainConfig,
                   device: torch.device) -> torch.optim.AdamW:
    fused = device.type == "cuda"
    return torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.lr,
                             betas=(config.beta1, config.beta2), fused=fused)


def lr_at(config: TrainConfig, step: int, progress: float) -> float:
    """Learning rate at optimizer ``step`` (0-based) with ``progress`` in [0, 1] of the budget.

    ``warmup``: linear warmup then constant; ``constant``: no warmup; ``cosine``: linear
    warmup, then cosine decay to ``min_lr_ratio x lr`` at the end of the budget.
    """
    if config.schedule == "constant":
        return config.lr
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "warmup":
        return config.lr
    floor = config.lr * config.min_lr_ratio
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return floor + (config.lr - floor) * cosine
