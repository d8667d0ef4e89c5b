"""A DataSource over cached token ids per split (text8, LM1B, token arrays).

A split is either one 1-D token stream (text8: training examples are random crops, seeded per
global batch so that a resumed run continues exactly, with any number of processes) or packed
rows [N, L] (LM1B: training takes shuffled epochs of rows). Evaluation examples are the
non-overlapping L-token chunks of a whole split in order (for rows: the rows), remainder
dropped.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from discrete_diffusion.data.base import ArrayBatches, BatchIterator, Codec, DataInfo

SPLITS = ("train", "validation", "test")
_ALIASES = {"valid": "validation", "val": "validation"}


class CropIterator:
    """Random seq_len crops of a token array, drawn per global batch.

    Global batch n (`batch_size * world_size` crops) depends only on (seed, n), and rank r
    keeps its slice `[r * batch_size, (r + 1) * batch_size)`, so the data order is the same
    for any number of processes sharing the global batch; `state_dict()` is {"crops": n}.

    A state {"step": n} (written before crops were drawn per global batch) continues the
    older per-rank streams, seeded by (seed, rank, n), at the same number of processes only.
    """

    def __init__(self, ids: np.ndarray, seq_len: int, batch_size: int, seed: int, rank: int,
                 state: dict | None = None, world_size: int = 1) -> None:
        if ids.size < seq_len:
            raise ValueError(f"training split of {ids.size} tokens is shorter than {seq_len}")
        self.ids, self.seq_len, self.batch_size = ids, seq_len, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        state = state or {}
        self.per_rank = "step" in state and "crops" not in state
        if self.per_rank and int(state.get("world_size", world_size)) != world_size:
            raise ValueError(f"this run's crops were drawn per process by "
                             f"{state['world_size']} processes; resume it with that number "
                             f"(now {world_size})")
        self.step = int(state.get("step", state.get("crops", 0)))

    def __iter__(self) -> CropIterator:
        return self

    def __next__(self) -> Tensor:
        high = self.ids.size - self.seq_len + 1
        if self.per_rank:
            rng = np.random.default_rng([self.seed, self.rank, self.step])
            starts = rng.integers(0, high, size=self.batch_size)
        else:
            rng = np.random.default_rng([self.seed, self.step])
            first = self.rank * self.batch_size
            starts = rng.integers(0, high, size=self.batch_size * self.world_size)
            starts = starts[first:first + self.batch_size]
        self.step += 1
        batch = np.stack([self.ids[s : s + self.seq_len] for s in starts])
        return torch.from_numpy(batch.astype(np.int64))

    def state_dict(self) -> dict:
        if self.per_rank:
            return {"step": self.step, "rank": self.rank, "world_size": self.world_size}
        return {"crops": self.step}


def chunk_batches(ids: np.ndarray, seq_len: int, batch_size: int,
                  max_examples: int | None = None) -> Iterator[Tensor]:
    """Non-overlapping seq_len chunks of `ids` (remainder dropped) in batches [<=B, seq_len]."""
    n = ids.size // seq_len
    if max_examples is not None:
        n = min(n, max_examples)
    for a in range(0, n, batch_size):
        b = min(a + batch_size, n)
        chunk = np.asarray(ids[a * seq_len : b * seq_len]).reshape(b - a, seq_len)
        yield torch.from_numpy(chunk.astype(np.int64))


class TokenStreamSource:
    """A DataSource over one cached token stream per split (shared by text8, LM1B, tokens)."""

    def __init__(self, name: str, arrays: dict[str, np.ndarray], num_classes: int,
                 seq_len: int, unit: str, codec: Codec) -> None:
        self.name, self.num_classes, self.unit = name, num_classes, unit
        self.example_shape = (seq_len,)
        self.mask_index: int | None = None
        self.seq_len = seq_len
        self._arrays, self._codec = arrays, codec

    def split(self, split: str) -> np.ndarray:
        split = _ALIASES.get(split, split)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return self._arrays[split]

    def train_batches(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                      state: dict | None = None) -> BatchIterator:
        """A 1-D stream gives random crops; packed rows [N, L] give shuffled epochs of rows."""
        ids = self.split("train")
        if ids.ndim == 2:
            return ArrayBatches(ids, batch_size, seed=seed, rank=rank,
                                world_size=world_size, state=state)
        return CropIterator(ids, self.seq_len, batch_size, seed, rank, state, world_size)

    def eval_batches(self, split: str, batch_size: int, *,
                     max_examples: int | None = None) -> Iterator[Tensor]:
        ids = self.split(split)
        return chunk_batches(ids.reshape(-1), self.seq_len, batch_size, max_examples)

    def num_examples(self, split: str) -> int:
        return self.split(split).size // self.seq_len

    def codec(self) -> Codec:
        return self._codec

    def info(self) -> DataInfo:
        return DataInfo(
            num_classes=self.num_classes,
            example_shape=self.example_shape,
            mask_index=None,
            unit=self.unit,
            name=self.name,
            marginal=np.array(self._arrays["marginal"], dtype=np.float64),
            embeddings=np.array(self._arrays["embeddings"], dtype=np.float64),
        )
