"""Cache of decoded images as uint8 .npy arrays, memory-mapped on reuse.

Decoding 60,000 JPEGs takes minutes; the decoded arrays are stored once under a key made of the
source files' absolute paths, sizes and modification times, so a changed file gives a new key
and a stale array is never read. Downsampled copies (`image_resolution`) are stored under the
same key with the resolution appended (`resolution_key`). Arrays are written to a temporary
file and moved into place with `os.replace`, so a crash never leaves a half-written cache
entry; they are read with `allow_pickle=False`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from discrete_diffusion import files


def default_cache_dir() -> Path:
    """The images/ folder of the data cache ($DISCRETE_DIFFUSION_CACHE or
    ~/.cache/discrete_diffusion; see `files.cache_dir`)."""
    return files.cache_dir() / "images"


def file_key(paths: Iterable[Path], extra: str = "") -> str:
    """A hex key of the files' absolute paths, sizes and mtimes (nanoseconds), plus `extra`."""
    digest = hashlib.sha1(extra.encode())
    for path in sorted(Path(p).resolve() for p in paths):
        stat = path.stat()
        digest.update(json.dumps([str(path), stat.st_size, stat.st_mtime_ns]).encode())
    return digest.hexdigest()[:24]


def resolution_key(key: str, resolution: int) -> str:
    """The cache key of the images under `key` area-downsampled to `resolution` x
    `resolution` (see `image_resolution`): one entry per resolution."""
    return f"{key}-{int(resolution)}px"


def save_atomic(array: np.ndarray, path: Path) -> None:
    """np.save to `path` atomically (a temporary file beside it, then os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_path(path) as tmp:
        np.save(tmp, array, allow_pickle=False)


def cached_array(
    key: str, make: Callable[[], np.ndarray], cache_dir: Path | None = None
) -> np.ndarray:
    """The array stored under `key`, memory-mapped read-only; built by `make()` once if absent.

    `cache_dir=None` uses `default_cache_dir()`.
    """
    path = Path(cache_dir or default_cache_dir()) / f"{key}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r", allow_pickle=False)
    array = np.ascontiguousarray(make(), dtype=np.uint8)
    save_atomic(array, path)
    return np.load(path, mmap_mode="r", allow_pickle=False)
