"""Floating-point precision of the process: any dtype of logits on every transition, fused and
generic, and the prior term L_T in float64 against exact values."""

from __future__ import annotations

import decimal
import math
from collections.abc import Callable

import brute
import pytest
import torch
from conftest import random_rate, random_stochastic

import discrete_diffusion as dd
from discrete_diffusion import schedules
from discrete_diffusion.categorical import compute_dtype
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
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
T = 5


def _embeddings(k: int) -> torch.Tensor:
    return torch.randn(k, 3, generator=torch.Generator().manual_seed(0))


# name -> (transition builder, schedule of length T); K = 5 everywhere.
TRANSITIONS: dict[str, Callable[[], tuple[Transition, torch.Tensor]]] = {
    "uniform": lambda: (Uniform(5), schedules.linear(T, 0.05, 0.5)),
    "absorbing": lambda: (Absorbing(5, 4), schedules.jsd(T)),
    "mask_uniform": lambda: (MaskUniform(5, 4, schedules.linear(T, 0.01, 0.1)),
                             schedules.jsd(T)),
    "gaussian": lambda: (DiscretizedGaussian(5, bands=2), schedules.linear(T, 0.05, 0.5)),
    "dense": lambda: (Dense(matrices=random_stochastic(T, 5)), schedules.constant(T, 0.1)),
    "dense_rate": lambda: (Dense(rate=random_rate(5)), schedules.linear(T, 0.1, 1.0)),
    "nearest_neighbor": lambda: (NearestNeighbor(_embeddings(5), k=2),
                                 schedules.linear(T, 0.2, 1.0)),
    "autoregressive": lambda: (Autoregressive(5, 4, T), schedules.jsd(T)),
}


