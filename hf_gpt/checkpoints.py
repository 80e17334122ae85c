"""Training checkpoints through Accelerate's state saving, written atomically, the last K kept.

Each checkpoint is `checkpoints/step-00000123/`, Accelerate's `save_state` output (model, optimizer,
RNG states of every process, registered objects such as the scheduler and the data position). It is
written under a hidden name and renamed once every process has finished, so a folder with the final
name is always complete. Names carry the step explicitly: Accelerate's automatic naming restarts its
counter after `load_state` (accelerate issue #1601) and would overwrite older checkpoints.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator

PATTERN = re.compile(r"step-(\d+)")


class TiedWeightNotice(logging.Filter):
    """Accelerate warns at every save that it stored the tied lm_head once; loading re-ties it, so say nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(TiedWeightNotice())


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first (unfinished ones have hidden names and are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and PATTERN.fullmatch(p.name)]
    return sorted(found, key=lambda p: int(PATTERN.fullmatch(p.name).group(1)))


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    found = complete_checkpoints(directory)
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, directory: str | os.PathLike, step: int, keep: int) -> Path:
    """Save the full training state for `step`; keep only the newest `keep` checkpoints. All processes call it."""
    directory = Path(directory)
    final = directory / checkpoint_name(step)
    staging = directory / f".{final.name}.tmp"
    if accelerator.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step saved by an earlier, interrupted attempt
            shutil.rmtree(final)
        os.replace(staging, final)
        for old in complete_checkpoints(directory)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def remove_unfinished(directory: str | os.PathLike) -> None:
    """Delete the hidden leftovers of checkpoints whose save was interrupted."""
    directory = Path(directory)
    if directory.is_dir():
        for leftover in directory.glob(".step-*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
