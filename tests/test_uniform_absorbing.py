"""Uniform and Absorbing: closed forms against dense products, stationarity, fast sampling."""

from __future__ import annotations

import itertools

import brute
import pytest
import torch

from discrete_diffusion import schedules
from discrete_diffusion.categorical import categorical_kl
from discrete_diffusion.transitions import Absorbing, Uniform

SCHEDULES = {
    "linear": lambda: schedules.linear(6, 0.05, 0.5),
    "jsd": lambda: schedules.jsd(5),
    "cosine": lambda: schedules.cosine(6),
    "with_one_and_zero": lambda: torch.tensor([0.0, 0.3, 1.0, 0.2, 0.0], dtype=torch.float64),
}


def _make(kind: str, betas: torch.Tensor):
    tr = Uniform(4) if kind == "uniform" else Absorbing(4, 1 if kind == "absorbing" else 3)
    tr.setup(betas)
    return tr


@pytest.mark.parametrize("kind", ["uniform", "absorbing", "absorbing_last"])
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_structured_operations_equal_dense(kind: str, schedule: str) -> None:
    brute.assert_structured_matches_dense(_make(kind, SCHEDULES[schedule]()))


def test_uniform_dense_form() -> None:
    tr = _make("uniform", schedules.linear(4, 0.1, 0.4))
    beta = float(tr.betas[1])
    want = (1 - beta) * torch.eye(4, dtype=torch.float64) + beta / 4
    torch.testing.assert_close(tr.transition_matrix(2), want)
    alphabar = float(torch.prod(1 - tr.betas[:3]))
    torch.testing.assert_close(tr.cumulative_matrix(3),
                               alphabar * torch.eye(4, dtype=torch.float64) + (1 - alphabar) / 4)


def test_absorbing_dense_form() -> None:
    tr = _make("absorbing_last", schedules.linear(4, 0.1, 0.4))
    beta = float(tr.betas[0])
    want = (1 - beta) * torch.eye(4, dtype=torch.float64)
    want[:, 3] += beta
    torch.testing.assert_close(tr.transition_matrix(1), want)
    assert tr.transition_matrix(1)[3, 3] == 1.0


def test_absorbing_reaches_the_mask_exactly_with_jsd() -> None:
    tr = _make("absorbing_last", schedules.jsd(7))
    pi = tr.stationary()
    assert torch.equal(tr.cumulative_matrix(7), pi.expand(4, 4))
    x_0 = torch.arange(4)[None]
    q_t = tr.log_cumulative(x_0, torch.tensor([7])).exp().double()
    assert torch.equal(q_t, pi.expand(1, 4, 4).float().double())


def test_uniform_with_cosine_is_close_to_uniform() -> None:
    tr = Uniform(5)
    tr.setup(schedules.cosine(1000))
    q_T = tr.log_cumulative(torch.arange(5)[None], torch.tensor([1000])).exp().double()
    assert (q_T - tr.stationary()).abs().max() < 1e-4
    # and the stationary distribution is invariant under every Q_t
    for t in (1, 500, 1000):
        torch.testing.assert_close(tr.stationary() @ tr.transition_matrix(t), tr.stationary())


@pytest.mark.parametrize("kind", ["uniform", "absorbing"])
def test_sample_cumulative_matches_q(kind: str) -> None:
    tr = _make(kind, schedules.linear(5, 0.1, 0.4))
    n, t = 20000, 3
    x_0 = torch.full((n, 1), 2, dtype=torch.long)
    x_t = tr.sample_cumulative(x_0, torch.full((n,), t), torch.Generator().manual_seed(0))
    freq = torch.bincount(x_t.view(-1), minlength=4).double() / n
    want = tr.cumulative_matrix(t)[2]
    se = (want * (1 - want) / n).sqrt()
    assert ((freq - want).abs() <= 5 * se + 1e-12).all()


