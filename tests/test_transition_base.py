"""What every transition shares (transitions/base.py): `to(device)` moves every table, wherever
it is held (attributes, tuples, dicts, an LRU cache), and the fused operations a transition
defines and prefers."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from conftest import random_stochastic

from discrete_diffusion import schedules
from discrete_diffusion.transitions import (
    Absorbing,
    Autoregressive,
    Dense,
    DiscretizedGaussian,
    MaskUniform,
    NearestNeighbor,
    Transition,
    Uniform,
)
from discrete_diffusion.transitions.base import FUSED_OPERATIONS
from discrete_diffusion.transitions.mask_uniform import FUSED_MIN_CLASSES

T = 4
MAKERS = {
    "uniform": lambda: Uniform(5),
    "absorbing": lambda: Absorbing(5, 4),
    "mask_uniform": lambda: MaskUniform(5, 0, schedules.linear(T, 0.1, 0.3)),
    "gaussian": lambda: DiscretizedGaussian(6, bands=2),
    "dense": lambda: Dense(matrices=random_stochastic(T, 5, seed=1)),
    "nearest_neighbor": lambda: NearestNeighbor(torch.randn(7, 3, generator=torch.Generator()
                                                            .manual_seed(0)), k=2),
    "autoregressive": lambda: Autoregressive(5, 4, T),
}


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_to_moves_every_table(kind: str) -> None:
    """After `to`, no tensor attribute is left behind (the "meta" device holds no data, so
    any table `to` missed would still be on the CPU); the bytes counted do not change."""
    tr = MAKERS[kind]()
    tr.setup(schedules.linear(T, 0.1, 0.4))
    if kind in ("gaussian", "dense"):  # fill the span caches
        x_t = torch.zeros(1, 3, dtype=torch.long)
        tr.log_transition_column(x_t, torch.tensor([1]), torch.tensor([3]))
        assert tr.spans
    before = tr.table_bytes()
    assert tr.to("meta") is tr
    moved = _tensors(vars(tr))
    assert all(v.device.type == "meta" for v in moved)
    assert tr.table_bytes() == before
    if kind == "gaussian":  # the cache stays an LRU
        assert isinstance(tr.spans, OrderedDict)
    if kind == "mask_uniform":
        assert isinstance(tr.uniform_keep, tuple) and isinstance(tr.mask_keep, tuple)


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_fused_operations_are_those_defined(kind: str) -> None:
    tr: Transition = MAKERS[kind]()
    want = {"uniform", "absorbing", "mask_uniform"}
    assert tr.fused_operations == (frozenset(FUSED_OPERATIONS) if kind in want else frozenset())
    if kind != "mask_uniform":
        assert tr.preferred_fused_operations == tr.fused_operations


def test_mask_uniform_prefers_composed_posteriors_on_small_vocabularies() -> None:
    small, large = (MaskUniform(k, 0, schedules.linear(T, 0.1, 0.3))
                    for k in (FUSED_MIN_CLASSES - 1, FUSED_MIN_CLASSES))
    assert small.preferred_fused_operations == {"sample_cumulative", "posterior_kl"}
    assert large.preferred_fused_operations == frozenset(FUSED_OPERATIONS)
