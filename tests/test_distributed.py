"""Training under torchrun (gloo, 2 CPU processes): parity with one process, disjoint data,
checkpoints that load and resume in one process, FSDP2, and a dead rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import untok
from untok.cli import main
from untok.data.loader import TrainSampler, UnitStream
from untok.errors import DataError

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")

TRAIN = ["--preset", "tiny", "--steps", "10", "--quiet", "--set", "train.batch_size=8",
         "--set", "train.log_every=1", "--set", "train.eval_every=100",
         "--set", "train.eval_bytes=2048"]


def untok_cli(*args, nproc: int | None = None, timeout: float = 300):
    command = [sys.executable, "-m", "untok", "train", *map(str, args)]
    if nproc:
        command += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def losses(run: Path) -> list[float]:
    records = map(json.loads, (run / "metrics.jsonl").open())
    return [r["loss_bpb"] for r in records if "loss_bpb" in r]


def max_weight_difference(a: Path, b: Path) -> float:
    left, right = untok.load(a), untok.load(b)
    return max((p - q).abs().max().item()
               for p, q in zip(left.parameters(), right.parameters(), strict=True))


@pytest.fixture(scope="module")
def single(tmp_path_factory, shared_text) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(["train", "--data", str(shared_text), *TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def shared_text(tmp_path_factory) -> Path:
    from conftest import shakespeare

    path = tmp_path_factory.mktemp("text") / "text.txt"
    path.write_bytes(shakespeare().read_bytes()[:60000])
    return path


@pytest.mark.slow
def test_gradient_accumulation_on_two_processes(shared_text, tmp_path) -> None:
    """Micro-batches of 4 (2 per rank), 2 per step, the all-reduce skipped on the first:
    the same training as one process accumulating the same micro-batches."""
    args = [a.replace("batch_size=8", "batch_size=4") for a in TRAIN]
    args += ["--set", "train.grad_accum=2"]
    assert main(["train", "--data", str(shared_text), *args, "--out", str(tmp_path / "one")]) == 0
    done = untok_cli("--data", shared_text, *args, "--out", tmp_path / "two", nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert np.allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), atol=1e-5)
    assert max_weight_difference(tmp_path / "two" / "last", tmp_path / "one" / "last") < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(parallel, single, shared_text, tmp_path) -> None:
    """Global batch 8 over 2 ranks = batch 8 in one process: same losses, same weights."""
    out = tmp_path / "run"
    done = untok_cli("--data", shared_text, *TRAIN, "--out", out, "--parallel", parallel,
                     nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best val bpb") == 1  # rank 0 alone prints
    assert np.allclose(losses(out), losses(single), atol=1e-5)
    assert max_weight_difference(out / "last", single / "last") < 1e-5
    state = json.loads((out / "last" / "train_state.json").read_text())
    assert state["world_size"] == 2 and state["parallel"] == parallel

    # the checkpoint is an ordinary one: it evaluates and resumes in a single process
    assert main(["eval", str(out / "last"), "--data", str(shared_text), "--json"]) == 0
    assert main(["train", "--resume", str(out / "last"), "--steps", "12", "--quiet"]) == 0
    assert json.loads((out / "last" / "train_state.json").read_text())["step"] == 12


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["blt-tiny", "mmfree-tiny"])
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_every_family_trains_on_two_processes(preset, parallel, shared_text, tmp_path) -> None:
    out = tmp_path / "run"
    done = untok_cli("--data", shared_text, "--preset", preset, "--steps", "2", "--quiet",
                     "--set", "train.batch_size=4", "--set", "train.eval_bytes=1024",
                     "--out", out, "--parallel", parallel, nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert untok.load(out / "last").config.family == untok.load(out / "best").config.family


def test_ranks_read_disjoint_rows_of_the_global_batch(store) -> None:
    stream = UnitStream(store, "train")
    whole = TrainSampler(stream, 16, 8, seed=3).next_batch()[0]
    parts = [TrainSampler(stream, 16, 8, seed=3, rank=r, world_size=2).next_batch()[0]
             for r in range(2)]
    assert torch.equal(torch.cat(parts), whole)
    assert not any(torch.equal(a, b) for a in parts[0] for b in parts[1])
    with pytest.raises(DataError, match="divisible by 3"):
        TrainSampler(stream, 16, 8, seed=3, world_size=3)


def test_resume_with_another_world_size_continues_the_data(store) -> None:
    """The sampler state is global: after k steps on 2 ranks, 1 rank continues exactly."""
    stream = UnitStream(store, "train")
    reference = TrainSampler(stream, 16, 8, seed=5)
    two = [TrainSampler(stream, 16, 8, seed=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        reference.next_batch()
        for sampler in two:
            sampler.next_batch()
    resumed = TrainSampler(stream, 16, 8, seed=0)
    resumed.load_state_dict(two[0].state_dict())
    assert torch.equal(resumed.next_batch()[0], reference.next_batch()[0])


@pytest.mark.slow
def test_a_dead_rank_ends_the_run(shared_text, tmp_path) -> None:
    """Rank 1 dies at step 3: the launch fails promptly instead of hanging."""
    script = tmp_path / "die.py"
    script.write_text(f"""
import os, untok
config = untok.resolve(preset_name="tiny", overrides=[
    "data.path={shared_text}", "train.steps=1000", "train.batch_size=8",
    "train.dist_timeout=20"])
def die(trainer):
    if trainer.world.rank == 1 and trainer.step == 3:
        os._exit(7)
untok.fit(config, "{tmp_path / 'run'}", progress=False, callbacks=[die])
""")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", str(script)], capture_output=True, text=True,
                          timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode != 0
    assert "exitcode  : 7" in done.stderr  # torchrun names the rank that died first


def test_nproc_is_removed_before_relaunching() -> None:
    from untok.cli import without_nproc

    assert without_nproc(["train", "--nproc", "2", "--steps", "3", "--nproc=4"]) == \
        ["train", "--steps", "3"]


def test_one_process_ignores_parallel_and_refuses_offload(capsys, text_file,
                                                          tmp_path) -> None:
    """One process has nothing to split: --parallel is ignored; CPU offload is for GPUs."""
    args = ["train", "--data", str(text_file), "--preset", "tiny", "--steps", "2", "--quiet"]
    assert main([*args, "--parallel", "fsdp", "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--cpu-offload", "--out", str(tmp_path / "b")]) == 2
    assert "--cpu-offload applies to --parallel fsdp on GPUs" in capsys.readouterr().err
