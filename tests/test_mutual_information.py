"""The mutual-information schedule: I(x_t; x_0) falls linearly, checked by enumeration."""

from __future__ import annotations

import pytest
import torch

from discrete_diffusion import schedules
from discrete_diffusion.mutual_info import mutual_information_of
from discrete_diffusion.transitions import (
    Absorbing,
    Dense,
    DiscretizedGaussian,
    MaskUniform,
    NearestNeighbor,
    Transition,
    Uniform,
)

F64 = torch.float64


def _marginal(k: int, zero_at: int | None = None, seed: int = 0) -> torch.Tensor:
    p = torch.rand(k, generator=torch.Generator().manual_seed(seed), dtype=F64) + 0.05
    if zero_at is not None:
        p[zero_at] = 0.0
    return p / p.sum()


def _brute_mi(q: torch.Tensor, p: torch.Tensor) -> float:
    """I(x_t; x_0) by summing p(x_0) q(x_t | x_0) log(q(x_t | x_0) / q(x_t)) over the pairs."""
    total = 0.0
    p_t = p @ q
    for i in range(q.shape[0]):
        for j in range(q.shape[1]):
            if p[i] > 0 and q[i, j] > 0:
                total += float(p[i] * q[i, j] * torch.log(q[i, j] / p_t[j]))
    return total


def _check_linear(tr: Transition, betas: torch.Tensor, p: torch.Tensor, tol: float) -> None:
    steps = betas.shape[0]
    tr.setup(betas)
    h0 = float(-(p[p > 0] * p[p > 0].log()).sum())
    for t in range(1, steps):
        mi = _brute_mi(tr.cumulative_matrix(t), p)
        assert mi == pytest.approx((1 - t / steps) * h0, abs=tol)
    assert _brute_mi(tr.cumulative_matrix(steps), p) < max(tol, 2e-6 * h0)


def test_mutual_information_of_matches_brute_force() -> None:
    q = torch.softmax(torch.randn(4, 4, generator=torch.Generator().manual_seed(1),
                                  dtype=F64), -1)
    p = _marginal(4, zero_at=2)
    assert mutual_information_of(q, p) == pytest.approx(_brute_mi(q, p), rel=1e-12)


@pytest.mark.parametrize("steps", [1, 7, 50])
def test_absorbing_gives_the_jsd_schedule(steps: int) -> None:
    k = 5
    betas = schedules.mutual_information(Absorbing(k, k - 1), steps, _marginal(k - 1))
    torch.testing.assert_close(betas, schedules.jsd(steps), rtol=0, atol=1e-6)


def test_uniform_mutual_information_falls_linearly() -> None:
    k, steps = 6, 9
    p = _marginal(k, zero_at=1)
    betas = schedules.mutual_information(Uniform(k), steps, p)
    assert betas[-1].item() == 1.0
    _check_linear(Uniform(k), betas, p, 1e-9)


def test_nearest_neighbor_mutual_information_falls_linearly() -> None:
    k, steps = 7, 8
    emb = torch.randn(k, 3, generator=torch.Generator().manual_seed(4))
    p = _marginal(k, seed=2)
    betas = schedules.mutual_information(NearestNeighbor(emb, k=2), steps, p)
    assert (betas > 0).all()
    _check_linear(NearestNeighbor(emb, k=2), betas, p, 1e-8)


def test_interpolation_alone_is_close_to_the_refined_levels() -> None:
    k, steps = 7, 8
    emb = torch.randn(k, 3, generator=torch.Generator().manual_seed(4))
    p = _marginal(k, seed=2)
    tr = NearestNeighbor(emb, k=2)
    exact = schedules.mutual_information(tr, steps, p, refine=True).cumsum(0)
    rough = schedules.mutual_information(tr, steps, p, refine=False).cumsum(0)
    torch.testing.assert_close(rough[:-1], exact[:-1], rtol=1e-2, atol=0)


def test_dense_rate_process_falls_linearly() -> None:
    rate = torch.tensor([[-1.0, 1.0, 0.0], [0.5, -1.0, 0.5], [0.0, 2.0, -2.0]], dtype=F64)
    p = _marginal(3, seed=3)
    betas = schedules.mutual_information(Dense(rate=rate), 5, p)
    # rates above 1 are not valid D3PM betas (yet): check expm(c_t R) directly
    steps, h0 = betas.shape[0], float(-(p * p.log()).sum())
    assert (betas > 0).all()
    for t, c in enumerate(betas.cumsum(0).tolist(), start=1):
        mi = _brute_mi(torch.linalg.matrix_exp(c * rate), p)
        target = (1 - t / steps) * h0 if t < steps else 0.0
        assert mi == pytest.approx(target, abs=2e-6 * h0 if t == steps else 1e-8)


def test_mask_uniform_mutual_information_falls_linearly() -> None:
    k, steps = 5, 10
    uniform = torch.full((steps,), 0.02, dtype=F64)
    p = _marginal(k, zero_at=k - 1)
    betas = schedules.mutual_information(MaskUniform(k, k - 1, uniform), steps, p[:-1])
    assert betas[-1].item() == 1.0
    _check_linear(MaskUniform(k, k - 1, uniform), betas, p, 1e-9)


def test_mask_uniform_rejects_a_uniform_part_that_is_too_fast() -> None:
    k, steps = 4, 5
    tr = MaskUniform(k, k - 1, torch.full((steps,), 0.9, dtype=F64))
    with pytest.raises(ValueError, match="uniform"):
        schedules.mutual_information(tr, steps, _marginal(k - 1))


def test_rejects_unsupported_transitions_and_bad_marginals() -> None:
    with pytest.raises(ValueError, match="DiscretizedGaussian"):
        schedules.mutual_information(DiscretizedGaussian(4), 5, _marginal(4))
    with pytest.raises(ValueError, match="K = 4"):
        schedules.mutual_information(Uniform(4), 5, _marginal(3))
    with pytest.raises(ValueError, match="zero entropy"):
        schedules.mutual_information(Uniform(4), 5, torch.tensor([0.0, 1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="non-negative"):
        schedules.mutual_information(Uniform(3), 5, torch.tensor([0.5, -0.1, 0.6]))
    disconnected = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]])
    with pytest.raises(ValueError, match="at most"):
        schedules.mutual_information(NearestNeighbor(disconnected, k=1), 5, _marginal(4))
