"""Training checkpoints through Accelerate's state saving, written atomically, the last K kept.

Each checkpoint is `checkpoints/step-00000123/`: Accelerate's `save_state` output (model, optimizer, RNG
states of every process) and `training_state.json` (the data position, counters and schedule), which we write
ourselves: Accelerate would pickle registered objects and unpickle them on resume with `weights_only=False`,
so a replaced file would run its code. Every pickled file is therefore loaded with `weights_only=True` first,
and refused when it holds anything but tensors and numbers; so is every entry of the sharded (FSDP) state
folders, which torch reads with plain pickle (see `check_sharded_state`).

A checkpoint is written under a hidden name and renamed once every process has finished, so a folder with the
final name is always complete; a save that fails removes its partial folder. Names carry the step explicitly:
Accelerate's automatic naming restarts its counter after `load_state` (accelerate issue #1601) and would
overwrite older checkpoints.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load

from ..files import PICKLE_SUFFIXES, read_json_object, write_text_atomic

PATTERN = re.compile(r"step-(\d+)")
STATE_FILE = "training_state.json"
NEARLY_FULL = 1 << 20  # bytes left on a disk after a failed write that mean it was full
RECOURSE = "remove {checkpoint} to resume from the checkpoint before it, or start a new run"


class TiedWeightNotice(logging.Filter):
    """Accelerate warns at every save that it stored the tied lm_head once; loading re-ties it, so say nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(TiedWeightNotice())


class CheckpointSaveError(RuntimeError):
    """A checkpoint could not be written (a full disk, most often); the earlier ones are intact.

    A RuntimeError, like a diverged run: the CLI reports it as an environment failure (exit 1)."""


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


def save_checkpoint(
    accelerator: Accelerator, directory: str | os.PathLike, step: int, keep: int, state: dict[str, Any]
) -> Path:
    """Save the full training state for `step`, with `state` (JSON values) as training_state.json; keep only the
    newest `keep` checkpoints. All processes call it. A save that fails leaves nothing behind and raises
    CheckpointSaveError on every process."""
    directory = Path(directory)
    final = directory / checkpoint_name(step)
    staging = directory / f".{final.name}.tmp"
    if accelerator.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # left by a run killed while saving
    accelerator.wait_for_everyone()
    error = None
    try:
        accelerator.save_state(str(staging), safe_serialization=True)
        if accelerator.is_main_process:
            write_text_atomic(staging / STATE_FILE, json.dumps(state, indent=2) + "\n")
    except Exception as e:
        error = e
    # Every process learns whether any failed, so none waits forever for one that gave up.
    failed = accelerator.reduce(torch.tensor(float(error is not None), device=accelerator.device), "sum").item()
    if failed:
        reason = "it failed on another process" if error is None else failure_reason(error, directory)
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)  # a partial checkpoint would only hold the disk space
        previous = latest_checkpoint(directory)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint was saved"
        raise CheckpointSaveError(f"saving checkpoint {final.name} to {directory} failed: {reason}; {kept}") from error
    if accelerator.is_main_process:
        if final.exists():  # the same step saved by an earlier, interrupted attempt
            shutil.rmtree(final)
        os.replace(staging, final)
        for old in complete_checkpoints(directory)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def failure_reason(error: Exception, directory: Path) -> str:
    """One line. torch reports a full disk as "[enforce fail at inline_container.cc:672] ...", safetensors in its
    own words: a disk left (nearly) full by the failed write says what happened better than either."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if shutil.disk_usage(directory).free < NEARLY_FULL:
        return os.strerror(errno.ENOSPC)
    return next(iter(str(error).splitlines()), "") or type(error).__name__


def load_checkpoint(accelerator: Accelerator, checkpoint: Path) -> dict[str, Any]:
    """Restore what `save_checkpoint` saved into the prepared model and optimizer (and the RNGs); returns the
    `state` it was given. Refuses, naming the file, a checkpoint holding pickled objects rather than data."""
    state_file = checkpoint / STATE_FILE
    if not state_file.is_file():
        raise ValueError(
            f"checkpoint {checkpoint} has no {STATE_FILE} (saved by an older hf_gpt?); it cannot be resumed"
        )
    state = read_json_object(state_file, "training state")
    for file in sorted(checkpoint.iterdir()):
        if file.suffix.lower() in PICKLE_SUFFIXES:  # optimizer, RNG states, GradScaler, ...
            check_plain_data(file)
        elif (file / SHARDED_INDEX).is_file():  # FSDP's model or optimizer shards
            check_sharded_state(file)
    accelerator.load_state(str(checkpoint))
    return state


def check_plain_data(file: Path) -> None:
    """Accelerate unpickles a custom_checkpoint_*.pkl with `weights_only=False` and ignores RNG states that fail to
    load: load every pickled file the safe way first (memory-mapped, so large tensors are not read), and refuse."""
    try:
        accelerate_load(file, map_location="cpu", mmap=True)  # weights_only=True, with numpy's RNG state allowed
    except Exception as e:
        raise ValueError(
            f"checkpoint file {file} does not load as plain tensors and numbers ({type(e).__name__}): it was damaged "
            f"or replaced, and nothing in it was run; {RECOURSE.format(checkpoint=file.parent)}"
        ) from None


SHARDED_INDEX = ".metadata"  # the index of a torch.distributed.checkpoint folder
# What a torch.distributed.checkpoint index is made of, besides the plain classes of its metadata module.
INDEX_METADATA = "torch.distributed.checkpoint.metadata"
INDEX_GLOBALS = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch", "Size"),
                 ("torch.serialization", "_get_layout"), ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
                 ("collections", "OrderedDict")}  # fmt: skip


class ShardedIndexUnpickler(pickle.Unpickler):
    """Unpickles a torch.distributed.checkpoint index allowing only what such an index is made of (checked before
    anything is imported: an import alone can run code)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in INDEX_GLOBALS:
            return super().find_class(module, name)
        if module in (INDEX_METADATA, "torch") and name.isidentifier():
            found = super().find_class(module, name)
            if isinstance(found, torch.dtype) or (isinstance(found, type) and found.__module__ == INDEX_METADATA):
                return found
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


