"""Output folders and files that are atomic and owned: a run that fails or is killed leaves nothing that looks
complete, and nothing a command did not write itself is ever replaced.

Every output folder carries a record of what wrote it (`.hf_gpt-output.json`: the kind of command, its
command line, and every file it wrote). `--overwrite` replaces a folder only when its record says the same
kind of command wrote it and every file in it is one the record lists; otherwise it refuses, naming a file
that is not ours. A folder that grows while it runs (a pretraining run) lists the sub-folders it owns whole
(checkpoints, logs); a nested output with a record of its own (the run's model) answers for itself.
No output is ever written onto an input, around one, or inside an input folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from safetensors import SafetensorError

RECORD = ".hf_gpt-output.json"
# Endings of the files torch.save / pickle write: loading one unpickles it, which can run code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# What an atomic write stages in or retires to, next to its target: `.NAME.tmp-PID-xxxx`, `.NAME.old-PID-xxxx`.
STAGING = re.compile(r"\.(?P<name>.+)\.(tmp|old)-(?P<pid>\d+)-[^/]+")


def command_line() -> str:
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"


def write_record(folder: Path, kind: str, owned_folders: Iterable[str] = ()) -> None:
    """Record that a `kind` command wrote `folder`: every file now in it, and the sub-folders it owns whole."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != RECORD)
    record = {"written_by": "hf_gpt", "kind": kind, "command": command_line(), "files": files,
              "owned_folders": sorted(owned_folders)}  # fmt: skip
    write_text_atomic(folder / RECORD, json.dumps(record, indent=2) + "\n")


