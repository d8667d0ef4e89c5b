"""A data source over uint8 image arrays [N, C, H, W]: the shared core of the image sources.

Pixels stay integers 0..K-1 (K = 256 for 8-bit images, 17 for scikit-learn's digits); the model
sees them as categories. The absorbing state is a real mid-grey value (`mask_index`), as in the
paper's CIFAR-10 experiments (128 for 256 levels), so the data vocabulary is not enlarged.

Training batches are shuffled per epoch with a permutation seeded by (seed, epoch) and, when
`flip` is on, each example is mirrored left-right with probability 1/2 drawn from the same seeded
stream: a run resumed from `state_dict()` sees exactly the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

_EVAL_SPLITS = {"train": "train", "test": "test", "valid": "test", "validation": "test"}


class ImageBatches:
    """Resumable iterator of training batches, LongTensor [B, C, H, W] (the BatchIterator).

    Rank `rank` of `world_size` takes the rank-th slice of each global batch of
    `batch_size * world_size` examples; an epoch drops its last incomplete global batch.
    """

    def __init__(
        self,
        images: np.ndarray,
        batch_size: int,
        *,
        seed: int,
        flip: bool,
        rank: int = 0,
        world_size: int = 1,
        state: dict[str, Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        global_batch = batch_size * world_size
        if global_batch > len(images):
            raise ValueError(
                f"global batch {global_batch} exceeds the {len(images)} training images"
            )
        self.images, self.batch_size, self.seed, self.flip = images, batch_size, seed, flip
        self.rank, self.world_size = rank, world_size
        state = state or {}
        self.epoch = int(state.get("epoch", 0))
        self.position = int(state.get("position", 0))
        self._load_epoch()

    def _load_epoch(self) -> None:
        rng = np.random.default_rng([self.seed, self.epoch])
        self._order = rng.permutation(len(self.images))
        self._flips = rng.random(len(self.images)) < 0.5

    def __iter__(self) -> ImageBatches:
        return self

    def __next__(self) -> Tensor:
        global_batch = self.batch_size * self.world_size
        if self.position + global_batch > len(self.images):
            self.epoch, self.position = self.epoch + 1, 0
            self._load_epoch()
        start = self.position + self.rank * self.batch_size
        chosen = slice(start, start + self.batch_size)
        batch = np.array(self.images[np.sort(self._order[chosen])], dtype=np.int64)
        # Sorting the indices lets a memory-mapped array be read forwards; undo it below.
        unsort = np.argsort(np.argsort(self._order[chosen]))
        batch = batch[unsort]
        if self.flip:
            mirror = self._flips[chosen]
            batch[mirror] = batch[mirror][..., ::-1]
        self.position += global_batch
        return torch.from_numpy(np.ascontiguousarray(batch))

    def state_dict(self) -> dict[str, int]:
        """JSON-able position: pass it back as `state=` to continue exactly."""
        return {"epoch": self.epoch, "position": self.position}


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
    ) -> ImageBatches:
        return ImageBatches(
            self._split("train"), batch_size, seed=seed, flip=self.flip,
            rank=rank, world_size=world_size, state=state,
        )

    def eval_batches(
        self, split: str, batch_size: int, *, max_examples: int | None = None
    ) -> Iterator[Tensor]:
        """Batches of the split in stored order, unflipped: LongTensor [b, C, H, W]."""
        images = self._split(split)
        stop = len(images) if max_examples is None else min(max_examples, len(images))
        for start in range(0, stop, batch_size):
            chunk = np.array(images[start : min(start + batch_size, stop)], dtype=np.int64)
            yield torch.from_numpy(chunk)

    def info(self):  # -> DataInfo
        from discrete_diffusion.data.base import DataInfo

        return DataInfo(
            num_classes=self.num_classes,
            example_shape=self.example_shape,
            mask_index=self.mask_index,
            unit=self.unit,
            name=self.name,
        )

    def codec(self):  # -> ImageCodec
        from discrete_diffusion.data.images import ImageCodec

        return ImageCodec(num_classes=self.num_classes, example_shape=self.example_shape)
