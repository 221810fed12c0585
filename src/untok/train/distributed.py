"""Data-parallel training on PyTorch's own engine, launched by ``torchrun``.

The model code stays single-device. This module reads the ranks torchrun sets, starts the
process group (gloo on CPU, NCCL on CUDA), wraps the model for DDP or FSDP2
(``fully_shard`` per block), and offers the few collectives the trainer needs: agreeing on a
stop, and gathering a full state dict on rank 0 for checkpoints that load in one process.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from untok.config import PARALLEL
from untok.errors import CheckpointError, ConfigError, UntokError


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (a single process: 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_world() -> World:
    """The ranks torchrun put in the environment (a single process when absent)."""
    return World(rank=int(os.environ.get("RANK", 0)),
                 world_size=int(os.environ.get("WORLD_SIZE", 1)),
                 local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def device_for(world: World, device: torch.device) -> torch.device:
    """One CUDA device per local rank; CPU ranks share the CPU."""
    if device.type == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return device


def init_world(device: torch.device, timeout_s: float) -> World:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on CUDA).

    A collective that waits longer than ``timeout_s`` (a rank died or hangs) raises on the
    others, so no rank waits forever.
    """
    world = launched_world()
    if not world.distributed or dist.is_initialized():
        return world
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return world


@contextlib.contextmanager
def main_first(world: World) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. ingesting data into the cache), then the others."""
    if world.distributed and not world.is_main:
        dist.barrier()
    yield
    if world.distributed and world.is_main:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def resolve_parallel(parallel: str, world: World) -> str:
    """``auto`` is DDP when there is more than one rank; nothing for a single process."""
    if parallel not in PARALLEL:
        raise ConfigError(f"train.parallel must be one of {PARALLEL}, got {parallel!r}")
    if not world.distributed:
        return "none"
    return "ddp" if parallel == "auto" else parallel


class Objective(nn.Module):
    """``model.loss`` as a module call, so that DDP sees it and syncs the gradients."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor, **extra) -> torch.Tensor:
        return self.model.loss(inputs, targets, **extra)


def wrap(model: nn.Module, parallel: str, device: torch.device,
         cpu_offload: bool = False) -> nn.Module:
    """The training objective (``objective(inputs, targets) -> loss``) for ``parallel``:
    ``none``, ``ddp`` (gradients averaged over ranks) or ``fsdp``.

    FSDP2 shards ``model`` in place: every block on its own, then the rest at the root, so
    only one block's full parameters exist at a time during forward and backward. Build the
    optimizer after wrapping.
    """
    if cpu_offload and (parallel != "fsdp" or device.type == "cpu"):
        raise ConfigError("--cpu-offload applies to --parallel fsdp on GPUs (it keeps the "
                          "sharded parameters in CPU memory between uses)")
    if parallel == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(Objective(model), device_ids=ids)
    if parallel == "fsdp":
        from torch.distributed.fsdp import (
            CPUOffloadPolicy,
            fully_shard,
            register_fsdp_forward_method,
        )

        offload = {"offload_policy": CPUOffloadPolicy()} if cpu_offload else {}
        for block in _blocks(model):
            fully_shard(block, **offload)
        fully_shard(model, **offload)
        register_fsdp_forward_method(model, "loss")  # training calls loss(), not forward()
    return Objective(model)


def _blocks(model: nn.Module) -> list[nn.Module]:
    """Every module listed in a ``blocks``/``layers`` ModuleList, at any depth."""
    found = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in ("blocks", "layers") and isinstance(module,
                                                                         nn.ModuleList):
            found.extend(module)
    return found


@contextlib.contextmanager
def no_sync(objective: nn.Module, skip: bool) -> Iterator[None]:
    """No gradient reduction in this backward (the micro-steps of gradient accumulation)."""
    if not skip:
        yield
    elif isinstance(objective, nn.parallel.DistributedDataParallel):
        with objective.no_sync():
            yield
    elif hasattr(objective.model, "set_requires_gradient_sync"):  # FSDP2
        objective.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            objective.model.set_requires_gradient_sync(True)
    else:
        yield


def agree(world: World, device: torch.device, *flags: bool) -> list[bool]:
    """Each flag, True on every rank when it is True on at least one (one all-reduce)."""
    if not world.distributed:
        return list(flags)
    values = torch.tensor([int(f) for f in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(v) for v in values.tolist()]


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights of an FSDP model, on the CPU (every rank must call this)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                         parallel: str) -> dict:
    """The optimizer state to checkpoint: PyTorch's own format on one process and under DDP
    (identical on every rank), a full state keyed by parameter names under FSDP."""
    if parallel != "fsdp":
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict, *,
                         saved: str, parallel: str) -> None:
    """Restore what :func:`full_optimizer_state` saved, with any world size. A state saved
    under FSDP (keyed by parameter names) resumes anywhere; one saved by a single process or
    DDP resumes without FSDP."""
    if saved != "fsdp":
        if parallel == "fsdp":
            raise CheckpointError("this checkpoint's optimizer state was saved without FSDP; "
                                  "resume it with --parallel ddp or in one process")
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    set_optimizer_state_dict(model, optimizer, state,
                             options=StateDictOptions(full_state_dict=True))


def mean_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """The mean of a scalar over all ranks (the value itself on one process)."""
    if not world.distributed:
        return value
    value = value.clone()
    dist.all_reduce(value)  # gloo has no AVG: sum, then divide
    return value / world.world_size


def run_with_torchrun(nproc: int, argv: list[str]) -> None:
    """Run ``torchrun --standalone --nproc-per-node N -m untok ARGV`` with this process as
    torchrun's agent, turning its failures into one line: the rank that failed first, or
    an interruption (the workers have saved their checkpoint)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "-m", "untok", *argv])
    try:
        run(args)
    except SignalException:
        raise KeyboardInterrupt from None
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise UntokError(f"training process {rank} failed (exit code {failure.exitcode}; its "
                         "error is above); the others were stopped") from None
