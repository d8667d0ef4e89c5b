"""Images at a reduced resolution: area downsampling of uint8 [N, C, H, W] arrays, cached.

A CPU-sized version of a 32x32 data set keeps its real images and all 256 levels but fewer
pixels: shrinking by a whole factor f, each output pixel is the mean of one f x f block of the
input, per channel, rounded to the nearest level with halves rounded up, i.e.
floor(mean + 1/2), computed exactly in integers as (2 * sum + n) // (2 * n) for the n = f^2
pixels of a block. So 8-bit images stay 8-bit (K = 256) and a constant block keeps its value.

The option is given as a resolution R of the 32x32 data set (`data.resolution`), so f = 32 / R
must be whole; an image folder of another size S is shrunk by the same f, which must divide S.
The downsampled arrays are cached beside the full-size ones under the full-size key with the
output size appended (`image_cache.resolution_key`), so each resolution is computed once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from discrete_diffusion.data.image_cache import cached_array, resolution_key

CHUNK = 4096  # images per block sum: bounds the int64 temporaries of a memory-mapped array


def downsample_factor(resolution: int, size: int = 32) -> int:
    """f = size / resolution for `data.resolution`; a one-line ValueError unless
    `resolution` is a positive integer dividing `size`."""
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1 \
            or size % resolution:
        divisors = [d for d in range(1, size + 1) if size % d == 0]
        raise ValueError(f"data.resolution must divide {size} (one of "
                         f"{', '.join(map(str, divisors))}), got {resolution!r}")
    return size // resolution


def area_downsample(images: np.ndarray, factor: int) -> np.ndarray:
    """Block means of uint8 images, rounded half up to the nearest integer level.

    Args:
        images: uint8 [N, C, H, W] with `factor` dividing H and W.
        factor: f >= 1.
    Returns:
        uint8 [N, C, H/f, W/f], out[n, c, i, j] = floor(mean of
        images[n, c, i f:(i+1) f, j f:(j+1) f] + 1/2).
    """
    n, c, h, w = images.shape
    if factor < 1 or h % factor or w % factor:
        raise ValueError(f"cannot shrink {h}x{w} images by {factor}: it must divide the size")
    rows, cols, count = h // factor, w // factor, factor * factor
    out = np.empty((n, c, rows, cols), dtype=np.uint8)
    for start in range(0, n, CHUNK):
        block = np.asarray(images[start:start + CHUNK], dtype=np.int64)
        sums = block.reshape(-1, c, rows, factor, cols, factor).sum(axis=(3, 5))
        out[start:start + CHUNK] = (2 * sums + count) // (2 * count)
    return out


def shrunk(
    images: np.ndarray, key: str, factor: int, what: str, cache_dir: Path | None = None
) -> np.ndarray:
    """`images` (uint8 [N, C, H, W], cached under `key`) shrunk by `factor`: unchanged for 1,
    else area-downsampled once and memory-mapped from the cache under
    `resolution_key(key, H/f)`. A factor that does not divide H and W is a one-line error
    naming `what`."""
    if factor == 1:
        return images
    h, w = images.shape[2:]
    if h % factor or w % factor:
        raise ValueError(f"data.resolution shrinks images by {factor}, which does not divide "
                         f"the {h}x{w} images of {what}")
    return cached_array(resolution_key(key, h // factor),
                        lambda: area_downsample(images, factor), cache_dir)
