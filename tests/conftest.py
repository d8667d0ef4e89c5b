"""Shared tiny processes for the mathematics tests (K <= 5, T <= 6)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import discrete_diffusion as dd
from discrete_diffusion import schedules
from discrete_diffusion.transitions import Absorbing, Dense, Uniform


def random_stochastic(num_steps: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """Random row-stochastic matrices [T, K, K] with some exact zeros, float64."""
    gen = torch.Generator().manual_seed(seed)
    mats = torch.rand(num_steps, num_classes, num_classes, generator=gen, dtype=torch.float64)
    mats = mats * (mats > 0.25) + torch.eye(num_classes, dtype=torch.float64)
    return mats / mats.sum(-1, keepdim=True)


def random_rate(num_classes: int, seed: int = 0) -> torch.Tensor:
    """A random rate matrix [K, K]: off-diagonal >= 0, rows summing to zero, float64."""
    gen = torch.Generator().manual_seed(seed)
    off = torch.rand(num_classes, num_classes, generator=gen, dtype=torch.float64)
    off.fill_diagonal_(0.0)
    return off - torch.diag(off.sum(1))


# The tests are tiny: one thread avoids oversubscribing a shared machine.
torch.set_num_threads(1)

# name -> builder of a set-up process; each is tiny and exercises a different structure.
PROCESSES: dict[str, Callable[[], dd.D3PM]] = {
    "uniform": lambda: dd.D3PM(Uniform(4), schedules.linear(5, 0.05, 0.6)),
    "uniform_cosine": lambda: dd.D3PM(Uniform(3), schedules.cosine(6)),
    "absorbing": lambda: dd.D3PM(Absorbing(4, 3), schedules.jsd(5)),
    "absorbing_mid": lambda: dd.D3PM(Absorbing(5, 2), schedules.linear(6, 0.1, 0.5)),
    "dense": lambda: dd.D3PM(Dense(matrices=random_stochastic(5, 4)), schedules.constant(5, 0.1)),
    "dense_rate": lambda: dd.D3PM(Dense(rate=random_rate(4)), schedules.linear(5, 0.1, 1.0)),
}


@pytest.fixture(params=sorted(PROCESSES))
def proc(request: pytest.FixtureRequest) -> dd.D3PM:
    """Each tiny process in turn."""
    return PROCESSES[request.param]()


@pytest.fixture
def gen() -> torch.Generator:
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(1234)
