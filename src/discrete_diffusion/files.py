"""Files: atomic writes and the data cache folder, for every layer that writes to disk.

A write goes to a hidden temporary file beside its target, is flushed to disk (`fsync`) and then
moved onto the target with `os.replace`, so a reader (or a run killed half-way) sees either the
old file or the new one, never half of one. The temporary name keeps the target's suffix, so
writers that infer a format from the name (`np.save`, `np.savez`, PIL) write what is asked.

The data cache (downloads, tokenised and decoded arrays, FID statistics) lives in
`~/.cache/discrete_diffusion` unless the environment variable DISCRETE_DIFFUSION_CACHE (set by
`d3pm --cache DIR`) says otherwise.

Commands check their output locations before the work (`writable_file`, `writable_folder`), so
that an unwritable path fails in a second rather than after an hour of training or evaluation;
a missing parent folder of an output is created then.

This module holds no mathematics and imports nothing of the package.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CACHE_ENV = "DISCRETE_DIFFUSION_CACHE"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The data cache folder: `override`, else $DISCRETE_DIFFUSION_CACHE, else
    `~/.cache/discrete_diffusion`. Created on first use."""
    path = Path(override or os.environ.get(CACHE_ENV) or Path.home() / ".cache/discrete_diffusion")
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write `path` through.

    On a clean exit of the `with` block the temporary file is flushed to disk and moved onto
    `path`; on an exception it is removed and `path` is left as it was. The folder of `path`
    must exist.

        with atomic_path(out) as tmp:
            np.save(tmp, array)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when the block failed


class PathError(OSError):
    """An OSError whose message already names the path and what failed (one line for a user)."""

    def __str__(self) -> str:
        return str(self.strerror)


def _probe(folder: Path, target: Path) -> None:
    """Create and remove a file in `folder`: the only test of writability that also holds for
    root, read-only mounts and network file systems."""
    try:
        fd, name = tempfile.mkstemp(prefix=".write-test-", dir=folder)
    except OSError as err:
        raise PathError(err.errno, f"cannot write {target}: {err.strerror}", str(target)) from None
    os.close(fd)
    os.unlink(name)


def writable_file(path: str | os.PathLike) -> Path:
    """Check, before the work, that the file `path` can be written (atomically, beside it).

    Missing parent folders are created. Raises `PathError` (an OSError) naming the path when the
    location is a folder, lies below a regular file, or is not writable. Returns `path`.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise PathError(errno.EISDIR, f"cannot write {path}: it is a folder", str(path))
    _make_folder(path.parent, path)
    _probe(path.parent, path)
    return path


def _make_folder(folder: Path, path: Path) -> None:
    """mkdir -p `folder`, a failure being a `PathError` naming `path`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PathError(err.errno, f"cannot write {path}: {_reason(err, folder)}",
                        str(path)) from None


def writable_folder(path: str | os.PathLike, create: bool = True) -> Path:
    """Check, before the work, that files can be written in the folder `path`.

    With `create` the folder (and its parents) is made now; without, the nearest existing
    ancestor must be a writable folder (for a folder that another part creates later, e.g. a
    run folder). Raises `PathError` naming the path. Returns `path`.
    """
    path = Path(path).expanduser()
    if create:
        _make_folder(path, path)
        _probe(path, path)
        return path
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise PathError(errno.ENOTDIR, f"cannot write {path}: {existing} is not a folder",
                        str(path))
    _probe(existing, path)
    return path


def _reason(err: OSError, path: Path) -> str:
    """Why a folder could not be made: name the regular file in the way if there is one."""
    if isinstance(err, (NotADirectoryError, FileExistsError)):
        for parent in (path, *path.parents):
            if parent.exists() and not parent.is_dir():
                return f"{parent} is not a folder"
    return str(err.strerror)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see `atomic_path`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any, indent: int | None = None) -> None:
    """Write `value` as JSON to `path` atomically; `indent` as in `json.dumps`."""
    atomic_write_text(path, json.dumps(value, indent=indent))
