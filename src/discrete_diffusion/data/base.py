"""Contracts between data, models, methods and the trainer: `DataInfo`, `DataSource`,
`BatchIterator` and `Codec`, plus helpers every data kind shares.

* `DataInfo` is all a method or a network needs to be rebuilt without the data; it is saved in
  the run folder (`RUN_DIR/data/info.json` + `arrays.safetensors`).
* A `Codec` turns ids back into something people read and is saved beside it (`codec.json`
  with a "kind" entry, plus whatever files the codec needs), so sampling needs no data.
* `ArrayBatches` is a ready-made `BatchIterator` over an in-memory (or memory-mapped) array:
  shuffled epochs, sharded by rank, an optional seeded per-batch transform, resumable through
  `state_dict()`.

Files are written atomically and the data cache is found through `discrete_diffusion.files`.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from discrete_diffusion.files import atomic_path, atomic_write_json, atomic_write_text

UNITS = ("char", "token", "dim")

# codec.json "kind" -> "module:Class"; imported only when a codec of that kind is loaded.
CODECS: dict[str, str] = {
    "text8": "discrete_diffusion.data.text8:CharCodec",
    "sentencepiece": "discrete_diffusion.data.lm1b:SentencePieceCodec",
    "tokens": "discrete_diffusion.data.token_arrays:TokenCodec",
    "image": "discrete_diffusion.data.image_arrays:ImageCodec",
    "points": "discrete_diffusion.data.swissroll:PointCodec",
    "synthetic": "discrete_diffusion.data.synthetic:IdCodec",
}


# ----- DataInfo ----------------------------------------------------------------------------
@dataclass
class DataInfo:
    """What a method or network needs to know about the data.

    Attributes:
        num_classes: K_data, the data vocabulary (no mask token).
        example_shape: (L,) for sequences, (C, H, W) for images.
        mask_index: a data id that doubles as the absorbing state (images: 128), or None when
            an absorbing process must add an extra token K_data.
        unit: "char", "token" or "dim": bits are reported per unit (one unit per position).
        marginal: optional float64 [K_data], unigram frequencies of the training split (for the
            mutual-information schedule).
        embeddings: optional float64 [K_data, d] (for the nearest-neighbour process).
        name: the data kind, for messages.
    """

    num_classes: int
    example_shape: tuple[int, ...]
    mask_index: int | None = None
    unit: str = "token"
    marginal: Tensor | None = None
    embeddings: Tensor | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self.example_shape = tuple(int(s) for s in self.example_shape)
        if self.num_classes < 1:
            raise ValueError(f"DataInfo.num_classes must be positive, got {self.num_classes}")
        if self.unit not in UNITS:
            raise ValueError(f"DataInfo.unit must be one of {UNITS}, got {self.unit!r}")
        if self.mask_index is not None and not 0 <= self.mask_index < self.num_classes:
            raise ValueError(f"DataInfo.mask_index {self.mask_index} is not a data id "
                             f"0..{self.num_classes - 1}")
        for key in ("marginal", "embeddings"):
            value = getattr(self, key)
            if value is not None:
                setattr(self, key, torch.as_tensor(np.asarray(value), dtype=torch.float64))

    @property
    def num_positions(self) -> int:
        """Units per example: the product of `example_shape`."""
        return math.prod(self.example_shape)

    def save(self, directory: str | os.PathLike) -> None:
        """Write `info.json` (+ `arrays.safetensors` when arrays are present) to `directory`."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {k: getattr(self, k).contiguous() for k in ("marginal", "embeddings")
                  if getattr(self, k) is not None}
        if arrays:
            with atomic_path(directory / "arrays.safetensors") as tmp:
                save_file(arrays, str(tmp))
        meta = {"num_classes": self.num_classes, "example_shape": list(self.example_shape),
                "mask_index": self.mask_index, "unit": self.unit, "name": self.name,
                "arrays": sorted(arrays)}
        atomic_write_json(directory / "info.json", meta, indent=2)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> DataInfo:
        """Read what `save` wrote; a missing or unreadable file is a one-line error."""
        from safetensors.torch import load_file

        directory = Path(directory)
        meta = _read_json(directory / "info.json", "data info")
        names = meta.pop("arrays", [])
        arrays = load_file(str(directory / "arrays.safetensors")) if names else {}
        try:
            return cls(**meta, **{k: arrays[k] for k in names})
        except (TypeError, KeyError) as err:
            raise ValueError(f"{directory / 'info.json'} is not a valid data info: {err}") from err


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err}") from err


