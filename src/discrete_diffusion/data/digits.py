"""scikit-learn's handwritten digits: 1,797 grey images 8x8 with 17 levels 0..16 (data kind
"digits", `--data digits`). It ships with scikit-learn, so it needs no download: the embedded
image set for quick starts and tests.

K = 17 grey levels per pixel, one channel; the absorbing state is the middle grey 8 (as 128 is
for 256 levels). The split is fixed: a permutation drawn with numpy's default_rng(0) puts the
first 360 images (20 %) in "test" and the other 1,437 in "train". Flips are off by default:
digits are not left-right symmetric (a mirrored 2, 3, 4, 7 or 9 is not a digit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from discrete_diffusion.data.image_arrays import ImageArraySource
from discrete_diffusion.extras import require

NUM_LEVELS = 17
NUM_TEST = 360
SPLIT_SEED = 0


@dataclass(frozen=True)
class Config:
    """Digits options. `flip` mirrors training images (off: digits are not flip-symmetric)."""

    flip: bool = False


def load_digit_splits() -> dict[str, np.ndarray]:
    """The fixed train/test split of scikit-learn's digits as uint8 [N, 1, 8, 8] in 0..16."""
    sklearn_datasets = require("sklearn.datasets", "images", "the digits data")
    images = sklearn_datasets.load_digits().images.astype(np.uint8)[:, None]  # [1797, 1, 8, 8]
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    return {"train": images[order[NUM_TEST:]], "test": images[order[:NUM_TEST]]}


def build(cfg: Config, data_arg: str | None = None) -> ImageArraySource:
    """The digits source; `data_arg` must be empty or "digits" (the data are built in)."""
    if data_arg not in (None, "", "digits"):
        raise ValueError(f"data kind 'digits' is built in and takes no path, got {data_arg!r}")
    return ImageArraySource(
        "digits", load_digit_splits(), NUM_LEVELS, flip=cfg.flip,
        description="scikit-learn digits (8x8, 17 grey levels)",
    )
