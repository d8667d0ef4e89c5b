"""Continuous-time keep-or-jump diffusion: alpha schedules, the ELBO integrands against the
finite-difference limit of D3PM's exact discrete KLs, the discretised D3PM, and the exact
expectations of the S-step and continuous bounds for masking on a tiny vocabulary."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from discrete_diffusion import D3PM, alpha_schedules
from discrete_diffusion.continuous import ContinuousProcess, draw_times, quantise_time
from discrete_diffusion.transitions import Absorbing, Uniform

torch.set_num_threads(1)

SCHEDULES = [alpha_schedules.Linear(), alpha_schedules.Cosine(), alpha_schedules.Polynomial(2.5),
             alpha_schedules.LogLinear(0.1)]
IDS = [s.name for s in SCHEDULES]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_schedules_start_at_one_decrease_and_have_their_derivative(schedule):
    t = torch.linspace(0, 1, 1001, dtype=torch.float64)
    a = schedule.alpha(t)
    assert a.dtype == torch.float64 and a[0] == 1.0
    assert bool((a[1:] < a[:-1]).all())
    assert schedule.final_alpha() == (0.1 if schedule.name == "loglinear" else 0.0)
    torch.testing.assert_close(schedule.one_minus_alpha(t), 1.0 - a, rtol=0, atol=1e-15)
    inner = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    h = 1e-6
    numeric = (schedule.alpha(inner + h) - schedule.alpha(inner - h)) / (2 * h)
    torch.testing.assert_close(schedule.alpha_prime(inner), numeric, rtol=1e-7, atol=1e-8)


def test_invalid_schedule_options_are_rejected():
    with pytest.raises(ValueError, match="exponent"):
        alpha_schedules.Polynomial(0.0)
    with pytest.raises(ValueError, match="eps"):
        alpha_schedules.LogLinear(1.0)


def dense_posterior_kl(kind, schedule, k, s, t, x_0, x_t, p):
    """KL(q(x_s | x_t, x_0) || p(x_s | x_t)) of D3PM's eqs. (3) and (4), float64 dense, from
    the D3PM with alphabar_1 = alpha(s), alphabar_2 = alpha(t)."""
    a_s, a_t = (schedule.alpha(torch.tensor(v, dtype=torch.float64)) for v in (s, t))
    tr = Uniform(k) if kind == "uniform" else Absorbing(k, k - 1)
    proc = D3PM(tr, torch.stack([1 - a_s, 1 - a_t / a_s]))
    cum_s, step = proc.cumulative_matrix(1), proc.transition_matrix(2)
    q = step[:, x_t] * cum_s[x_0]
    model = step[:, x_t] * (p @ cum_s)
    q, model = q / q.sum(), model / model.sum()
    keep = q > 0
    return float((q[keep] * (q[keep].log() - model[keep].log())).sum())


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_integrand_is_the_limit_of_the_discrete_kl(kind, schedule):
    k, gen = 4, torch.Generator().manual_seed(3)
    proc = ContinuousProcess(kind, k, schedule, k - 1 if kind == "absorbing" else None)
    data = range(k - 1) if kind == "absorbing" else range(k)
    for t in (0.03, 0.4, 0.93):
        logits = torch.randn(k, dtype=torch.float64, generator=gen)
        if kind == "absorbing":
            logits[k - 1] = -math.inf  # p~ gives the mask no mass
        p = logits.softmax(-1)
        for x_0, x_t in itertools.product(data, range(k)):
            value = float(proc.integrand(p.log()[None, None], torch.tensor([[x_0]]),
                                         torch.tensor([[x_t]]),
                                         torch.tensor([t], dtype=torch.float64)))
            h = 1e-4
            rate = [dense_posterior_kl(kind, schedule, k, t - dt, t, x_0, x_t, p) / dt
                    for dt in (h / 2, h)]
            limit = 2 * rate[0] - rate[1]  # Richardson: error O(h^2)
            assert value == pytest.approx(limit, rel=1e-6, abs=1e-9), (t, x_0, x_t)
            if kind == "absorbing" and x_t != k - 1:
                assert value == 0.0


def test_uniform_integrand_is_zero_for_the_true_posterior_and_positive_otherwise():
    k = 5
    proc = ContinuousProcess("uniform", k, alpha_schedules.Linear())
    x_0 = torch.arange(k).repeat(3)[None]
    x_t = torch.roll(x_0, 1, -1)
    t = torch.tensor([0.3], dtype=torch.float64)
    exact = torch.nn.functional.one_hot(x_0, k).double().clamp(min=1e-300).log()
    assert proc.integrand(exact, x_0, x_t, t).abs().max() < 1e-9
    noisy = torch.randn(1, x_0.shape[1], k, dtype=torch.float64).log_softmax(-1)
    assert bool((proc.integrand(noisy, x_0, x_t, t) > 0).all())


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=IDS)
def test_discretised_process_keeps_alpha_at_the_grid(kind, schedule):
    proc = ContinuousProcess(kind, 3, schedule, 2 if kind == "absorbing" else None)
    for steps in (1, 7, 20):
        d3pm = proc.discretise(steps)
        i = torch.arange(steps + 1)
        alphabar = d3pm.transition.keep_probability(0 * i, i)
        torch.testing.assert_close(alphabar, schedule.alpha(i.double() / steps),
                                   rtol=1e-12, atol=1e-15)
        final_jump = kind == "absorbing" and schedule.final_alpha() > 0
        assert d3pm.num_steps == steps + final_jump
        if final_jump:  # the last step masks everything
            assert float(d3pm.transition.keep_probability(i[:1] * 0, i[:1] + steps + 1)) == 0


def test_uniform_prior_term_is_the_discrete_prior_kl():
    proc = ContinuousProcess("uniform", 6, alpha_schedules.LogLinear(0.05))
    x_0 = torch.randint(0, 6, (3, 4))
    expected = proc.discretise(5).prior_kl(x_0)
    # (D3PM builds its prior table from float32 log q(x_T | x_0))
    torch.testing.assert_close(proc.prior_term(None, x_0), expected, rtol=1e-5, atol=0)
    assert float(expected[0]) > 0


def test_time_draws_and_their_quantisation():
    gen = torch.Generator().manual_seed(0)
    t = draw_times(8, generator=gen, how="antithetic")
    assert t.dtype == torch.float64
    assert torch.equal((t * 8).floor().long(), torch.arange(8))  # one draw per 1/B bin
    u = draw_times(1000, generator=gen)
    assert 0 < float(u.min()) and float(u.max()) < 1
    torch.testing.assert_close(quantise_time(torch.tensor([1e-30, 0.001, 0.0015, 1.0]), 1000),
                               torch.tensor([1, 1, 2, 1000]))
    with pytest.raises(ValueError, match="time_sampling"):
        draw_times(2, how="stratified")


# ----- exact expectations for masking: S-step bound >= continuous bound --------------------
K_DATA, L, MASK = 2, 3, 2


def toy_data() -> tuple[torch.Tensor, torch.Tensor]:
    """All sequences of {0, 1}^L with positive probabilities, [2^L, L] and [2^L]."""
    seqs = torch.tensor(list(itertools.product(range(K_DATA), repeat=L)))
    probs = torch.tensor([0.3, 0.05, 0.1, 0.15, 0.02, 0.08, 0.2, 0.1], dtype=torch.float64)
    return seqs, probs


def bayes_denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """log p(x_0^n | unmasked positions of x_t) under the toy data, -inf at the mask: the
    Bayes-optimal denoiser of masking, independent of t."""
    seqs, probs = toy_data()
    visible = x_t != MASK
    agree = ((seqs[None] == x_t[:, None]) | ~visible[:, None]).all(-1)  # [B, 2^L]
    weights = agree * probs[None]
    marg = torch.einsum("bs,slk->blk", weights,
                        torch.nn.functional.one_hot(seqs, K_DATA + 1).double())
    return (marg / weights.sum(-1)[:, None, None]).log()


def all_states() -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(K_DATA + 1), repeat=L)))


def expected_discrete_bound(d3pm: D3PM) -> float:
    """E_{x_0 ~ data} of the S-step bound, each term's expectation over x_t by enumeration."""
    seqs, probs = toy_data()
    states = all_states()
    total = 0.0
    for x_0, p0 in zip(seqs, probs):
        x0 = x_0.expand(len(states), L)
        bound = float(d3pm.prior_kl(x_0[None])[0])
        for t in range(1, d3pm.num_steps + 1):
            q = d3pm.q_probs(x_0[None].expand(1, L), t)[0].double()  # [L, K]
            weight = q[torch.arange(L), states].prod(-1)  # q(x_t | x_0) for every x_t
            logits = bayes_denoiser(states, torch.full((len(states),), t))
            terms = d3pm.vb_term(logits, x0, states, t).double().sum(-1)
            bound += float((weight * terms).sum())
        total += float(p0) * bound
    return total