# ----- protocols ---------------------------------------------------------------------------
@runtime_checkable
class BatchIterator(Protocol):
    """An endless iterator of LongTensor [B, *example_shape] whose position can be saved."""

    def __iter__(self) -> Iterator[Tensor]: ...

    def __next__(self) -> Tensor: ...

    def state_dict(self) -> dict:
        """JSON-able position; pass it back as `train_batches(..., state=)` to continue."""
        ...


@runtime_checkable
class DataSource(Protocol):
    """A dataset as the trainer sees it (see docs/ARCHITECTURE.md)."""

    name: str
    num_classes: int
    example_shape: tuple[int, ...]
    mask_index: int | None
    unit: str

    def train_batches(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                      state: dict | None = None) -> BatchIterator:
        """Endless training batches of `batch_size` examples for this rank."""
        ...

    def eval_batches(self, split: str, batch_size: int, *,
                     max_examples: int | None = None) -> Iterator[Tensor]:
        """One deterministic pass over `split` ("validation" or "test")."""
        ...

    def num_examples(self, split: str) -> int: ...

    def codec(self) -> Codec: ...

    def info(self) -> DataInfo: ...


# ----- codecs ------------------------------------------------------------------------------
class Codec:
    """Turns ids into what they stand for; subclasses set `kind` (a key of `CODECS`).

    Text codecs decode to text (`render`); codecs of pictures decode to arrays (the image
    codec's `pixels`, the points codec's `points`) that `figures.samples` draws: data never
    draws. The default `save` writes `codec.json` = {"kind": kind, **self.config()} and the
    default `load` calls `cls(**config)`; codecs holding files (a sentencepiece model) override
    both.
    """

    kind: str = ""

    def config(self) -> dict:
        """JSON-able constructor arguments."""
        return {}

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(directory / "codec.json", {"kind": self.kind, **self.config()},
                          indent=2)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Codec:
        config = _read_json(Path(directory) / "codec.json", "codec")
        config.pop("kind", None)
        return cls(**config)

    def render(self, x: Tensor, out: str | os.PathLike | None = None) -> str:
        """Examples [N, *example_shape] as text (written to `out` when given)."""
        raise NotImplementedError(f"{type(self).__name__} cannot render examples as text")

    def encode(self, text: str) -> Tensor:
        """Ids LongTensor [L] of `text` (text codecs only)."""
        raise ValueError(f"the {self.kind or type(self).__name__} codec cannot encode text")

    def parse_infill(self, text: str) -> tuple[Tensor, Tensor]:
        """Ids [L] and a bool mask [L] of held positions; '_' marks a position to fill."""
        raise ValueError(f"the {self.kind or type(self).__name__} codec has no infilling")

    def render_progressive(self, trajectory: Sequence[tuple[int, Tensor]],
                           out: str | os.PathLike | None = None) -> str:
        """[(t, x_t [N, ...]), ...] from t = T down to 0 as text, one block per t (written to
        `out` when given)."""
        blocks = [f"t = {t}\n{self.render(x_t)}" for t, x_t in trajectory]
        text = "\n".join(blocks)
        if out is not None:
            atomic_write_text(out, text + "\n")
        return text


