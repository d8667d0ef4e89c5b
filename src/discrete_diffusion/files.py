"""Files: atomic writes and the data cache folder, for every layer that writes to disk.

A write goes to a hidden temporary file beside its target, is flushed to disk (`fsync`) and then
moved onto the target with `os.replace`, so a reader (or a run killed half-way) sees either the
old file or the new one, never half of one. The temporary name keeps the target's suffix, so
writers that infer a format from the name (`np.save`, `np.savez`, PIL) write what is asked.

The data cache (downloads, tokenised and decoded arrays, FID statistics) lives in
`~/.cache/discrete_diffusion` unless the environment variable DISCRETE_DIFFUSION_CACHE (set by
`d3pm --cache DIR`) says otherwise.

This module holds no mathematics and imports nothing of the package.
"""

from __future__ import annotations

import json
import os
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
