"""Device, precision and throughput: the one place where hardware choices are made."""

from __future__ import annotations

import contextlib
import json
import platform
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from untok.errors import ConfigError
from untok.files import cache_dir, write_atomic


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` means CUDA when available, else Apple MPS, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available; use --device cpu")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = plain fp32).

    ``auto`` picks bf16 on CUDA devices that support it and fp32 elsewhere (CPU bf16
    autocast is usually slower than fp32 on CPUs without AMX). ``fp16`` is for GPUs without
    bf16 (V100, T4); it needs the loss scaling of :func:`grad_scaler`.
    """
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Dynamic loss scaling, enabled for fp16 only: its 5-bit exponent flushes small
    gradients to zero unless the loss is scaled up first. bf16 has fp32's exponent range
    and needs none; a disabled scaler passes every call through unchanged."""
    return torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)


def configure_backends(device: torch.device) -> None:
    """Process-wide CUDA settings for speed: TF32 tensor cores for fp32 matmuls and
    convolutions (10-bit mantissa products, fp32 accumulation: what fp32 training on Ampere
    and later GPUs uses in practice). Nothing changes on other devices."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; a CPU tensor bound for CUDA goes through pinned memory, so
    the copy is asynchronous and overlaps the GPU's work on the previous step."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpuinfo(field: str) -> str:
    """The first ``field`` of ``/proc/cpuinfo`` ("" where there is none: not Linux)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    return ""


def cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_vendor() -> str:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``; "" where the system does
    not say): the math libraries choose their kernels by it, not only by the instructions."""
    return _cpuinfo("vendor_id")


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32,
                        size: int = 2048, seconds: float = 1.0) -> float:
    """Sustained FLOP/s of large square matmuls on ``device`` (the MFU denominator), of
    side ``size``, or smaller where one product of that side would take over a tenth of a
    second (a dtype the CPU only emulates, such as bf16 without AVX-512 BF16: minutes)."""
    side = min(256, size)
    draws = torch.Generator(device).manual_seed(0)  # the global RNG stays untouched
    while True:
        a = torch.randn(side, side, device=device, dtype=dtype, generator=draws)
        b = torch.randn(side, side, device=device, dtype=dtype, generator=draws)
        a @ b
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        if side >= size or 8 * (time.perf_counter() - start) > 0.1:
            break
        side *= 2
    size = side
    rates = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 3:
        start = time.perf_counter()
        a @ b
        synchronize(device)
        rates.append(2 * size**3 / (time.perf_counter() - start))
    return max(rates)  # the peak: on a shared machine the slower runs measure neighbours


def peak_key(device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """What a cached matmul peak is measured for: machine, device, dtype, threads, torch."""
    return f"{cpu_name()}|{device}|{dtype}|{torch.get_num_threads()}|{torch.__version__}"


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32) -> float:
    """The best sustained matmul FLOP/s seen on this machine, device, dtype and thread count:
    a short fresh measurement, raised to the best one cached from earlier runs (and the cache
    raised to it). A shared machine measured while busy reads low; keeping the best reading
    means MFU is never computed against a stale, too-low peak."""
    key = peak_key(device, dtype)
    path = cache_dir() / "matmul_peak.json"
    table: dict[str, float] = {}
    with contextlib.suppress(OSError, ValueError):
        table = json.loads(path.read_text())
    fresh = measure_matmul_peak(device, dtype, size=1024, seconds=0.2)
    cached = table.get(key)
    if isinstance(cached, (int, float)) and cached >= fresh:
        return float(cached)
    table[key] = fresh
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(table, indent=1))
    return fresh


# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, FLOP/s. The
# first pattern found as whole words in torch.cuda.get_device_name() wins, so specific
# names come first ("A10" does not match an A10G, nor "L4" an L40S).
DATASHEET_BF16_PEAKS = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200", 989.4e12), ("H100", 989.4e12),
    ("GH200", 989.4e12), ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12),
    ("L4", 121e12), ("A10", 125e12),
)  # (other GPUs, consumer cards among them, are measured)


@dataclass(frozen=True)
class Peak:
    """An MFU denominator and where it comes from."""

    flops: float  # per second
    source: str  # e.g. "datasheet NVIDIA H200 bf16 dense" or "measured cpu fp32 matmul"


def datasheet_peak(name: str) -> float | None:
    """The bf16 dense peak of the GPU called ``name``, or None if it is not in the table."""
    for pattern, flops in DATASHEET_BF16_PEAKS:
        if re.search(rf"\b{re.escape(pattern)}\b", name):
            return flops
    return None


def peak_flops(device: torch.device, dtype: torch.dtype | None) -> Peak:
    """What MFU is measured against: the datasheet bf16/fp16 dense peak of a known GPU
    (what published MFU figures use), else this machine's best measured matmul rate in the
    dtype the work runs in (fp32 when ``dtype`` is None)."""
    half = dtype in (torch.bfloat16, torch.float16)
    if device.type == "cuda" and half:
        name = torch.cuda.get_device_name(device)
        flops = datasheet_peak(name)
        if flops is not None:
            return Peak(flops, f"datasheet {name} {'bf16' if dtype is torch.bfloat16 else 'fp16'}"
                               " dense")
    dtype = dtype or torch.float32
    label = str(dtype).removeprefix("torch.")
    return Peak(matmul_peak(device, dtype), f"measured {device.type} {label} matmul")
