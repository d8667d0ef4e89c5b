"""Log-space categorical helpers against direct float64 computations."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from discrete_diffusion.categorical import (
    categorical_kl,
    cross_entropy,
    gumbel_max,
    log1mexp,
    log_matmul_exp,
    uniform_noise,
)

INF = math.inf


def test_kl_matches_direct_sum_and_handles_zeros() -> None:
    p = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.25, 0.25, 0.5], [0.5, 0.0, 0.5]], dtype=torch.float64)
    got = categorical_kl(p.log(), q.log())
    want = torch.tensor([0.5 * math.log(2) * 2, math.log(2)], dtype=torch.float64)
    torch.testing.assert_close(got, want)
    # zero p with zero q: 0 * log(0/0) = 0, never NaN
    assert categorical_kl(p[1:].log(), p[1:].log()).item() == 0.0


def test_kl_is_inf_where_q_misses_mass_of_p() -> None:
    p = torch.tensor([0.5, 0.5]).log()
    q = torch.tensor([1.0, 0.0]).log()
    assert categorical_kl(p, q).item() == INF


def test_kl_gradient_is_finite_with_minus_inf_entries() -> None:
    log_p = torch.tensor([0.0, -INF, -INF])
    logits = torch.tensor([1.0, -INF, 2.0], requires_grad=True)
    categorical_kl(log_p, logits.log_softmax(-1)).backward()
    assert torch.isfinite(logits.grad[[0, 2]]).all()
    assert not torch.isnan(logits.grad).any()


def test_kl_nonnegative_on_random_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(100, 7, generator=gen).mul(3).log_softmax(-1)
    b = torch.randn(100, 7, generator=gen).mul(3).log_softmax(-1)
    assert (categorical_kl(a, b) >= -1e-6).all()
    assert categorical_kl(a, a).abs().max() < 1e-6


def test_cross_entropy_gathers_the_target() -> None:
    log_q = torch.tensor([[0.2, 0.8], [0.6, 0.4]]).log()
    got = cross_entropy(log_q, torch.tensor([1, 0]))
    torch.testing.assert_close(got, -torch.tensor([0.8, 0.6]).log())


def test_log1mexp_is_accurate_at_both_ends() -> None:
    x = torch.tensor([-1e-20, -1e-5, -0.5, -1.0, -30.0, -800.0], dtype=torch.float64)
    want = torch.tensor([math.log(1e-20), math.log(-math.expm1(-1e-5)), math.log1p(-math.exp(-0.5)),
                         math.log1p(-math.exp(-1.0)), math.log1p(-math.exp(-30.0)), 0.0],
                        dtype=torch.float64)
    torch.testing.assert_close(log1mexp(x), want, rtol=1e-12, atol=1e-300)
    assert log1mexp(torch.tensor([0.0])).item() == -INF
    assert log1mexp(torch.tensor([-INF])).item() == 0.0


def test_log_matmul_exp_matches_direct_and_survives_underflow() -> None:
    gen = torch.Generator().manual_seed(0)
    m = torch.rand(4, 5, generator=gen, dtype=torch.float64)
    log_p = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(log_matmul_exp(log_p, m), (log_p.exp() @ m).log())
    # shifted far below float range: the result shifts by the same amount
    torch.testing.assert_close(log_matmul_exp(log_p - 2000.0, m), (log_p.exp() @ m).log() - 2000.0)
    # -inf rows and entries stay -inf, never NaN
    out = log_matmul_exp(torch.full((1, 4), -INF, dtype=torch.float64), m)
    assert torch.isneginf(out).all()
    batched = log_matmul_exp(log_p[None].expand(2, 3, 4), m[None].expand(2, 4, 5))
    torch.testing.assert_close(batched[1], (log_p.exp() @ m).log())


def test_uniform_noise_is_float64_and_strictly_inside() -> None:
    u = uniform_noise((10000,), generator=torch.Generator().manual_seed(0))
    assert u.dtype == torch.float64
    assert (u > 0).all() and (u < 1).all()


def test_gumbel_max_frequencies_match_probabilities() -> None:
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    n = 40000
    x = gumbel_max(probs.log().expand(n, -1), torch.Generator().manual_seed(0))
    freq = torch.bincount(x, minlength=5).double() / n
    se = (probs.double() * (1 - probs.double()) / n).sqrt()
    assert freq[4] == 0.0  # zero probability is never drawn
    assert ((freq - probs.double()).abs() <= 5 * se + 1e-12).all()


def test_gumbel_max_is_reproducible_and_chunk_independent(monkeypatch) -> None:
    logits = torch.randn(50, 9, generator=torch.Generator().manual_seed(1))
    a = gumbel_max(logits, torch.Generator().manual_seed(7))
    b = gumbel_max(logits, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    import discrete_diffusion.categorical as cat

    monkeypatch.setattr(cat, "_GUMBEL_CHUNK", 20)  # forces many chunks
    c = gumbel_max(logits, torch.Generator().manual_seed(7))
    assert torch.equal(a, c)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1e4, 1e4), min_size=2, max_size=6),
       st.lists(st.floats(-1e4, 1e4), min_size=2, max_size=6))
def test_kl_finite_and_nonnegative_for_extreme_logits(a: list[float], b: list[float]) -> None:
    n = min(len(a), len(b))
    log_p = torch.tensor(a[:n]).log_softmax(-1)
    log_q = torch.tensor(b[:n]).log_softmax(-1)
    kl = categorical_kl(log_p, log_q)
    assert torch.isfinite(kl) and kl >= -1e-4 * (1 + log_q.abs().max())


def test_kl_propagates_nan_from_either_input() -> None:
    log_p = torch.tensor([0.0, -INF, -INF])
    bad = torch.tensor([0.0, math.nan, -INF])
    assert categorical_kl(log_p, bad).isnan()
    assert categorical_kl(bad, torch.tensor([-1.0, -1.0, -1.5])).isnan()


def test_kl_ignores_probabilities_below_float_range() -> None:
    log_p = torch.tensor([[0.0, -200.0, -INF]]).log_softmax(-1)
    log_q = torch.tensor([[-0.1, -5.0, -3.0]]).log_softmax(-1)
    want = float(log_p[0, 0] - log_q[0, 0])  # the other terms are below 1e-80
    assert categorical_kl(log_p, log_q).item() == pytest.approx(want, abs=1e-6)


def test_log_matmul_exp_keeps_mass_far_below_the_row_maximum() -> None:
    m = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    log_p = torch.tensor([[0.0, -2e4], [-5.0, 0.0]])  # the first row's mass maps to column 1
    out = log_matmul_exp(log_p, m)
    torch.testing.assert_close(out[0], torch.tensor([-2e4, 0.0]))
    torch.testing.assert_close(out[1], torch.tensor([0.0, -5.0]))
    batched = log_matmul_exp(log_p[None].expand(3, 2, 2), m[None].expand(3, 2, 2))
    torch.testing.assert_close(batched[2], out)
