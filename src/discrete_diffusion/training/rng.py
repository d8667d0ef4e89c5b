"""The random states a training step draws from, as JSON (for checkpoints), and seeding."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_of(*parts: int) -> int:
    """A 63-bit seed mixing `parts` (seed, rank, purpose)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> 1)


def get_rng_state(generator: torch.Generator) -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state().tolist(),
             "generator": generator.get_state().tolist(),
             "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
             "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def seed_all(seed: int, generator: torch.Generator) -> None:
    """Seed every RNG a step draws from (torch, `generator`, numpy, random, CUDA) from `seed`."""
    torch.manual_seed(seed)  # also seeds every CUDA device
    generator.manual_seed(seed_of(seed, 1))
    np.random.seed(seed_of(seed, 2) % 2**32)
    random.seed(seed_of(seed, 3))


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    as_bytes = lambda v: torch.tensor(v, dtype=torch.uint8)  # noqa: E731
    torch.set_rng_state(as_bytes(state["torch"]))
    generator.set_state(as_bytes(state["generator"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([as_bytes(s) for s in state["cuda"]])
