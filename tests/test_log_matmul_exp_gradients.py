"""Gradients of categorical.log_matmul_exp where p is far from its row maximum.

A near-delta p (log p falling hundreds of nats across the states, as a sharp discretized
logistic gives) times a matrix with tiny or zero entries leaves shifted products that are zero
or subnormal in float64. Their values are recomputed exactly; their gradients must be too,
not 0 / 0 = NaN from log(0)."""

from __future__ import annotations

import math

import torch

from discrete_diffusion.categorical import log_matmul_exp


def _banded(num_classes: int, width: float) -> torch.Tensor:
    """A row-stochastic Gaussian-like matrix whose far entries underflow to exactly 0."""
    i = torch.arange(num_classes, dtype=torch.float64)
    log_m = -((i[:, None] - i[None]) ** 2) / width
    m = log_m.exp()  # exp(-745) and below are 0
    return m / m.sum(-1, keepdim=True)


def _brute(log_p: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """log(p @ M) by logsumexp_i(log p_i + log M_ij), float64 (every column has support)."""
    return torch.logsumexp(log_p[..., :, None] + matrix.log(), dim=-2)


def _rows() -> torch.Tensor:
    k = 17
    states = torch.arange(k, dtype=torch.float64)
    steep = -100.0 * states  # down to -1600 nats: the last columns' shifted products are 0
    sharp = -60.0 * states  # the last column's shifted product is ~1e-300
    ordinary = torch.linspace(-3.0, 0.5, k, dtype=torch.float64).log_softmax(-1)
    return torch.stack([steep, sharp, ordinary, steep.flip(0) - 5.0])


def test_values_and_gradients_match_brute_force_far_below_the_maximum() -> None:
    matrix = _banded(17, 0.3)
    assert (matrix == 0).any()  # the shifted product of a near-delta row is exactly 0 somewhere
    gen = torch.Generator().manual_seed(0)
    upstream = torch.randn(4, 17, generator=gen, dtype=torch.float64)
    log_p = _rows().requires_grad_(True)
    out = log_matmul_exp(log_p, matrix)
    (out * upstream).sum().backward()
    ref_p = _rows().requires_grad_(True)
    ref = _brute(ref_p, matrix)
    (ref * upstream).sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=0)
    assert torch.isfinite(log_p.grad).all()
    torch.testing.assert_close(log_p.grad, ref_p.grad, rtol=1e-10, atol=1e-300)


def test_float32_near_delta_rows_and_batched_matrices_have_finite_exact_gradients() -> None:
    matrix = _banded(17, 0.3)
    log_p = _rows().float().requires_grad_(True)
    out = log_matmul_exp(log_p[None].expand(2, 4, 17), matrix[None].expand(2, 17, 17))
    out.sum().backward()
    ref_p = _rows().float().double().requires_grad_(True)
    (_brute(ref_p, matrix).sum() * 2).backward()
    assert torch.isfinite(log_p.grad).all()
    torch.testing.assert_close(log_p.grad.double(), ref_p.grad, rtol=1e-5, atol=1e-30)


def test_results_without_support_are_minus_inf_and_pass_no_gradient() -> None:
    matrix = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
                          dtype=torch.float64)
    log_p = torch.tensor([[0.0, -800.0, -math.inf]], dtype=torch.float64, requires_grad=True)
    out = log_matmul_exp(log_p, matrix)
    torch.testing.assert_close(out[0, :2], torch.tensor([0.0, -800.0], dtype=torch.float64))
    assert out[0, 2].item() == -math.inf
    out[:, :2].sum().backward()
    torch.testing.assert_close(log_p.grad, torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64))
