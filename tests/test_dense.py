"""Dense: validation, expm of a rate matrix, tables and structured operations."""

from __future__ import annotations

import brute
import pytest
import scipy.linalg
import torch
from conftest import random_rate, random_stochastic

from discrete_diffusion import schedules
from discrete_diffusion.transitions import Dense, DenseTransition


def test_matrices_structured_operations_equal_dense() -> None:
    tr = Dense(matrices=random_stochastic(5, 4, seed=3))
    tr.setup(schedules.constant(5, 0.5))
    brute.assert_structured_matches_dense(tr)
    torch.testing.assert_close(tr.transition_matrix(2), random_stochastic(5, 4, seed=3)[1])


def test_rate_matrix_uses_expm() -> None:
    rate = random_rate(4, seed=1)
    tr = Dense(rate=rate)
    tr.setup(schedules.linear(4, 0.2, 1.0))
    for t in range(1, 5):
        want = torch.from_numpy(scipy.linalg.expm(float(tr.betas[t - 1]) * rate.numpy()))
        torch.testing.assert_close(tr.transition_matrix(t), want, rtol=1e-10, atol=1e-12)
    brute.assert_structured_matches_dense(tr)


def test_stationary_is_uniform_for_symmetric_rate_and_row_mean_otherwise() -> None:
    off = random_rate(5, seed=2).clamp(min=0.0)
    off = off + off.T
    sym = off - torch.diag(off.sum(1))
    tr = Dense(rate=sym)
    tr.setup(schedules.constant(3, 1.0))
    torch.testing.assert_close(tr.stationary(), torch.full((5,), 0.2, dtype=torch.float64))
    tr = Dense(matrices=random_stochastic(3, 4))
    tr.setup(schedules.constant(3, 0.0))
    torch.testing.assert_close(tr.stationary(), brute.cumulative(tr, 3).mean(0))
    torch.testing.assert_close(tr.stationary().sum(), torch.tensor(1.0, dtype=torch.float64))


def test_spans_are_cached_and_counted() -> None:
    tr = Dense(matrices=random_stochastic(6, 3))
    tr.setup(schedules.constant(6, 0.1))
    before = tr.table_bytes()
    # the given matrices (shared with the one-step table) + cumulative + betas
    assert before == (6 + 6 + 7) * 9 * 8 + 6 * 8
    tr.span_matrix(2, 5)
    assert (2, 5) in tr.spans and tr.table_bytes() == before + 9 * 8
    torch.testing.assert_close(tr.span_matrix(2, 5), brute.span(tr, 2, 5))


def test_subclass_hook_gives_a_working_process() -> None:
    class Lazy(DenseTransition):
        """Q_t = (1 - beta_t) I + beta_t P for a fixed stochastic P."""

        def __init__(self) -> None:
            super().__init__(3)
            self.base = random_stochastic(1, 3, seed=9)[0]

        def _one_step_matrices(self, betas: torch.Tensor) -> torch.Tensor:
            eye = torch.eye(3, dtype=torch.float64)
            return (1 - betas)[:, None, None] * eye + betas[:, None, None] * self.base

        def config(self) -> dict:
            return {}

    tr = Lazy()
    tr.setup(schedules.linear(4, 0.1, 0.9))
    brute.assert_structured_matches_dense(tr)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"matrices": torch.ones(2, 3, 3)}, "does not sum to one"),
        ({"matrices": torch.tensor([[[1.5, -0.5], [0.0, 1.0]]])}, "negative"),
        ({"matrices": torch.ones(3, 3) / 3}, r"\[T, K, K\]"),
        ({"rate": torch.tensor([[-1.0, 1.0], [1.0, -0.5]])}, "sum to zero"),
        ({"rate": torch.tensor([[1.0, -1.0], [1.0, -1.0]])}, "negative off-diagonal"),
        ({"matrices": torch.eye(2)[None], "rate": torch.zeros(2, 2)}, "exactly one"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Dense(**kwargs)


def test_schedule_length_must_match_matrices() -> None:
    tr = Dense(matrices=random_stochastic(3, 2))
    with pytest.raises(ValueError, match="T = 4"):
        tr.setup(schedules.constant(4, 0.1))
