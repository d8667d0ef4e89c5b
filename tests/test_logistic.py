"""The truncated discretized logistic head against brute-force CDF differences."""

from __future__ import annotations

import math

import pytest
import torch

import discrete_diffusion as dd
from discrete_diffusion import logistic, schedules
from discrete_diffusion.categorical import categorical_kl
from discrete_diffusion.transitions import DiscretizedGaussian


def _brute(loc: float, log_scale: float, num_classes: int, shift: float) -> torch.Tensor:
    """Probabilities by plain float64 CDF differences, renormalised over the bins."""
    centres = torch.linspace(-1.0, 1.0, num_classes, dtype=torch.float64)
    half = 1.0 / (num_classes - 1)
    inv_s = math.exp(shift - log_scale)
    upper = torch.sigmoid(inv_s * (centres - loc + half))
    lower = torch.sigmoid(inv_s * (centres - loc - half))
    mass = upper - lower
    return mass / mass.sum()


@pytest.mark.parametrize("shift", [2.0, 0.0])
@pytest.mark.parametrize("num_classes", [2, 7, 256])
def test_matches_brute_force_cdf_differences(num_classes: int, shift: float) -> None:
    for loc, log_scale in [(0.0, 0.0), (0.3, -1.0), (-0.97, 1.5), (1.0, 3.0), (0.41, -3.0)]:
        out = logistic.logits(
            torch.tensor(loc, dtype=torch.float64),
            torch.tensor(log_scale, dtype=torch.float64),
            num_classes=num_classes,
            scale_shift=shift,
        )
        expected = _brute(loc, log_scale, num_classes, shift)
        torch.testing.assert_close(out.exp(), expected, rtol=1e-9, atol=1e-12)


def test_sums_to_one_and_shapes() -> None:
    gen = torch.Generator().manual_seed(0)
    loc = torch.rand(2, 3, 4, generator=gen) * 2 - 1
    log_scale = torch.randn(2, 3, 4, generator=gen)
    out = logistic.logits(loc, log_scale, num_classes=16)
    assert out.shape == (2, 3, 4, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(2, 3, 4))


def test_float32_agrees_with_float64() -> None:
    loc = torch.linspace(-1.2, 1.2, 11)
    log_scale = torch.linspace(-6.0, 4.0, 11)
    out32 = logistic.logits(loc, log_scale)
    out64 = logistic.logits(loc.double(), log_scale.double())
    torch.testing.assert_close(out32.exp().double(), out64.exp(), rtol=0, atol=1e-5)


def test_extreme_parameters_are_finite_with_finite_gradients() -> None:
    values = [-1e30, -50.0, -1.0, 0.0, 1.0, 50.0, 1e30]
    loc = torch.tensor(values).repeat_interleave(len(values)).requires_grad_(True)
    log_scale = torch.tensor(values).repeat(len(values)).requires_grad_(True)
    out = logistic.logits(loc, log_scale, num_classes=32)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.exp().sum(-1), torch.ones(len(values) ** 2))
    (out[:, ::3].sum()).backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(log_scale.grad).all()


def test_tiny_scale_is_a_delta_on_the_nearest_bin() -> None:
    centres = torch.linspace(-1, 1, 9)
    loc = centres[3] + 0.2 * (centres[1] - centres[0])  # inside bin 3
    out = logistic.logits(loc, torch.tensor(-20.0), num_classes=9)
    assert out.argmax().item() == 3
    assert out[3].exp().item() == pytest.approx(1.0, abs=1e-6)


def test_huge_scale_is_uniform() -> None:
    out = logistic.logits(torch.tensor(0.3), torch.tensor(200.0), num_classes=5)
    torch.testing.assert_close(out.exp(), torch.full((5,), 0.2))


def test_log1m_exp_neg_matches_direct_formula() -> None:
    x = torch.tensor([1e-10, 1e-3, 0.5, math.log(2.0), 1.0, 5.0, 40.0], dtype=torch.float64)
    values = x.tolist()
    # reference: log(-expm1(-x)) is exact near 0, log1p(-exp(-x)) for large x
    reference = [
        math.log(-math.expm1(-v)) if v < 0.1 else math.log1p(-math.exp(-v)) for v in values
    ]
    expected = torch.tensor(reference, dtype=torch.float64)
    torch.testing.assert_close(logistic.log1m_exp_neg(x), expected, rtol=1e-12, atol=0)


def test_rejects_one_class() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        logistic.logits(torch.tensor(0.0), torch.tensor(0.0), num_classes=1)


def test_near_delta_head_through_the_gaussian_posterior_has_finite_gradients() -> None:
    """A sharp head at the edge bin (loc ~ -1, small scale) makes p~ a near-delta whose log
    falls ~900 nats over 17 bins; its product with the Gaussian's Qbar_s (entries down to 0)
    once took log(0) and gave NaN gradients to every parameter (training skipped updates)."""
    process = dd.D3PM(DiscretizedGaussian(17), schedules.linear(250, 4e-4, 0.08))
    loc = torch.tensor([[-0.99994]], requires_grad=True)
    log_scale = torch.tensor([[-4.16]], requires_grad=True)
    x_0, x_t, t = torch.tensor([[0]]), torch.tensor([[0]]), torch.tensor([4])
    log_p = process.p_logits(logistic.logits(loc, log_scale, 17), x_t, t)
    kl = categorical_kl(process.q_posterior_logits(x_0, x_t, t), log_p)
    assert torch.isfinite(kl).all()
    kl.sum().backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(log_scale.grad).all()
    # the same KL from float64 parameters and a brute-force logsumexp product
    loc64, scale64 = loc.detach().double().requires_grad_(), log_scale.detach().double()
    log_x0 = logistic.logits(loc64, scale64.requires_grad_(), 17)
    log_m = process.cumulative_matrix(3).log()
    log_cum = torch.logsumexp(log_x0[..., :, None] + log_m, dim=-2)
    column = process.transition_matrix(4)[:, 0].log()
    brute = categorical_kl(process.q_posterior_logits(x_0, x_t, t).double(),
                           (column + log_cum).log_softmax(-1))
    brute.sum().backward()
    torch.testing.assert_close(kl.double(), brute, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(loc.grad.double(), loc64.grad, rtol=1e-3, atol=1e-9)
    torch.testing.assert_close(log_scale.grad.double(), scale64.grad, rtol=1e-3, atol=1e-9)