def expected_continuous_bound(proc: ContinuousProcess, nodes: int = 60) -> float:
    """E_{x_0} of the continuous bound: Gauss-Legendre in t of the exact expectation over x_t."""
    seqs, probs = toy_data()
    states = all_states()
    u, w = np.polynomial.legendre.leggauss(nodes)
    times, weights = (u + 1) / 2, w / 2
    total = 0.0
    for x_0, p0 in zip(seqs, probs):
        x0 = x_0.expand(len(states), L)
        value = float(proc.prior_term(bayes_denoiser, x_0[None])[0])
        log_x0 = bayes_denoiser(states, None)
        for t, wt in zip(times, weights):
            a = proc.schedule.alpha(torch.tensor(t, dtype=torch.float64))
            q = torch.where(states == x0, a, torch.where(states == MASK, 1 - a, 0 * a)).prod(-1)
            tt = torch.full((len(states),), t, dtype=torch.float64)
            value += wt * float((q * proc.integrand(log_x0, x0, states, tt).sum(-1)).sum())
        total += float(p0) * value
    return total


@pytest.mark.parametrize("schedule", [alpha_schedules.Linear(), alpha_schedules.Cosine(),
                                      alpha_schedules.LogLinear(0.2)],
                         ids=["linear", "cosine", "loglinear"])
def test_masking_discrete_bound_is_above_the_continuous_one_and_decreases_to_it(schedule):
    proc = ContinuousProcess("absorbing", K_DATA + 1, schedule, MASK)
    continuous = expected_continuous_bound(proc)
    discrete = [expected_discrete_bound(proc.discretise(s)) for s in (1, 2, 4, 8, 16, 64)]
    gaps = [d - continuous for d in discrete]
    assert all(g > 0 for g in gaps)
    assert all(a > b for a, b in zip(gaps, gaps[1:]))  # nested grids: each refinement helps
    assert gaps[-1] < 0.05 * gaps[0]  # and the gap closes (about 1/S)
    if schedule.final_alpha() == 0:
        # for masking with a time-independent denoiser the continuous bound is the integral
        # of E[CE | masked] over alpha: the same for every schedule ending at alpha = 0
        linear = ContinuousProcess("absorbing", K_DATA + 1, alpha_schedules.Linear(), MASK)
        assert continuous == pytest.approx(expected_continuous_bound(linear, 8), rel=1e-9)
