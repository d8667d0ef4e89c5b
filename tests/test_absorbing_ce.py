"""The absorbing loss term with an added mask is a weighted masked cross-entropy, and the cheap
training path keeps every number.

    L_{t->s} = [x_t = m] (alphabar_s - alphabar_t) / (1 - alphabar_t) (-log p~(x_0 | x_t))

is checked against the generic KL of eq. (3) against eq. (4) (`D3PM(..., fused=False)`) and
against the fused KL of a mask that may be data (today's path), at every (s, t) of schedules
with s = 0 (the decoder term), t = T, a beta = 1 step and a beta = 0 step, in float32 and
float64, with random and extreme logits, values and gradients. Also: the weight against
dense matrices, the autograd function of the uniform and mask-uniform terms against autograd,
and the transformer's pinned mask logit against the fill it replaces.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from discrete_diffusion import D3PM, schedules
from discrete_diffusion.data.base import DataInfo
from discrete_diffusion.methods import diffusion
from discrete_diffusion.networks import transformer
from discrete_diffusion.transitions import Absorbing
from discrete_diffusion.transitions._common import softplus_sum

K = 5
M = K - 1  # the added mask
SCHEDULES = {
    "cosine": lambda: schedules.cosine(5),
    "jsd": lambda: schedules.jsd(4),  # alphabar_T = 0
    "tiny_first": lambda: torch.tensor([1e-40, 0.2, 0.5, 1.0], dtype=torch.float64),
    "zero_then_one": lambda: torch.tensor([0.0, 0.3, 1.0, 0.2], dtype=torch.float64),
}
TOLERANCE = {torch.float32: dict(rtol=1e-6, atol=1e-6), torch.float64: dict(rtol=1e-12,
                                                                               atol=1e-12)}


def _processes(schedule: str) -> tuple[D3PM, D3PM, D3PM]:
    betas = SCHEDULES[schedule]()
    return (D3PM(Absorbing(K, M, added_mask=True), betas, fused=True),
            D3PM(Absorbing(K, M), betas, fused=True),
            D3PM(Absorbing(K, M), betas, fused=False))


def _logits(gen: torch.Generator, n: int, dtype: torch.dtype, extreme: bool) -> torch.Tensor:
    logits = torch.randn(1, n, K, generator=gen, dtype=dtype) * 3
    if extreme:
        logits = torch.sign(logits) * 1e4
    logits[..., M] = diffusion.NO_MASS  # p~ gives the added mask no mass
    return logits


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("extreme", [False, True])
def test_weighted_masked_ce_equals_the_kl(schedule: str, dtype: torch.dtype,
                                          extreme: bool) -> None:
    new, today, generic = _processes(schedule)
    assert new.fused_operations == today.fused_operations
    gen = torch.Generator().manual_seed(0)
    # every real x_0, each with x_t = x_0 and x_t = m, 3 logit draws each
    x_0 = torch.arange(M).repeat(6).view(1, -1)
    x_t = torch.where(torch.arange(x_0.shape[1]).view(1, -1) % 2 == 0, x_0, M)
    for s_, t_ in itertools.combinations(range(new.num_steps + 1), 2):
        s, t = torch.tensor([s_]), torch.tensor([t_])
        reach = new.cumulative_matrix(t_)[x_0[0], x_t[0]] > 0  # pairs that can occur
        x0, xt = x_0[:, reach], x_t[:, reach]
        logits = _logits(gen, x0.shape[1], dtype, extreme).requires_grad_(True)
        terms = [p.vb_term(logits, x0, xt, t, s=s) for p in (new, today, generic)]
        grads = [torch.autograd.grad(v.sum(), logits)[0] for v in terms]
        got = terms[0].detach()
        assert got.dtype == dtype and torch.isfinite(grads[0]).all()
        # today's fused KL, the same dtype throughout (its gradient is NaN where
        # alphabar_t = 1, which the weighted form avoids)
        torch.testing.assert_close(got, terms[1].detach(), **TOLERANCE[dtype])
        finite = torch.isfinite(grads[1])
        torch.testing.assert_close(grads[0][finite], grads[1][finite], **TOLERANCE[dtype])
        # the generic path builds q(x_s | x_t, x_0) in float32 from integer x_0, so it agrees
        # to float32 rounding (relative 1e-4 where the KL is a small difference of logs)
        torch.testing.assert_close(got, terms[2].detach(), rtol=2e-4, atol=1e-6)
        torch.testing.assert_close(grads[0], grads[2], rtol=1e-5, atol=1e-6)
        assert (got[xt != M] == 0).all()


def test_weight_against_dense_matrices() -> None:
    """(alphabar_s - alphabar_t) / (1 - alphabar_t) from Qbar, 1 at s = 0, 0 where nothing is
    masked (alphabar_t = 1)."""
    for schedule in SCHEDULES:
        proc = _processes(schedule)[0]
        tr = proc.transition
        for s_, t_ in itertools.combinations(range(proc.num_steps + 1), 2):
            a_s = float(proc.cumulative_matrix(s_)[0, 0]) if s_ else 1.0
            a_t = float(proc.cumulative_matrix(t_)[0, 0])
            got = float(tr.masked_ce_weight(torch.tensor([s_]), torch.tensor([t_])))
            if a_t == 1.0:  # nothing masked (beta = 0 so far), or 1 - alphabar_t < 1e-16
                if not proc.betas[:t_].any():
                    assert got == 0.0
                continue
            want = (a_s - a_t) / (1.0 - a_t)
            assert got == pytest.approx(want, rel=1e-12, abs=1e-300)
            if s_ == 0 and a_t < 1.0:
                assert got == pytest.approx(1.0, rel=1e-15)


def test_added_mask_is_checked_and_serialised() -> None:
    with pytest.raises(ValueError, match="added_mask must be a bool"):
        Absorbing(K, M, added_mask=1)
    tr = Absorbing(K, M, added_mask=True)
    assert Absorbing(**tr.config()).added_mask
    method = diffusion.build(diffusion.Config(num_steps=4), DataInfo(K - 1, (6,)))
    assert method.process.transition.added_mask
    grey = diffusion.build(diffusion.Config(num_steps=4), DataInfo(K, (6,), mask_index=2))
    assert not grey.process.transition.added_mask


@pytest.mark.parametrize("bounded", [True, False])
def test_softplus_sum_function_against_autograd(bounded: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    log_p = (torch.randn(3, 4, 7, generator=gen, dtype=torch.float64) * 4).log_softmax(-1)
    log_p.requires_grad_(True)
    offset = torch.tensor([-3.0, 2.0, 30.0 if bounded else 95.0], dtype=torch.float64)
    offset = offset.view(3, 1, 1).requires_grad_(True)
    index = torch.randint(0, 7, (3, 4, 2), generator=gen)
    total, picked = softplus_sum(log_p, offset, bounded, index)
    x = log_p + offset
    # (softplus itself returns x above 20, an error of e^-20)
    want = (x.exp().log1p() if bounded else torch.nn.functional.softplus(
        x.clamp(min=-80.0), threshold=200)).sum(-1)
    torch.testing.assert_close(total, want, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(picked, log_p.gather(-1, index))
    w1, w2 = torch.randn(3, 4, generator=gen, dtype=torch.float64), torch.randn(
        3, 4, 2, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad((total * w1).sum() + (picked * w2).sum(), (log_p, offset))
    want_g = torch.autograd.grad((want * w1).sum() + (log_p.gather(-1, index) * w2).sum(),
                                 (log_p, offset))
    for a, b in zip(got, want_g):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_pinned_head_equals_the_fill() -> None:
    """The transformer's pinned mask logit gives the logits, losses and gradients of the fill
    that `as_denoiser` applies to networks without it."""
    k, steps = 11, 6
    net = transformer.TransformerDenoiser(
        transformer.Config(num_layers=1, d_model=16, num_heads=2, mlp_dim=32), k, steps, 8)
    with torch.no_grad():
        net.trunk.head.bias.normal_()

    def plain(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return net(x_t, t)

    gen = torch.Generator().manual_seed(2)
    x_t = torch.randint(0, k, (3, 8), generator=gen)
    t = torch.tensor([1, 3, 6])
    pinned, filled = diffusion.as_denoiser(net, k - 1), diffusion.as_denoiser(plain, k - 1)
    out_p, out_f = pinned(x_t, t), filled(x_t, t)
    assert torch.equal(out_p, out_f)
    assert (out_p[..., k - 1] == diffusion.NO_MASS).all()
    grads = []
    for out in (out_p, out_f):
        loss = (out.log_softmax(-1)[..., : k - 1] * torch.linspace(0, 1, k - 1)).sum()
        grads.append(torch.autograd.grad(loss, list(net.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
