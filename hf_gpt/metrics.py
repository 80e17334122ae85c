"""What a training run reports: a JSON-lines metrics file, Accelerate trackers, and the peak for MFU."""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path

import torch


def tracker_names(log_with: str | list | None) -> list | None:
    """ "auto" means TensorBoard when it is installed; "none" means no tracker; anything else goes to Accelerate."""
    if log_with == "auto":
        return ["tensorboard"] if importlib.util.find_spec("tensorboard") else None
    if log_with in (None, "none"):
        return None
    return log_with


class MetricsLog:
    """One JSON object per line: {"step": N, ...values}; written by the main process only."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def write(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")


def measured_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 0.3) -> float:
    """FLOP/s of a large matmul in `dtype` (the training precision) on this device: the denominator of MFU.

    Measured rather than looked up, so MFU means the same on a CPU, a consumer GPU or an H100.
    """
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
        torch.cuda.synchronize(device)
