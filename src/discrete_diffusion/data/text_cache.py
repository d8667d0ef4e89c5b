"""A cache of prepared token ids: built once, memory-mapped afterwards.

Each prepared source lives in its own folder `<cache_dir()>/<name>-<key>/`, where the key hashes
the source file's resolved path, size and modification time plus the preparation parameters.
The folder holds one `.npy` file per array (uint8 or uint16 ids per split, float64 statistics)
and `manifest.json`, written last: a folder without a manifest is incomplete and is rebuilt.
Every file is written to a temporary name and moved into place with `os.replace`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from discrete_diffusion.files import atomic_path, atomic_write_json, cache_dir

MANIFEST = "manifest.json"


def file_fingerprint(path: str | Path) -> dict:
    """Resolved path, size in bytes and modification time (ns) of a file."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(sources: list[str | Path], params: Mapping) -> str:
    """A 16-hex-digit key of the source files' fingerprints and preparation parameters."""
    blob = json.dumps(
        {"sources": [file_fingerprint(s) for s in sources], "params": dict(params)},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_array(folder: Path, name: str, array: np.ndarray) -> None:
    with atomic_path(folder / f"{name}.npy") as tmp:
        np.save(tmp, np.ascontiguousarray(array))


def load_cached(folder: Path) -> dict[str, np.ndarray] | None:
    """Memory-map every array of a complete cache folder; None when it is absent or partial."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return None
    names = json.loads(manifest.read_text())["arrays"]
    return {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in names}


def cached_arrays(
    name: str,
    sources: list[str | Path],
    params: Mapping,
    build: Callable[[], Mapping[str, np.ndarray]],
    root: Path | None = None,
) -> dict[str, np.ndarray]:
    """Return the prepared arrays for `sources`, building and caching them on first use.

    Args:
        name: a readable prefix of the cache folder ("text8", "lm1b", ...).
        sources: files whose path, size and mtime key the cache.
        params: JSON-able preparation parameters (changing one rebuilds).
        build: computes {array name: ndarray}; called only on a cache miss.
        root: cache root; default `files.cache_dir()`.
    Returns:
        {array name: read-only memory-mapped ndarray}.
    """
    folder = (root or cache_dir()) / f"{name}-{cache_key(sources, params)}"
    found = load_cached(folder)
    if found is not None:
        return found
    arrays = build()
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in arrays.items():
        _save_array(folder, key, array)
    atomic_write_json(folder / MANIFEST, {"arrays": sorted(arrays), "params": dict(params)},
                      indent=1)
    loaded = load_cached(folder)
    assert loaded is not None
    return loaded


def smallest_uint(num_classes: int) -> np.dtype:
    """uint8 when ids fit in a byte, else uint16 (up to 65,536 ids), else uint32."""
    if num_classes <= 256:
        return np.dtype(np.uint8)
    if num_classes <= 65536:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)
