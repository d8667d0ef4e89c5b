"""The mutual-information schedule: I(x_t; x_0) falls linearly, checked by enumeration."""

from __future__ import annotations

import brute
import pytest
import torch
from conftest import random_stochastic

from discrete_diffusion import schedules
from discrete_diffusion.mutual_info import (
    STEP_BETA_RANGE,
    mutual_information_of,
    stepwise_betas,
)
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


@pytest.mark.parametrize(("bands", "steps"), [(None, 1), (None, 3), (None, 8), (2, 3),
                                               (4, 12)])
def test_gaussian_mutual_information_falls_linearly(bands: int | None, steps: int) -> None:
    """Chosen step by step; checked on products of the dense Q_t of the set-up process. The
    widest Gaussian step keeps part of each row in place, so the last step cannot remove the
    last 1/T of the information: it takes the largest beta, and I(x_T; x_0) is what it
    leaves."""
    k = 6
    p = _marginal(k, zero_at=1, seed=5)
    h0 = float(-(p[p > 0] * p[p > 0].log()).sum())
    betas = schedules.mutual_information(DiscretizedGaussian(k, bands), steps, p)
    assert betas.dtype == F64 and betas.shape == (steps,) and (betas > 0).all()
    tr = DiscretizedGaussian(k, bands)
    tr.setup(betas)
    for t in range(1, steps):
        mi = _brute_mi(brute.cumulative(tr, t), p)
        assert mi == pytest.approx((1 - t / steps) * h0, abs=1e-10)
    assert betas[-1].item() == pytest.approx(STEP_BETA_RANGE[1], rel=1e-12)
    last = _brute_mi(brute.cumulative(tr, steps), p)
    widest = DiscretizedGaussian(k, bands).step_matrix(STEP_BETA_RANGE[1])
    assert last < h0 / steps
    assert last == pytest.approx(_brute_mi(brute.cumulative(tr, steps - 1) @ widest, p),
                                 rel=1e-9)


def test_stepwise_solver_reproduces_the_closed_form_uniform_schedule() -> None:
    """Uniform's Q(beta) = (1 - beta) I + beta/K 11^T through the generic stepwise solver gives
    the betas of the one-parameter path, and beta_T -> 1 (I(x_T; x_0) = final_tolerance H)."""
    k, steps = 5, 7
    p = _marginal(k, seed=6)

    def step_matrix(beta: float) -> torch.Tensor:
        return (1 - beta) * torch.eye(k, dtype=F64) + beta / k

    stepwise = stepwise_betas(step_matrix, steps, p, beta_range=(1e-12, 1.0))
    closed = schedules.mutual_information(Uniform(k), steps, p)
    torch.testing.assert_close(stepwise[:-1], closed[:-1], rtol=1e-9, atol=0)
    assert 0.99 < stepwise[-1].item() <= 1.0
    # a rough solve stays close
    rough = stepwise_betas(step_matrix, steps, p, beta_range=(1e-12, 1.0), refine=False)
    torch.testing.assert_close(rough[:-1], closed[:-1], rtol=1e-5, atol=0)


def test_a_narrow_band_follows_the_target_as_far_as_it_can_and_warns() -> None:
    """bands = 2 at K = 6 cannot halve the information left in one step near the end: from
    the first step that misses its target on, every step takes the largest beta."""
    k, steps = 6, 8
    p = _marginal(k, zero_at=1, seed=5)
    h0 = float(-(p[p > 0] * p[p > 0].log()).sum())
    with pytest.warns(UserWarning, match=r"from step (\d) of 8 on, even the largest beta") as rec:
        betas = schedules.mutual_information(DiscretizedGaussian(k, 2), steps, p)
    first = int(str(rec[0].message).split("from step ")[1].split()[0])
    assert 1 < first < steps
    tr = DiscretizedGaussian(k, 2)
    tr.setup(betas)
    infos = [_brute_mi(brute.cumulative(tr, t), p) for t in range(steps + 1)]
    for t in range(1, first):
        assert infos[t] == pytest.approx((1 - t / steps) * h0, abs=1e-10)
    assert (betas[first - 1:] == betas[-1]).all()
    assert betas[-1].item() == pytest.approx(STEP_BETA_RANGE[1], rel=1e-12)
    assert all(b < a for a, b in zip(infos, infos[1:]))  # still falling at every step
    assert infos[first] > (1 - first / steps) * h0
    assert f"{infos[-1]:.3g} nats" in str(rec[0].message)


def test_rejects_unsupported_transitions_and_bad_marginals() -> None:
    with pytest.raises(ValueError, match="Dense has no one-parameter family"):
        schedules.mutual_information(Dense(matrices=random_stochastic(5, 4)), 5, _marginal(4))
    with pytest.raises(ValueError, match="Autoregressive has no"):
        schedules.mutual_information(Autoregressive(4, 3, 5), 5, _marginal(4))
    with pytest.raises(ValueError, match="K = 4"):
        schedules.mutual_information(Uniform(4), 5, _marginal(3))
    with pytest.raises(ValueError, match="zero entropy"):
        schedules.mutual_information(Uniform(4), 5, torch.tensor([0.0, 1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="non-negative"):
        schedules.mutual_information(Uniform(3), 5, torch.tensor([0.5, -0.1, 0.6]))
    disconnected = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]])
    with pytest.raises(ValueError, match="at most"):
        schedules.mutual_information(NearestNeighbor(disconnected, k=1), 5, _marginal(4))
