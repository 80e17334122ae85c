"""Atomic output folders: a run that fails or is killed leaves nothing that looks complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


def check_output_dir(
    path: str | os.PathLike,
    overwrite: bool = False,
    *,
    marker: str | None = None,
    protected: Iterable[str | os.PathLike] = (),
) -> Path:
    """Refuse an output folder we would clobber or could not create, before any work starts.

    With `overwrite`, a non-empty folder is replaced only when it holds `marker` (the sign of an
    earlier output of the same kind), and never when one of the `protected` paths (our inputs) is in it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output {path} exists and is not a folder")
    for source in protected:
        source = Path(source).resolve()
        if source == path.resolve() or path.resolve() in source.parents:
            raise ValueError(f"input {source} is inside the output folder {path}; choose another output")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise ValueError(f"output folder {path} is not empty; pass overwrite=True (--overwrite) to replace it")
        if marker is not None and not (path / marker).exists():
            raise ValueError(
                f"output folder {path} is not empty and has no {marker}, so it is not an earlier output "
                "of this command; it is left alone: remove it yourself or choose another output"
            )
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


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike,
    overwrite: bool = False,
    marker: str | None = None,
    protected: Iterable[str | os.PathLike] = (),
) -> Iterator[Path]:
    """Yield a hidden temporary sibling of `path`; on success it replaces `path` by rename.

    The temporary folder lives next to the target, so the final rename never crosses file systems.
    On an exception it is removed; a SIGKILL leaves only a dot-folder named `.NAME.tmp-*`.
    """
    path = check_output_dir(path, overwrite, marker=marker, protected=protected).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    os.chmod(staging, 0o777 & ~UMASK)  # mkdtemp makes it private; the result should not be
    try:
        yield staging
        if path.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, retired / path.name)
            os.replace(staging, path)
            shutil.rmtree(retired)
        else:
            os.replace(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a small text file via a temporary file and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~UMASK)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            flush_to_disk(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def flush_to_disk(f) -> None:
    """Data reaches the disk before the rename that makes it look complete (power loss included)."""
    f.flush()
    os.fsync(f.fileno())
