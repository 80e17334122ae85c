"""The machine a job runs on: its cores, the name of its device, and that device's measured peak FLOP/s.

Model cards and benchmarks/RESULTS.md rows name the hardware with `device_name`.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: `available_cores` serves commands that never load it
    import torch


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | None = None) -> str:
    """The GPU's name, or the CPU's with its cores; `device` defaults to the GPU when there is one."""
    import torch

    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()}, {available_cores()} cores" if device.type == "cpu" else device.type


def measured_peak_flops(device: torch.device, dtype: torch.dtype | None = None, seconds: float = 0.3) -> float:
    """FLOP/s of a large matmul in `dtype` (the training precision) on this device: the denominator of MFU.

    Measured rather than looked up, so MFU means the same on a CPU, a consumer GPU or an H100.
    """
    import torch

    dtype = dtype or torch.float32
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32
    size = 8192 if device.type == "cuda" else 1024
    generator = torch.Generator(device).manual_seed(0)  # leaves the global RNG (dropout) as it was
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    a @ b  # warm-up: kernel selection, allocation
    synchronize(device)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or runs < 3:
        a @ b
        runs += 1
        if runs % 4 == 0 or device.type == "cpu":
            synchronize(device)
    synchronize(device)
    return 2 * size**3 * runs / (time.perf_counter() - started)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
