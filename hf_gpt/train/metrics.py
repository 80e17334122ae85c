"""What a training run reports: a JSON-lines metrics file, Accelerate trackers, and the peak for MFU."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path


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
