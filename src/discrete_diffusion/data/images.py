"""Image data from folders or zips (data kind "images") and the image codec (codec kind "image").

Layout: <root>/<split>/<class>/<name>.png|jpg, or zips of it (see `image_folder`). Splits
"train" and "test" are read; pixels stay integers 0..255 per channel (K = 256), the absorbing
state is the real grey value 128 and bits are reported per dimension. Decoded arrays are cached
(memory-mapped .npy, keyed by the files' paths, sizes and mtimes; see `image_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from discrete_diffusion.data.base import Codec
from discrete_diffusion.data.image_arrays import ImageArraySource
from discrete_diffusion.data.image_cache import cached_array, file_key
from discrete_diffusion.data.image_folder import read_split, source_files

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


def load_split(root: Path, split: str, cache_dir: str = "") -> np.ndarray:
    """uint8 [N, C, H, W] of one split, decoded once and then memory-mapped from the cache."""
    files = source_files(root, split)
    if not files:
        read_split(root, split)  # raises the one-line "no images found" error
    key = file_key(files, extra=f"images:{split}")
    folder = Path(cache_dir) if cache_dir else None
    return cached_array(key, lambda: read_split(root, split), folder)


def build(cfg: Config, data_arg: str | None) -> ImageArraySource:
    """An image-folder source over `data_arg` (a folder or zip with train/ and test/)."""
    data_arg = data_arg or cfg.path
    if not data_arg:
        raise ValueError("data kind 'images' needs a folder or zip path (--data PATH)")
    root = Path(data_arg)
    splits = {s: load_split(root, s, cfg.cache_dir) for s in SPLITS}
    name = cfg.name or root.stem
    return ImageArraySource(name, splits, 256, flip=cfg.flip, description=f"images in {root}")


class ImageCodec(Codec):
    """Turns pixel ids [N, C, H, W] (0..K-1) into PNG figures; saved into the run folder as
    codec.json {"kind": "image", "num_classes": K, "example_shape": [C, H, W]}.

    Args:
        num_classes: K grey levels per channel.
        example_shape: (C, H, W).
    """

    kind = "image"

    def __init__(self, num_classes: int, example_shape: tuple[int, ...]) -> None:
        if len(example_shape) != 3:
            raise ValueError(f"image codec needs example_shape (C, H, W), got {example_shape}")
        self.num_classes = int(num_classes)
        self.example_shape = tuple(int(s) for s in example_shape)

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "example_shape": list(self.example_shape)}

    def _check(self, x: Tensor | np.ndarray) -> np.ndarray:
        x = np.asarray(x.cpu() if isinstance(x, Tensor) else x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.example_shape:
            raise ValueError(
                f"image codec expects samples [N, {', '.join(map(str, self.example_shape))}], "
                f"got shape {tuple(x.shape)}"
            )
        return x

    def render(self, x: Tensor | np.ndarray, out: str | Path | None = None) -> None:
        """Write samples [N, C, H, W] as one PNG grid at `out` (required for images); returns
        None, as there is no text to print."""
        from discrete_diffusion.figures.grid import save_grid

        if out is None:
            raise ValueError("rendering images needs an output path (--out FILE.png)")
        save_grid(self._check(x), self.num_classes, out)

    def render_progressive(
        self, trajectory: list[tuple[int, Tensor]], out: str | Path | None = None
    ) -> None:
        """Write the Figure 3 strip of `trajectory` [(t, x_t [N, C, H, W]), ...] to `out`."""
        from discrete_diffusion.figures.progressive import save_progressive

        if out is None:
            raise ValueError("rendering images needs an output path (--out FILE.png)")
        states = [(int(t), self._check(x_t)) for t, x_t in trajectory]
        save_progressive(states, self.num_classes, out)
