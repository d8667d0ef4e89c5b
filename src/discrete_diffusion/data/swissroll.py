"""The quantized 2-D swiss roll of the paper's Figure 1: each point is two categorical variables.

A point (u, v) on a noisy swiss roll is mapped to two bins in 0..bins-1 (one per coordinate),
so an example is a LongTensor [2] and a batch is [B, 2]. The data vocabulary has no mask state:
an absorbing process adds the extra state `bins` (the model's K = bins + 1).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from discrete_diffusion.data.base import ArrayBatches, Codec, DataInfo, eval_batches_of
from discrete_diffusion.files import atomic_write_text

# The noiseless roll (angle 1.5*pi..4.5*pi) spans about [-9.5, 12.7] x [-11.0, 14.2]; one fixed
# box for both axes keeps the bins square and the quantization independent of the sample.
BOX = (-12.5, 16.0)
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Config:
    """Swiss-roll data.

    Attributes:
        bins: categories per coordinate (K_data). 32 keeps the arms ~7 bins apart.
        num_train: training points.
        num_test: held-out points in each of the splits "validation" and "test".
        noise: standard deviation of the Gaussian noise added to each coordinate, in the units
            of the roll (the arms are 2*pi apart).
        seed: seed of the points; the three splits are independent draws.
    """

    bins: int = 32
    num_train: int = 20000
    num_test: int = 2000
    noise: float = 0.4
    seed: int = 0


def check_config(cfg: Config) -> None:
    """Raise ValueError naming the first bad field of `cfg`."""
    if not isinstance(cfg.bins, int) or cfg.bins < 2:
        raise ValueError(f"swissroll: bins must be an integer >= 2, got {cfg.bins!r}")
    for name in ("num_train", "num_test"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"swissroll: {name} must be a positive integer, got {value!r}")
    if not cfg.noise >= 0.0:
        raise ValueError(f"swissroll: noise must be >= 0, got {cfg.noise!r}")


def roll_points(num: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Continuous points of a noisy 2-D swiss roll.

    Returns:
        float64 [num, 2], mostly inside `BOX`.
    """
    angle = 1.5 * math.pi * (1.0 + 2.0 * rng.random(num))
    points = np.stack([angle * np.cos(angle), angle * np.sin(angle)], axis=1)
    return points + noise * rng.standard_normal((num, 2))


def quantize(points: np.ndarray, bins: int) -> Tensor:
    """Map continuous points to bins 0..bins-1 per coordinate (outside `BOX` clips to the edge).

    Args:
        points: float [N, 2].
    Returns:
        LongTensor [N, 2].
    """
    low, high = BOX
    scaled = np.floor((points - low) / (high - low) * bins)
    return torch.from_numpy(np.clip(scaled, 0, bins - 1).astype(np.int64))


def make_split(cfg: Config, split: str) -> Tensor:
    """The quantized points of one split, LongTensor [N, 2]; deterministic in `cfg.seed`."""
    if split not in SPLITS:
        raise ValueError(f"swissroll: unknown split {split!r}; expected one of {SPLITS}")
    num = cfg.num_train if split == "train" else cfg.num_test
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split)])
    return quantize(roll_points(num, cfg.noise, rng), cfg.bins)


class SwissRollSource:
    """The swiss roll as a `DataSource`: examples LongTensor [2], unit "dim" (one coordinate)."""

    name = "swissroll"
    mask_index = None  # no data value is a natural mask: absorbing adds the state `bins`
    unit = "dim"

    def __init__(self, cfg: Config) -> None:
        check_config(cfg)
        self.cfg = cfg
        self.num_classes = cfg.bins
        self.example_shape = (2,)
        self._splits = {split: make_split(cfg, split) for split in SPLITS}

    def split(self, split: str) -> Tensor:
        """All points of `split`, LongTensor [N, 2]."""
        if split not in self._splits:
            raise ValueError(f"swissroll: unknown split {split!r}; expected one of {SPLITS}")
        return self._splits[split]

    def train_batches(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                      state: dict | None = None) -> ArrayBatches:
        """Endless shuffled batches [batch_size, 2] of the training points."""
        return ArrayBatches(self._splits["train"], batch_size, seed=seed, rank=rank,
                            world_size=world_size, state=state)

    def eval_batches(self, split: str, batch_size: int, *,
                     max_examples: int | None = None) -> Iterator[Tensor]:
        """One pass in order over `split`, batches [<= batch_size, 2]."""
        return eval_batches_of(self.split(split), batch_size, max_examples)

    def num_examples(self, split: str) -> int:
        return len(self.split(split))

    def codec(self) -> PointCodec:
        return PointCodec(bins=self.cfg.bins)

    def info(self) -> DataInfo:
        marginal = torch.bincount(self._splits["train"].flatten(), minlength=self.cfg.bins)
        return DataInfo(num_classes=self.cfg.bins, example_shape=(2,), mask_index=None,
                        unit="dim", marginal=marginal.double() / marginal.sum(), name=self.name)


def build(cfg: Config, data_arg: str | None = None) -> SwissRollSource:
    """The swiss-roll source; it is generated, so `data_arg` must be empty or "swissroll"."""
    if data_arg not in (None, "", "swissroll"):
        raise ValueError(f"data kind 'swissroll' is generated and takes no path, got {data_arg!r}")
    return SwissRollSource(cfg)


class PointCodec(Codec):
    """Decodes quantized 2-D points [N, 2] (codec kind "points"); `figures.samples` draws them
    as a scatter PNG.

    An id >= bins (the absorbing state of a model with K = bins + 1) is a masked coordinate.
    """

    kind = "points"

    def __init__(self, bins: int) -> None:
        if not isinstance(bins, int) or bins < 2:
            raise ValueError(f"points codec: bins must be an integer >= 2, got {bins!r}")
        self.bins = bins

    def config(self) -> dict:
        return {"bins": self.bins}

    def points(self, x: Tensor) -> Tensor:
        """The bin coordinates of samples `x` [N, 2]; any other shape is an error."""
        if x.dim() != 2 or x.shape[1] != 2:
            raise ValueError(f"points codec renders [N, 2] points, got shape {tuple(x.shape)}")
        return x

    def render(self, x: Tensor, out: str | os.PathLike | None = None) -> str:
        """A one-line summary of the points `x` [N, 2] (written to `out` when given)."""
        text = f"{len(self.points(x))} points on a {self.bins}x{self.bins} grid"
        if out is not None:
            atomic_write_text(out, text + "\n")
        return text