class TableDenoiser:
    """Logits that depend on (t, x_t) through a fixed random table, in a chosen dtype; the
    float64 reference sees the same (rounded) numbers."""

    def __init__(self, k: int, dtype: torch.dtype, requires_grad: bool = False) -> None:
        table = torch.randn(T + 1, k, k, generator=torch.Generator().manual_seed(3)) * 3
        self.table = table.to(dtype).requires_grad_(requires_grad)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.table[t.view(-1, *([1] * (x_t.dim() - 1))), x_t]

    def reference(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        table = self.table.detach().to(F64)
        return lambda x_t, t: table[t.view(-1, *([1] * (x_t.dim() - 1))), x_t]


def _cases() -> list[tuple[str, bool | None]]:
    out = []
    for name, build in TRANSITIONS.items():
        fused = build()[0].fused_operations
        out += [(name, True), (name, False)] if fused else [(name, None)]
    return out


def _rtol(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == F64 else 2e-5  # float32 arithmetic for 32 and 16 bits


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(("name", "fused"), _cases())
def test_every_dtype_of_logits_works_on_every_path(
    name: str, fused: bool | None, dtype: torch.dtype
) -> None:
    tr, betas = TRANSITIONS[name]()
    proc = dd.D3PM(tr, betas, fused=fused)
    x_0 = torch.tensor([[0, 1, 2, 3, 1], [3, 2, 2, 0, 1]])
    den = TableDenoiser(5, dtype)
    ref = den.reference()

    def seeded() -> torch.Generator:
        return torch.Generator().manual_seed(7)

    # the bound (float64 by contract) equals the float64 computation on the same numbers
    bound = proc.nll_bound(den, x_0, generator=seeded())
    assert bound.dtype == F64
    torch.testing.assert_close(bound, proc.nll_bound(ref, x_0, generator=seeded()),
                               rtol=_rtol(dtype), atol=1e-6)
    # training losses without a gradient: in compute_dtype (float32 for 16-bit logits)
    want = compute_dtype(dtype)
    assert want == (torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    with torch.no_grad():
        out = proc.training_losses(den, x_0, generator=seeded())
        expected = proc.training_losses(ref, x_0, generator=seeded())
    for key in ("loss", "vb", "ce"):
        assert out[key].dtype == want, key
        torch.testing.assert_close(out[key].double(), expected[key], rtol=_rtol(dtype),
                                   atol=1e-5)
    # with a gradient: the logits' own dtype receives it
    live = TableDenoiser(5, dtype, requires_grad=True)
    proc.training_losses(live, x_0, generator=seeded())["loss"].sum().backward()
    assert live.table.grad.dtype == dtype and bool(torch.isfinite(live.table.grad).all())
    # one step's posterior and a whole sampling chain
    x_t = proc.q_sample(x_0, 3, seeded())
    logits = den(x_t, torch.full((2,), 3))
    assert proc.p_logits(logits, x_t, 3).dtype == want
    assert proc.vb_term(logits, x_0, x_t, 3).dtype == want
    sample = proc.sample(den, tuple(x_0.shape), generator=seeded())
    assert sample.dtype == torch.long and sample.shape == x_0.shape


# ----- the prior term L_T -----------------------------------------------------------------
def _dense_prior(tr: Transition) -> torch.Tensor:
    """KL(Qbar_T[k] || p(x_T)) per k from float64 products of the dense Q_t."""
    q = brute.cumulative(tr, tr.num_steps)
    pi = tr.stationary().expand_as(q)
    return torch.where(q > 0, q * (q.log() - pi.log()), torch.zeros_like(q)).sum(-1)


def test_uniform_cosine_prior_is_exact() -> None:
    k, steps = 16, 16
    betas = schedules.cosine(steps)
    table = dd.D3PM(Uniform(k), betas).prior_kl(torch.arange(k)[:, None])
    with decimal.localcontext(decimal.Context(prec=50)):  # closed form: a I + (1 - a)/K 11^T
        a = decimal.Decimal(1)
        for b in betas.tolist():
            a *= 1 - decimal.Decimal(b)
        diag, off = a + (1 - a) / k, (1 - a) / k
        exact = float(diag * (diag * k).ln() + (k - 1) * off * (off * k).ln())
    assert exact == pytest.approx(7.0898464680e-08, rel=1e-9)
    torch.testing.assert_close(table, torch.full((k,), exact, dtype=F64), rtol=1e-7, atol=0)


@pytest.mark.parametrize("k", [3, 10, 16])
def test_prior_of_a_schedule_ending_at_one_is_zero_not_negative(k: int) -> None:
    for tr in (Uniform(k), Absorbing(k, k - 1)):
        proc = dd.D3PM(tr, schedules.linear(8, 0.1, 1.0))
        table = proc.prior_kl(torch.arange(k)[:, None])
        assert (table >= 0).all() and table.max() < 1e-15, type(tr).__name__


@pytest.mark.parametrize("name", sorted(set(TRANSITIONS) - {"autoregressive"}))
@pytest.mark.parametrize("end", ["mixed", "partial"])
def test_prior_table_equals_dense_float64(name: str, end: str) -> None:
    tr, betas = TRANSITIONS[name]()
    if end == "partial":  # far from the stationary law: large, finite or infinite KL
        betas = betas * 0.2
    proc = dd.D3PM(tr, betas)
    k = proc.num_classes
    table = proc.prior_kl(torch.arange(k)[:, None])
    exact = _dense_prior(tr)
    assert table.dtype == F64 and (table >= 0).all()
    assert torch.equal(torch.isinf(table), torch.isinf(exact))
    finite = torch.isfinite(exact)
    torch.testing.assert_close(table[finite], exact[finite].clamp(min=0.0), rtol=1e-6,
                               atol=1e-14)


def test_prior_of_the_autoregressive_process_is_zero() -> None:
    tr, betas = TRANSITIONS["autoregressive"]()
    proc = dd.D3PM(tr, betas)
    assert torch.equal(proc.prior_kl(torch.tensor([[0, 1, 2, 3, 4]])),
                       torch.zeros(1, dtype=F64))


def test_prior_table_rows_come_in_chunks_of_bounded_size() -> None:
    # K = 3000: chunks of 1398 rows; each row equals the closed form of the uniform process
    k = 3000
    proc = dd.D3PM(Uniform(k), schedules.cosine(10))
    table = proc.prior_kl(torch.arange(k)[:, None])
    a = math.exp(float(torch.log1p(-schedules.cosine(10)).sum()))
    diag, off = a + (1 - a) / k, (1 - a) / k
    exact = diag * math.log(diag * k) + (k - 1) * off * math.log(off * k)
    torch.testing.assert_close(table, torch.full((k,), exact, dtype=F64), rtol=1e-6, atol=0)
