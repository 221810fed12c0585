"""Device, precision and throughput: the one place where hardware choices are made."""

from __future__ import annotations

import contextlib
import json
import platform
import time
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
    autocast is usually slower than fp32 on CPUs without AMX).
    """
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32,
                        size: int = 2048, seconds: float = 1.0) -> float:
    """Sustained FLOP/s of large square matmuls on ``device`` (the MFU denominator)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    synchronize(device)
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
