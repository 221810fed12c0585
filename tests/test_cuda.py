"""Every family on an accelerator: bf16 training, step == forward, checkpoints that cross
devices, compression, DDP on one device, and fp16 with loss scaling.

Each test runs on the CPU (in the default suite) and on CUDA (marked ``cuda``: run them with
``pytest -m cuda``). Without a GPU the CUDA cases are reported as skipped, never passed;
``UNTOK_REQUIRE_CUDA=1`` turns those skips into failures, so a device run cannot pass by
finding no GPU.
"""

from __future__ import annotations

import functools
import os
import socket

import numpy as np
import pytest
import torch

import toy_family  # noqa: F401  (registers the bigram family)
import untok
from conftest import TINY
from untok.checkpoint import save_checkpoint
from untok.compression import CompressionError
from untok.config import resolve
from untok.generate import SamplerConfig, compile_decoding
from untok.hardware import (
    autocast,
    autocast_dtype,
    datasheet_peak,
    grad_scaler,
    peak_flops,
    to_device,
)
from untok.models import build_model, load
from untok.models.registry import FAMILIES, examples
from untok.train.distributed import wrap

HAVE_CUDA = torch.cuda.is_available()
if os.environ.get("UNTOK_REQUIRE_CUDA") == "1" and not HAVE_CUDA:
    raise RuntimeError("UNTOK_REQUIRE_CUDA=1 but torch sees no CUDA device")
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not HAVE_CUDA, reason="no CUDA device (UNTOK_REQUIRE_CUDA=1 makes this a failure)")])
DEVICES = ["cpu", CUDA]
CASES = [(n, c) for n, c in examples() if FAMILIES[c.family].capabilities(c).language_model]
IDS = [name for name, _ in CASES]
TEXT = ("The quick brown fox jumps over the lazy dog. 0123 caf\u00e9. " * 40).encode()