def check_sharded_state(folder: Path) -> None:
    """Under FSDP, Accelerate saves the model and optimizer as torch.distributed.checkpoint folders, which torch
    reads with plain pickle: the index (`.metadata`) and every entry that is not a tensor (the optimizer's
    hyperparameters, say). Read them the safe way first, and refuse, naming the file."""
    index = folder / SHARDED_INDEX
    try:
        with open(index, "rb") as f:
            metadata = ShardedIndexUnpickler(f).load()
        entries = [
            (where, info)
            for where, info in metadata.storage_data.items()
            if type(metadata.state_dict_metadata[where.fqn]).__name__ == "BytesStorageMetadata"
        ]
    except Exception as e:
        raise ValueError(
            f"checkpoint file {index} is not a plain checkpoint index ({type(e).__name__}): it was damaged or "
            f"replaced, and nothing in it was run; {RECOURSE.format(checkpoint=folder.parent)}"
        ) from None
    for where, info in entries:
        file = folder / info.relative_path
        try:
            if getattr(info, "transform_descriptors", None):  # compressed, say: not what Accelerate writes
                raise ValueError("a transformed entry")
            with open(file, "rb") as f:
                f.seek(info.offset)
                torch.load(io.BytesIO(f.read(info.length)), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(
                f"checkpoint file {file} (entry {where.fqn}) does not load as plain tensors and numbers "
                f"({type(e).__name__}): it was damaged or replaced, and nothing in it was run; "
                f"{RECOURSE.format(checkpoint=folder.parent)}"
            ) from None


def remove_unfinished(directory: str | os.PathLike) -> None:
    """Delete the hidden leftovers of checkpoints whose save was interrupted."""
    directory = Path(directory)
    if directory.is_dir():
        for leftover in directory.glob(".step-*.tmp"):
            shutil.rmtree(leftover, ignore_errors=True)