def codec_from_dir(directory: str | os.PathLike) -> Codec:
    """Load the codec saved in `directory` (a run's `data/` folder), dispatching on the
    "kind" entry of its `codec.json`."""
    config = _read_json(Path(directory) / "codec.json", "codec")
    kind = config.get("kind")
    if kind not in CODECS:
        raise ValueError(f"unknown codec kind {kind!r} in {directory}; known: "
                         f"{', '.join(sorted(CODECS))}")
    module_name, class_name = CODECS[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name).load(directory)


# ----- a resumable, sharded batch iterator over an in-memory array ---------------------------
# transform(batch [B, ...], u float64 [B]) -> batch [B, ...]; u holds one uniform draw per example.
BatchTransform = Callable[[Tensor, np.ndarray], Tensor]


class ArrayBatches:
    """Endless shuffled batches of rows of `data` [N, *example_shape].

    Every epoch draws a permutation from numpy's PCG64 seeded by (seed, epoch); each step takes
    the next `batch_size * world_size` indices (the global batch) and this rank keeps its slice
    `[rank * batch_size, (rank + 1) * batch_size)`, so N processes together see exactly what one
    process with the global batch would. A partial global batch at an epoch's end is dropped.

    `data` is a Tensor, or a numpy array (possibly memory-mapped) whose rows are read in
    increasing order, so a memory map is read forwards, and returned as int64. An optional
    `transform(batch, u)` is applied to every batch; `u` float64 [B] holds one uniform number
    in [0, 1) per example, drawn for the whole epoch from the same generator right after the
    permutation and taken by position in the epoch, so transformed batches resume exactly too.

    State: {"epoch", "offset"} (position in the epoch's permutation); "position" is read as
    "offset" (the name image sources saved before they used this iterator).
    """

    def __init__(self, data: Tensor | np.ndarray, batch_size: int, *, seed: int, rank: int = 0,
                 world_size: int = 1, state: dict | None = None, shuffle: bool = True,
                 transform: BatchTransform | None = None) -> None:
        global_batch = batch_size * world_size
        if batch_size < 1 or global_batch > len(data):
            raise ValueError(f"batch size {batch_size} x {world_size} processes does not fit "
                             f"{len(data)} training examples")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        self.transform = transform
        state = state or {}
        self.epoch = int(state.get("epoch", 0))
        self.offset = int(state.get("offset", state.get("position", 0)))
        self._start_epoch(self.epoch)

    def _start_epoch(self, epoch: int) -> None:
        rng = np.random.default_rng([self.seed, epoch])
        n = len(self.data)
        self._perm = rng.permutation(n) if self.shuffle else np.arange(n)
        self._uniforms = rng.random(n) if self.transform is not None else None

    def __iter__(self) -> ArrayBatches:
        return self

    def __next__(self) -> Tensor:
        global_batch = self.batch_size * self.world_size
        if self.offset + global_batch > len(self.data):
            self.epoch, self.offset = self.epoch + 1, 0
            self._start_epoch(self.epoch)
        start = self.offset + self.rank * self.batch_size
        chosen = slice(start, start + self.batch_size)
        batch = self._rows(self._perm[chosen])
        if self.transform is not None:
            batch = self.transform(batch, self._uniforms[chosen])
        self.offset += global_batch
        return batch

    def _rows(self, index: np.ndarray) -> Tensor:
        if isinstance(self.data, np.ndarray):
            order = np.argsort(index)
            rows = np.asarray(self.data[index[order]], dtype=np.int64)
            return torch.from_numpy(rows[np.argsort(order)])  # back to the drawn order
        return self.data[torch.from_numpy(index.copy())]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "offset": self.offset}


def eval_batches_of(data: Tensor | np.ndarray, batch_size: int,
                    max_examples: int | None = None) -> Iterator[Tensor]:
    """One pass in order over the first `max_examples` rows of `data` (numpy rows come as
    int64 tensors)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    n = len(data) if max_examples is None else min(max_examples, len(data))
    for start in range(0, n, batch_size):
        chunk = data[start:min(start + batch_size, n)]
        if isinstance(chunk, np.ndarray):
            chunk = torch.from_numpy(np.array(chunk, dtype=np.int64))
        yield chunk
