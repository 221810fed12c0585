"""Model families, built from a :class:`~untok.config.ModelConfig`."""

from __future__ import annotations

import torch
from torch import nn

from untok.config import ModelConfig
from untok.errors import ConfigError
from untok.models.base import ByteLM
from untok.models.blt import BLT
from untok.models.flat import FlatLM
from untok.models.mmfree import MMFreeLM

FAMILIES: dict[str, type[nn.Module]] = {"flat": FlatLM, "blt": BLT}


def build_model(config: ModelConfig, device: torch.device | str = "cpu",
                init: bool = True) -> nn.Module:
    """Build the model of ``config`` on the meta device, move it to ``device`` and
    initialise it (or leave it uninitialised for loading weights, with ``init=False``)."""
    if config.family not in FAMILIES:
        raise ConfigError(f"unknown model family '{config.family}'; "
                          f"families: {', '.join(FAMILIES)}")
    config.validate()
    family = FAMILIES[config.family]
    if config.family == "flat" and config.backbone == "mmfree":
        family = MMFreeLM
    if hasattr(family, "prepare_config"):  # e.g. BLT records its entropy model's shape
        config = family.prepare_config(config)
    with torch.device("meta"):
        model = family(config)
    model = model.to_empty(device=device)
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # to_empty unties shared parameters
    if init:
        model.init_weights()
    return model


__all__ = ["BLT", "FAMILIES", "ByteLM", "FlatLM", "MMFreeLM", "build_model"]