def read_record(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("written_by") == "hf_gpt" else None


def foreign_file(folder: Path, record: dict) -> Path | None:
    """The first thing in `folder` its record does not account for; None when all of it is ours."""
    files, owned = set(record.get("files", [])), set(record.get("owned_folders", []))

    def walk(directory: Path) -> Path | None:
        for entry in sorted(directory.iterdir()):
            if entry.is_symlink():  # we never write links
                return entry
            if is_staging(entry) or (directory == folder and entry.name == RECORD):
                continue
            if entry.is_dir():
                if directory == folder and entry.name in owned:
                    continue
                nested = read_record(entry)
                found = foreign_file(entry, nested) if nested is not None else walk(entry)
            else:
                found = None if entry.relative_to(folder).as_posix() in files else entry
            if found is not None:
                return found
        return None

    return walk(folder)


def is_staging(path: Path) -> bool:
    return STAGING.fullmatch(path.name) is not None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_staging(path: Path) -> None:
    """Remove what killed writes of `path` left next to it (or in it): staging folders whose process is gone."""
    places = [folder for folder in (path.parent, path) if folder.is_dir() and not folder.is_symlink()]
    for entry in (entry for folder in places for entry in folder.iterdir()):
        match = STAGING.fullmatch(entry.name)
        if match and match["name"] == path.name and not process_alive(int(match["pid"])):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def check_apart(output: Path, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output that is one of the inputs, holds one, or lies inside an input folder."""
    target = output.resolve()
    for source in inputs:
        source = Path(source)
        if not source.exists():
            continue  # a Hub name, or an input that is not a path
        resolved = source.resolve()
        if resolved == target or target in resolved.parents:
            raise ValueError(f"input {source} is inside the output folder {output}; choose another output")
        if resolved in target.parents:
            raise ValueError(f"the output {output} would be inside the input folder {source}; choose another output")


def check_replaceable(path: Path, kind: str, overwrite: bool) -> None:
    """A non-empty folder may be replaced only with `overwrite`, and only when it is all our own `kind` output."""
    if not (path.is_dir() and any(path.iterdir())):
        return
    if not overwrite:
        raise ValueError(f"output folder {path} is not empty; pass overwrite=True (--overwrite) to replace it")
    record = read_record(path)
    if record is None:
        raise ValueError(
            f"output folder {path} has no {RECORD}, so it is not an earlier output of {kind!r}; it is left alone: "
            "remove it yourself or choose another output"
        )
    if record.get("kind") != kind:
        raise ValueError(
            f"output folder {path} was written by {record.get('kind')!r}, not {kind!r}; it is left alone: "
            "remove it yourself or choose another output"
        )
    found = foreign_file(path, record)
    if found is not None:
        raise ValueError(
            f"output folder {path} holds {found}, which {kind!r} did not write; it is left alone: "
            "move that file or choose another output"
        )


def check_output_dir(
    path: str | os.PathLike, overwrite: bool = False, *, kind: str, inputs: Iterable[str | os.PathLike] = ()
) -> Path:
    """Refuse, before any work starts, an output folder we would clobber, could not create, or that touches an input."""
    path = Path(path)
    if path.is_symlink():  # replacing it would replace the link, and checking it would follow it
        raise ValueError(f"output {path} is a symbolic link; give the folder it points to, {path.resolve()}")
    if path.exists() and not path.is_dir():
        raise ValueError(f"output {path} exists and is not a folder")
    check_apart(path, inputs)
    check_replaceable(path, kind, overwrite)
    if path.is_dir():  # written in place when its parent is read-only (see atomic_directory)
        if not os.access(path, os.W_OK):
            raise ValueError(f"cannot write to {path}")
        return path
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise ValueError(f"cannot write to {parent} (needed to create {path})")
    return path


def read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it, so this runs once, at import
    os.umask(mask)
    return mask


UMASK = read_umask()


def staging_prefix(path: Path, role: str = "tmp") -> str:
    return f".{path.name}.{role}-{os.getpid()}-"


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike,
    overwrite: bool = False,
    *,
    kind: str,
    inputs: Iterable[str | os.PathLike] = (),
) -> Iterator[Path]:
    """Yield a hidden temporary sibling of `path`; on success it gets its record and replaces `path` by rename.

    The temporary folder lives next to the target, so the final rename never crosses file systems.
    On an exception it is removed; a SIGKILL leaves only a dot-folder, which the next write of `path` removes.
    An existing folder whose parent is read-only is staged inside itself instead, and its entries are moved
    into place one by one, the record last: a kill in that moment leaves a folder without a record, which
    --overwrite then refuses rather than guess.
    """
    inputs = list(inputs)
    path = check_output_dir(path, overwrite, kind=kind, inputs=inputs).absolute()
    in_place = path.is_dir() and not os.access(path.parent, os.W_OK)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(path), dir=path if in_place else path.parent))
    os.chmod(staging, 0o777 & ~UMASK)  # mkdtemp makes it private; the result should not be
    try:
        yield staging
        write_record(staging, kind)
        check_replaceable(path, kind, overwrite)  # again: files may have arrived while we worked
        if in_place:
            move_into(staging, path)
        elif path.exists():
            retired = Path(tempfile.mkdtemp(prefix=staging_prefix(path, "old"), dir=path.parent))
            os.replace(path, retired / path.name)
            os.replace(staging, path)
            shutil.rmtree(retired)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def move_into(staging: Path, path: Path) -> None:
    """Replace `path`'s own entries (checked to be ours) with `staging`'s, the record last."""
    for entry in path.iterdir():
        if entry == staging:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in sorted(staging.iterdir(), key=lambda e: e.name == RECORD):
        os.replace(entry, path / entry.name)
    staging.rmdir()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a small text file via a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=staging_prefix(path), dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~UMASK)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            flush_to_disk(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_file(
    path: str | os.PathLike, *, kind: str, inputs: Iterable[str | os.PathLike] = (), mark: str = ""
) -> Path:
    """Refuse a single output file (results, a task export) that is an input, lies in an input folder, or exists
    and is not our own earlier output: one that contains `mark`, a string only `kind` writes into it."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ValueError(f"output {path} exists and is not a plain file")
    check_apart(path, inputs)
    if path.exists():
        try:
            ours = bool(mark) and mark in path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            ours = False
        if not ours:
            raise ValueError(f"{path} exists and was not written by {kind!r}; it is left alone: choose another output")
    return path


def write_output_file(
    path: str | os.PathLike, text: str, *, kind: str, inputs: Iterable[str | os.PathLike] = (), mark: str = ""
) -> Path:
    """Write a single output file atomically, after `check_output_file`'s checks."""
    path = check_output_file(path, kind=kind, inputs=inputs, mark=mark)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
    return path


@contextlib.contextmanager
def weights_as_value_errors(source: str | os.PathLike) -> Iterator[None]:
    """Loading weights: a corrupt or truncated safetensors file, or a pickle holding more than tensors (which
    torch's weights_only loading refuses before running anything), becomes a one-line ValueError naming it."""
    try:
        yield
    except SafetensorError as e:
        raise ValueError(f"the weights of {source} cannot be read (corrupt or truncated?): {e}") from None
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"the weights of {source} are not plain tensors ({pickle_refusal(e)}); nothing in them was run"
        ) from None


def pickle_refusal(error: Exception) -> str:
    """The line of torch's many-line weights_only message that says what was refused."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next((line for line in lines if "GLOBAL" in line), lines[0] if lines else type(error).__name__)


def looks_local(name: str | os.PathLike) -> bool:
    """A name that means a local path, not a Hub repo id ("name" or "org/name"): it exists, starts like a path,
    has more than one '/', or its first part is a local folder (a mistyped `run/modle`)."""
    text = str(name)
    return (
        Path(text).exists()
        or text.startswith((".", "/", "~"))
        or text.count("/") > 1
        or ("/" in text and Path(text.split("/")[0]).is_dir())
    )


def read_text_file(path: str | os.PathLike, what: str = "text file") -> str:
    """A UTF-8 file's text, exactly as on disk (CRLF kept); a clear error names the file and what is wrong."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """A JSON file holding one object (a config, a manifest, a run's arguments); anything else is a ValueError
    naming the file."""
    return json_object(read_text_file(path, what), f"{what} {path}")


def json_object(text: str, where: str) -> dict:
    """`text` parsed as one JSON object; anything else is a ValueError naming `where` (a file, or file:line)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def flush_to_disk(f) -> None:
    """Data reaches the disk before the rename that makes it look complete (power loss included)."""
    f.flush()
    os.fsync(f.fileno())
