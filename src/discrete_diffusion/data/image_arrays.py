"""A data source over uint8 image arrays [N, C, H, W] and the image codec: the shared core of
the image sources (digits, CIFAR-10, image folders).

Pixels stay integers 0..K-1 (K = 256 for 8-bit images, 17 for scikit-learn's digits); the model
sees them as categories. The absorbing state is a real mid-grey value (`mask_index`), as in the
paper's CIFAR-10 experiments (128 for 256 levels), so the data vocabulary is not enlarged.

Training batches are `ArrayBatches`: shuffled per epoch with a permutation seeded by
(seed, epoch) and, when `flip` is on, each example is mirrored left-right with probability 1/2
drawn from the same seeded stream (`flip_left_right`): a run resumed from `state_dict()` sees
exactly the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from discrete_diffusion.data.base import ArrayBatches, Codec, DataInfo, eval_batches_of

_EVAL_SPLITS = {"train": "train", "test": "test", "valid": "test", "validation": "test"}


def flip_left_right(batch: Tensor, u: np.ndarray) -> Tensor:
    """Mirror the images [B, C, H, W] whose uniform draw `u` [B] is below 1/2 (a
    `BatchTransform` of `ArrayBatches`)."""
    mirror = torch.from_numpy(u < 0.5).view(-1, *([1] * (batch.dim() - 1)))
    return torch.where(mirror, batch.flip(-1), batch)


class ImageArraySource:
    """DataSource over in-memory (or memory-mapped) uint8 images [N, C, H, W] per split.

    Args:
        name: source name ("digits", "cifar10", "cifar10-jpeg", ...).
        splits: {"train": uint8 [N, C, H, W], "test": uint8 [M, C, H, W]}.
        num_classes: K, the number of grey levels per channel (256 for 8-bit images).
        flip: mirror training images left-right at random (seeded, resumable).
        description: what the data is, for reports (e.g. "CIFAR-10 (JPEG q75 copy)").
    """

    unit = "dim"

    def __init__(
        self,
        name: str,
        splits: dict[str, np.ndarray],
        num_classes: int,
        *,
        flip: bool,
        description: str = "",
    ) -> None:
        shapes = {tuple(a.shape[1:]) for a in splits.values()}
        if len(shapes) != 1:
            raise ValueError(f"{name}: splits have different image shapes {sorted(shapes)}")
        for split, array in splits.items():
            if array.ndim != 4 or len(array) == 0:
                raise ValueError(f"{name}: split {split!r} holds no [N, C, H, W] images")
        self.name, self.splits, self.num_classes = name, splits, num_classes
        self.example_shape: tuple[int, ...] = shapes.pop()
        self.mask_index = num_classes // 2  # mid grey: 128 of 256, 8 of 17
        self.flip, self.description = flip, description or name

    def _split(self, split: str) -> np.ndarray:
        key = _EVAL_SPLITS.get(split)
        if key is None or key not in self.splits:
            raise ValueError(f"{self.name}: unknown split {split!r} (have {sorted(self.splits)})")
        return self.splits[key]

    def num_examples(self, split: str) -> int:
        return len(self._split(split))

    def train_batches(
        self,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        state: dict[str, Any] | None = None,
    ) -> ArrayBatches:
        """Endless batches LongTensor [batch_size, C, H, W], mirrored at random when `flip`."""
        return ArrayBatches(
            self._split("train"), batch_size, seed=seed, rank=rank, world_size=world_size,
            state=state, transform=flip_left_right if self.flip else None,
        )

    def eval_batches(
        self, split: str, batch_size: int, *, max_examples: int | None = None
    ) -> Iterator[Tensor]:
        """Batches of the split in stored order, unflipped: LongTensor [b, C, H, W]."""
        return eval_batches_of(self._split(split), batch_size, max_examples)

    def info(self) -> DataInfo:
        return DataInfo(
            num_classes=self.num_classes,
            example_shape=self.example_shape,
            mask_index=self.mask_index,
            unit=self.unit,
            name=self.name,
        )

    def codec(self) -> ImageCodec:
        return ImageCodec(num_classes=self.num_classes, example_shape=self.example_shape)


class ImageCodec(Codec):
    """Decodes pixel ids [N, C, H, W] (0..K-1) into pixel-level arrays, which
    `figures.samples` draws as PNG grids; saved into the run folder as
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

    def pixels(self, x: Tensor | np.ndarray) -> np.ndarray:
        """Samples [N, C, H, W] as a numpy array of levels 0..K-1; a wrong shape is an error."""
        x = np.asarray(x.cpu() if isinstance(x, Tensor) else x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.example_shape:
            raise ValueError(
                f"image codec expects samples [N, {', '.join(map(str, self.example_shape))}], "
                f"got shape {tuple(x.shape)}"
            )
        return x
