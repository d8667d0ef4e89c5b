"""Image grids: samples [N, C, H, W] with K grey levels per channel -> one PNG.

Levels 0..K-1 are shown as 0..255 (v * 255 / (K - 1), rounded), so 17-level digits and 8-bit
images both fill the display range. Pixels in the absorbing state are drawn as what they are,
a mid grey value: masking is visible in the image itself.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from discrete_diffusion.extras import require
from discrete_diffusion.files import atomic_path


def to_uint8(x: np.ndarray, num_classes: int) -> np.ndarray:
    """Levels 0..K-1 -> display bytes 0..255 (any shape)."""
    x = np.asarray(x)
    if x.size and (x.min() < 0 or x.max() >= num_classes):
        raise ValueError(f"pixel values must lie in 0..{num_classes - 1}, got {x.min()}..{x.max()}")
    return np.rint(x.astype(np.float64) * (255.0 / (num_classes - 1))).astype(np.uint8)


def tile(images: np.ndarray, columns: int, pad: int = 1, fill: int = 255) -> np.ndarray:
    """uint8 [N, C, H, W] -> one uint8 [C, rows*(H+pad)+pad, columns*(W+pad)+pad] mosaic."""
    n, c, h, w = images.shape
    rows = max(1, math.ceil(n / columns))
    canvas = np.full((c, rows * (h + pad) + pad, columns * (w + pad) + pad), fill, np.uint8)
    for i in range(n):
        r, col = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, top : top + h, left : left + w] = images[i]
    return canvas


def save_png(canvas: np.ndarray, out: str | Path, scale: int = 1) -> Path:
    """Write uint8 [C, H, W] (C = 1 or 3) as a PNG, enlarged `scale` times (nearest), atomically."""
    pil_image = require("PIL.Image", "images", "writing PNG images")
    image = canvas[0] if canvas.shape[0] == 1 else canvas.transpose(1, 2, 0)
    if scale > 1:
        image = image.repeat(scale, axis=0).repeat(scale, axis=1)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pil_image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
    return out


def auto_scale(height: int) -> int:
    """Enlargement factor so small images read well: 8x8 digits x8, 32x32 x2, 64 and up x1."""
    return max(1, 64 // max(height, 1))


def save_grid(
    x: np.ndarray, num_classes: int, out: str | Path, columns: int | None = None
) -> Path:
    """Samples [N, C, H, W] (ints 0..K-1) -> PNG grid at `out`, about square."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"an image grid needs samples [N, C, H, W], got shape {x.shape}")
    columns = columns or max(1, math.ceil(math.sqrt(len(x))))
    return save_png(tile(to_uint8(x, num_classes), columns), out, auto_scale(x.shape[2]))
