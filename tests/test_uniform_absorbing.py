"""Uniform and Absorbing: closed forms against dense products, stationarity, fast sampling."""

from __future__ import annotations

import brute
import pytest
import torch

from discrete_diffusion import schedules
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
    assert 0 < tr.table_bytes() <= 3 * 101 * 8


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
