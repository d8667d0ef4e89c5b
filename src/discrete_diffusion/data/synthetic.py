"""Data kind "synthetic": sequences of a fixed random first-order Markov chain.

The chain has K states; row i of its transition matrix P is softmax(sharpness * g_i), g_i
standard normal drawn from `seed`, and x_1 is drawn from the stationary distribution pi, so
every position has marginal pi. The exact entropy of a sequence of length L is
H(pi) + (L - 1) * sum_i pi_i H(P_i), so a model's bound in bits per token must approach
`entropy_bits_per_token()` from above. Nothing is downloaded: `--data` is ignored.

Splits: "train" (num_train), "validation" and "test" (num_eval each), drawn from independent
streams of the same seed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from discrete_diffusion.data.base import ArrayBatches, Codec, DataInfo, eval_batches_of
from discrete_diffusion.files import atomic_write_text

SPLITS = ("train", "validation", "test")


@dataclass
class Config:
    """Size of the synthetic data (defaults: a quick smoke test)."""

    vocab_size: int = 8
    seq_len: int = 16
    num_train: int = 4096
    num_eval: int = 512
    seed: int = 0
    sharpness: float = 2.0


class IdCodec(Codec):
    """Prints each example as space-separated ids; an id >= vocab_size (an added mask) shows as
    '_', which also marks a position to fill in `parse_infill`."""

    kind = "synthetic"

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def config(self) -> dict:
        return {"vocab_size": self.vocab_size}

    def render(self, x: Tensor, out=None) -> str:
        rows = x.reshape(x.shape[0], -1) if x.dim() > 1 else x[None]
        text = "\n".join(" ".join(str(int(v)) if int(v) < self.vocab_size else "_" for v in row)
                         for row in rows)
        if out is not None:
            atomic_write_text(out, text + "\n")
        return text

    def _ids(self, text: str, allow_blank: bool) -> list[int | None]:
        ids: list[int | None] = []
        for word in text.split():
            if word == "_" and allow_blank:
                ids.append(None)
            elif word.isdigit() and int(word) < self.vocab_size:
                ids.append(int(word))
            else:
                raise ValueError(f"{word!r} is not an id 0..{self.vocab_size - 1}")
        return ids

    def encode(self, text: str) -> Tensor:
        return torch.tensor(self._ids(text, allow_blank=False), dtype=torch.long)

    def parse_infill(self, text: str) -> tuple[Tensor, Tensor]:
        ids = self._ids(text, allow_blank=True)
        held = torch.tensor([i is not None for i in ids])
        return torch.tensor([0 if i is None else i for i in ids], dtype=torch.long), held


class MarkovChain:
    """The chain: `transition` float64 [K, K] (rows P_i) and `stationary` float64 [K]."""

    def __init__(self, vocab_size: int, sharpness: float, seed: int) -> None:
        rng = np.random.default_rng([seed, 0])
        logits = sharpness * rng.standard_normal((vocab_size, vocab_size))
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        self.transition = p / p.sum(axis=1, keepdims=True)
        # pi P = pi: the left eigenvector for eigenvalue 1.
        values, vectors = np.linalg.eig(self.transition.T)
        pi = np.real(vectors[:, np.argmin(np.abs(values - 1.0))])
        self.stationary = pi / pi.sum()

    def sample(self, num: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """int64 [num, length] sequences with x_1 ~ pi."""
        k = len(self.stationary)
        cdf = np.cumsum(self.transition, axis=1)
        x = np.empty((num, length), dtype=np.int64)
        x[:, 0] = rng.choice(k, size=num, p=self.stationary)
        for i in range(1, length):
            u = rng.random(num)[:, None]
            x[:, i] = np.minimum((u > cdf[x[:, i - 1]]).sum(axis=1), k - 1)
        return x

    def entropy_bits_per_token(self, length: int) -> float:
        """Exact H(x_1..x_L) / L in bits."""
        def h(p: np.ndarray) -> np.ndarray:
            return -(np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)).sum(axis=-1)
        return float((h(self.stationary) + (length - 1) * self.stationary @ h(self.transition))
                     / length)


class SyntheticData:
    """The `DataSource` of the synthetic kind."""

    name = "synthetic"
    unit = "token"
    mask_index = None

    def __init__(self, cfg: Config) -> None:
        if cfg.vocab_size < 2 or cfg.seq_len < 1 or cfg.num_train < 1 or cfg.num_eval < 1:
            raise ValueError(f"synthetic data needs vocab_size >= 2 and positive sizes, got {cfg}")
        self.cfg = cfg
        self.num_classes = cfg.vocab_size
        self.example_shape = (cfg.seq_len,)
        self.chain = MarkovChain(cfg.vocab_size, cfg.sharpness, cfg.seed)
        sizes = {"train": cfg.num_train, "validation": cfg.num_eval, "test": cfg.num_eval}
        self.splits = {
            split: torch.from_numpy(self.chain.sample(
                n, cfg.seq_len, np.random.default_rng([cfg.seed, 1 + SPLITS.index(split)])))
            for split, n in sizes.items()
        }

    def _split(self, split: str) -> Tensor:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        return self.splits[split]

    def train_batches(self, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                      state: dict | None = None) -> ArrayBatches:
        return ArrayBatches(self.splits["train"], batch_size, seed=seed, rank=rank,
                            world_size=world_size, state=state)

    def eval_batches(self, split: str, batch_size: int, *,
                     max_examples: int | None = None) -> Iterator[Tensor]:
        return eval_batches_of(self._split(split), batch_size, max_examples)

    def num_examples(self, split: str) -> int:
        return len(self._split(split))

    def codec(self) -> IdCodec:
        return IdCodec(self.cfg.vocab_size)

    def info(self) -> DataInfo:
        counts = torch.bincount(self.splits["train"].flatten(), minlength=self.num_classes)
        return DataInfo(num_classes=self.num_classes, example_shape=self.example_shape,
                        mask_index=None, unit=self.unit, name=self.name,
                        marginal=counts.double() / counts.sum())

    def entropy_bits_per_token(self) -> float:
        """The exact entropy of the data in bits per token: the floor of any bound."""
        return self.chain.entropy_bits_per_token(self.cfg.seq_len)


def build(cfg: Config, data_arg: str | None = None) -> SyntheticData:
    """The synthetic source; `data_arg` is ignored (the data is generated from `cfg.seed`)."""
    del data_arg
    return SyntheticData(cfg)


__all__ = ["Config", "IdCodec", "MarkovChain", "SyntheticData", "build"]