def rows(model, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """Ids of real text, BOS first, Long[batch, length] on the model's device."""
    units = model.units
    ids = units.encode(TEXT)
    starts = np.random.default_rng(seed).integers(0, len(ids) - length, batch)
    stacked = np.stack([np.concatenate([[units.bos], ids[s:s + length - 1]]) for s in starts])
    return torch.from_numpy(stacked).to(next(model.parameters()).device)


def built(config, device: str):
    torch.manual_seed(0)
    return build_model(config, device)


@functools.cache
def trained(name: str, device: str) -> tuple[torch.nn.Module, list[float]]:
    """Family example ``name`` after 8 AdamW steps in bf16 on ``device``, and its losses
    (trained, its distributions are peaked: step == forward is then a sharp check)."""
    config = dict(CASES)[name]
    model = built(config, device).train()
    ids = rows(model, 4, config.context + 1)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, fused=device == "cuda")
    losses = []
    for _ in range(8):
        with autocast(torch.device(device), torch.bfloat16):
            loss = model.loss(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", IDS)
def test_every_family_trains_in_bf16(name, device):
    model, losses = trained(name, device)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", IDS)
def test_step_equals_forward_in_bf16(name, device):
    """Under bf16 autocast, a prompt chunk then one unit at a time scores as the whole
    sequence does, to bf16's precision (8 mantissa bits: ~0.4% per rounding)."""
    model, _ = trained(name, device)
    context = model.config.context
    ids, targets = rows(model, 1, context, seed=5), rows(model, 1, context, seed=5).roll(-1, 1)
    with torch.no_grad(), autocast(torch.device(device), torch.bfloat16):
        whole = model(ids).log_prob(targets).float()
        prompt = context // 3
        scores, state = model.step(model.new_state(1), ids[:, :prompt])
        parts = [scores.log_prob(targets[:, :prompt])]
        for i in range(prompt, context):
            scores, state = model.step(state, ids[:, i:i + 1])
            parts.append(scores.log_prob(targets[:, i:i + 1]))
    stepped = torch.cat(parts, dim=1).float()
    difference = (stepped - whole).abs()
    assert difference.mean() < 0.02 and difference.max() < 0.25, \
        f"mean {difference.mean():.4f}, max {difference.max():.4f} nats"


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("source, target", [("cuda", "cpu"), ("cpu", "cuda")])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_checkpoints_cross_devices(case, source, target, tmp_path):
    _, config = case
    model = built(config, source).eval()
    save_checkpoint(tmp_path / "ckpt", model)
    loaded = load(tmp_path / "ckpt", device=target)
    assert next(loaded.parameters()).device.type == target
    for mine, theirs in zip(model.state_dict().values(), loaded.state_dict().values(),
                            strict=True):
        assert torch.equal(mine.cpu(), theirs.cpu())  # bit-exact weights
    with torch.no_grad():
        here = model(rows(model, 2, config.context)).log_prob(rows(model, 2, config.context))
        there = loaded(rows(loaded, 2, config.context)).log_prob(
            rows(loaded, 2, config.context))
    torch.testing.assert_close(here.cpu(), there.cpu(), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_compression_round_trip(device):
    model = built(TINY, device).eval()
    data = TEXT[:3000] + bytes(range(256))
    blob = untok.compress(data, model, chunk_size=1024, batch_size=4)
    assert untok.decompress(blob, model) == data
    if device == "cuda":  # a CUDA file on the CPU: the one-line refusal, no wrong bytes
        with pytest.raises(CompressionError, match="compressed on cuda; decompress it on cuda"):
            untok.decompress(blob, built(TINY, "cpu").eval())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("device", DEVICES)
def test_ddp_on_one_device(device):
    """DDP (NCCL on CUDA, gloo on the CPU) with world size 1: the trainer's wrapped
    objective trains, and its gradients are the plain model's."""
    import torch.distributed as dist

    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)
    try:
        model = built(TINY, device).train()
        ids = rows(model, 2, TINY.context + 1)
        objective = wrap(model, "ddp", torch.device(device))
        with autocast(torch.device(device), autocast_dtype("auto", torch.device(device))):
            loss = objective(ids[:, :-1], ids[:, 1:])
        loss.backward()
        distributed = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        with autocast(torch.device(device), autocast_dtype("auto", torch.device(device))):
            model.loss(ids[:, :-1], ids[:, 1:]).backward()
        for mine, plain in zip(distributed, (p.grad for p in model.parameters()), strict=True):
            torch.testing.assert_close(mine, plain)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("device", DEVICES)
def test_trainer_in_fp16_scales_the_loss_and_resumes(device, text_file, tmp_path):
    overrides = [f"data.path={str(text_file)!r}", "train.batch_size=2", "train.eval_every=3",
                 "train.eval_bytes=512", "train.warmup_steps=1", "train.precision='fp16'",
                 f"train.device={device!r}"]
    run = resolve(preset_name="tiny", overrides=[*overrides, "train.steps=3"])
    result = untok.fit(run, tmp_path / "run", progress=False)
    assert result.step == 3 and np.isfinite(result.best_val_bpb)
    state = torch.load(tmp_path / "run" / "last" / "optimizer.pt", weights_only=False)
    assert state["grad_scaler"]["scale"] > 0  # the scaler's state travels with the run
    longer = resolve(preset_name="tiny", overrides=[*overrides, "train.steps=5"])
    result = untok.fit(longer, tmp_path / "run", resume=tmp_path / "run" / "last",
                       progress=False)
    assert result.step == 5 and np.isfinite(result.last_val_bpb)


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA device")
def test_compiled_bf16_training_on_cuda(text_file, tmp_path):
    run = resolve(preset_name="tiny", overrides=[
        f"data.path={str(text_file)!r}", "train.steps=20", "train.batch_size=8",
        "train.eval_every=20", "train.eval_bytes=2048", "train.precision='bf16'",
        "train.compile=true", "train.device='cuda'", "train.log_every=1"])
    result = untok.fit(run, tmp_path / "run", progress=False)
    assert result.step == 20 and result.best_val_bpb < 8


def test_precision_choices():
    cpu = torch.device("cpu")
    assert autocast_dtype("fp16", cpu) is torch.float16
    assert autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cpu) is None
    assert grad_scaler(cpu, torch.float16).is_enabled()
    assert not grad_scaler(cpu, torch.bfloat16).is_enabled()
    assert not grad_scaler(cpu, None).is_enabled()


def test_peaks_name_their_source():
    assert datasheet_peak("NVIDIA H100 PCIe") == 756e12
    assert datasheet_peak("NVIDIA H100 80GB HBM3") == datasheet_peak("NVIDIA H200") == 989.4e12
    assert datasheet_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert datasheet_peak("NVIDIA L40S") == 362e12 and datasheet_peak("NVIDIA L4") == 121e12
    assert datasheet_peak("NVIDIA A10G") is None  # not an A10: measured instead
    assert datasheet_peak("Some Future Accelerator") is None
    peak = peak_flops(torch.device("cpu"), None)
    assert peak.flops > 1e8 and peak.source == "measured cpu float32 matmul"


@pytest.mark.parametrize("device", DEVICES)
def test_batches_reach_the_device_intact(device):
    batch = torch.arange(24).reshape(2, 12)
    moved = to_device(batch, torch.device(device))
    assert moved.device.type == device and torch.equal(moved.cpu(), batch)


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_compiled_decoding_on_cuda_matches_eager(mode):
    """Compiled static-shape decoding (with ``reduce-overhead``: a CUDA graph) picks the
    same greedy bytes as eager decoding."""
    model = built(TINY, "cuda").eval()
    greedy = SamplerConfig(temperature=0.0)
    eager = untok.generate_text(model, "The ", max_bytes=48, sampler=greedy)
    compile_decoding(model, mode=mode)
    assert untok.generate_text(model, "The ", max_bytes=48, sampler=greedy) == eager
