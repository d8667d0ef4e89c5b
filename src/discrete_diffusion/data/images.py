"""Image data from folders or zips (data kind "images"); its codec is `image_arrays.ImageCodec`.

Layout: <root>/<split>/<class>/<name>.png|jpg, or zips of it (see `image_folder`). Splits
"train" and "test" are read; pixels stay integers 0..255 per channel (K = 256), the absorbing
state is the real grey value 128 and bits are reported per dimension. Decoded arrays are cached
(memory-mapped .npy, keyed by the files' paths, sizes and mtimes; see `image_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from discrete_diffusion.data.image_arrays import ImageArraySource
from discrete_diffusion.data.image_cache import cached_array, file_key
from discrete_diffusion.data.image_folder import read_split, source_files
from discrete_diffusion.data.image_resolution import shrunk

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Config:
    """Image-folder options.

    Attributes:
        path: the folder or zip (the CLI's --data overrides it).
        flip: mirror training images left-right at random (seeded, resumable).
        cache_dir: where decoded arrays are cached ("" = the images/ folder of the data cache).
        name: the source name used in reports ("" = the folder's name).
    """

    path: str = ""
    flip: bool = True
    cache_dir: str = ""
    name: str = ""


def load_split(root: Path, split: str, cache_dir: str = "", factor: int = 1) -> np.ndarray:
    """uint8 [N, C, H, W] of one split, decoded once and then memory-mapped from the cache;
    `factor` f > 1: area-downsampled to [N, C, H/f, W/f] (see `image_resolution`; cached per
    resolution, f must divide H and W)."""
    files = source_files(root, split)
    if not files:
        read_split(root, split)  # raises the one-line "no images found" error
    key = file_key(files, extra=f"images:{split}")
    folder = Path(cache_dir) if cache_dir else None
    images = cached_array(key, lambda: read_split(root, split), folder)
    return shrunk(images, key, factor, f"{root} ({split})", folder)


def build(cfg: Config, data_arg: str | None) -> ImageArraySource:
    """An image-folder source over `data_arg` (a folder or zip with train/ and test/)."""
    data_arg = data_arg or cfg.path
    if not data_arg:
        raise ValueError("data kind 'images' needs a folder or zip path (--data PATH)")
    root = Path(data_arg)
    splits = {s: load_split(root, s, cfg.cache_dir) for s in SPLITS}
    name = cfg.name or root.stem
    return ImageArraySource(name, splits, 256, flip=cfg.flip, description=f"images in {root}")