def test_table_bytes_counts_only_o_t_tables() -> None:
    tr = _make("uniform", schedules.cosine(100))
    assert 0 < tr.table_bytes() <= 5 * 101 * 8  # O(T) float64 tables, no K x K


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        Uniform(1)
    with pytest.raises(ValueError, match="mask_index"):
        Absorbing(4, 4)
    with pytest.raises(RuntimeError, match="setup"):
        Uniform(3).transition_matrix(1)
    tr = _make("uniform", schedules.jsd(3))
    with pytest.raises(ValueError, match="t must be"):
        tr.transition_matrix(0)
    with pytest.raises(ValueError, match="t must be"):
        tr.cumulative_matrix(4)
    with pytest.raises(ValueError, match="betas"):
        Uniform(3).setup(torch.tensor([0.5, 1.5]))


def _generic(tr, x_0, x_t, log_x0, s, t):
    """The posteriors from the base operations alone (what D3PM does without hooks)."""
    col = tr.log_transition_column(x_t, s, t)
    q = (col + tr.log_cumulative(x_0, s)).log_softmax(-1)
    p = (col + tr.log_cumulative_soft(log_x0, s)).log_softmax(-1)
    return q, p


@pytest.mark.parametrize("kind", ["uniform", "absorbing", "absorbing_last"])
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("logits_kind", ["random", "extreme"])
def test_fused_posteriors_equal_generic(kind: str, schedule: str, logits_kind: str) -> None:
    tr = _make(kind, SCHEDULES[schedule]())
    k, steps = tr.num_classes, tr.num_steps
    gen = torch.Generator().manual_seed(0)
    x_0, x_t = (v.reshape(1, -1) for v in torch.meshgrid(torch.arange(k), torch.arange(k),
                                                          indexing="ij"))
    for s_, t_ in itertools.combinations(range(steps + 1), 2):
        s, t = torch.tensor([s_]), torch.tensor([t_])
        logits = torch.randn(1, k * k, k, generator=gen) * 3
        if logits_kind == "extreme":
            logits = torch.sign(logits) * 1e4
            logits.scatter_(-1, x_t[..., None], 1e4)  # x_t itself stays possible
        log_x0 = logits.log_softmax(-1)
        q, p = _generic(tr, x_0, x_t, log_x0, s, t)
        reach = torch.isfinite(q).any(-1)  # pairs (x_0, x_t) that can occur
        brute.assert_log_close(tr.log_q_posterior(x_0, x_t, s, t)[reach], q[reach])
        ok = torch.isfinite(p).any(-1)
        brute.assert_log_close(tr.log_p_posterior(log_x0, x_t, s, t)[ok], p[ok], atol=1e-5)
        if hasattr(tr, "posterior_kl"):
            want = categorical_kl(q, p)[reach & ok]
            got = tr.posterior_kl(x_0, x_t, log_x0, s, t)[reach & ok]
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["uniform", "absorbing_last"])
def test_fused_paths_have_finite_gradients(kind: str) -> None:
    tr = _make(kind, schedules.jsd(5))
    gen = torch.Generator().manual_seed(1)
    x_0 = torch.randint(0, 3, (4, 6), generator=gen)
    x_t = torch.where(torch.rand(4, 6, generator=gen) < 0.5, x_0, torch.full_like(x_0, 3))
    s, t = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 4, 5])
    logits = torch.randn(4, 6, 4, generator=gen) * 1e4
    logits[0, :, 3] = 1e4  # the denoiser is sure of the mask somewhere: p~_m = 1
    logits.requires_grad_(True)
    log_x0 = logits.log_softmax(-1)
    q = tr.log_q_posterior(x_0, x_t, s, t)
    loss = categorical_kl(q, tr.log_p_posterior(log_x0, x_t, s, t)).sum()
    if hasattr(tr, "posterior_kl"):
        loss = loss + tr.posterior_kl(x_0, x_t, log_x0, s, t).sum()
    loss.backward()
    assert torch.isfinite(logits.grad).all()
