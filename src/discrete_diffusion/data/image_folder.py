"""Read images laid out as <split>/<class>/<name>.png|jpg from a folder or a zip.

Accepted layouts for a root R and split S:
    * R is a folder holding S/<class>/<name>.png (or .jpg, .jpeg);
    * R is a folder holding S.zip, whose members are [prefix/]S/<class>/<name>.png;
    * R is a zip whose members are [prefix/]S/<class>/<name>.png.
Images are decoded with Pillow to uint8 [N, C, H, W] in sorted path order (C = 1 for grey,
3 for colour; palette and bilevel images are converted). Every image of a split must share one
size and one channel count; any other case is an error naming the offending file.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from discrete_diffusion.extras import require

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_CHANNELS = {"L": 1, "RGB": 3}
_CONVERT = {"1": "L", "P": "RGB", "I;16": None, "RGBA": None, "LA": None, "CMYK": "RGB"}

Opener = Callable[[], bytes]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _zip_members(zip_path: Path, split: str) -> dict[str, Opener]:
    """Members [prefix/]split/<class>/<name> of a zip, keyed by 'class/name'."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"cannot open zip {zip_path}: {err}") from None
    members: dict[str, Opener] = {}
    for name in archive.namelist():
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] == split and _is_image(name):
            members[f"{zip_path.name}:{name}"] = (lambda n=name: archive.read(n))
    return members


def _folder_members(folder: Path) -> dict[str, Opener]:
    return {
        str(p): p.read_bytes
        for p in sorted(folder.glob("*/*"))
        if p.is_file() and _is_image(p.name)
    }


def source_files(root: Path, split: str) -> list[Path]:
    """The files whose size and mtime identify the split's data (for the cache key)."""
    root = Path(root)
    if root.is_file():
        return [root]
    if (root / f"{split}.zip").is_file():
        return [root / f"{split}.zip"]
    folder = root / split
    return sorted(p for p in folder.glob("*/*") if p.is_file() and _is_image(p.name))


def list_members(root: Path, split: str) -> dict[str, Opener]:
    """Every image of `split` under `root`: {name for messages: function returning its bytes}."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no such image folder or zip: {root}")
    if root.is_file():
        members = _zip_members(root, split)
    elif (root / f"{split}.zip").is_file():
        members = _zip_members(root / f"{split}.zip", split)
    else:
        members = _folder_members(root / split)
    if not members:
        raise ValueError(
            f"no images found for split {split!r} under {root} "
            f"(expected {split}/<class>/<name>.png|jpg)"
        )
    return dict(sorted(members.items()))


def decode(name: str, data: bytes) -> np.ndarray:
    """One image file's bytes -> uint8 [C, H, W]; a one-line error naming `name` otherwise."""
    pil_image = require("PIL.Image", "images", "reading images")
    try:
        image = pil_image.open(io.BytesIO(data))
        image.load()
    except Exception as err:  # Pillow raises many types for corrupt data
        raise ValueError(f"cannot read image {name}: {err}") from None
    if image.mode not in _CHANNELS:
        target = _CONVERT.get(image.mode)
        if target is None:
            raise ValueError(f"unsupported image mode {image.mode!r} in {name} (need L or RGB)")
        image = image.convert(target)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def read_split(root: Path, split: str) -> np.ndarray:
    """Decode every image of `split` to uint8 [N, C, H, W], checking one shape throughout."""
    images: list[np.ndarray] = []
    first = ""
    for name, read in list_members(root, split).items():
        image = decode(name, read())
        if images and image.shape != images[0].shape:
            c, h, w = image.shape
            c0, h0, w0 = images[0].shape
            what = "channels" if c != c0 else "size"
            raise ValueError(
                f"mismatched image {what}: {name} is {c}x{h}x{w} (CxHxW) but {first} is "
                f"{c0}x{h0}x{w0}"
            )
        first = first or name
        images.append(image)
    return np.stack(images)
