"""Fused closed forms (the optional hooks of D3PM) against the generic path and brute force.

For Uniform, Absorbing and MaskUniform: the fused loss term equals the generic
KL(q(x_s | x_t, x_0) || p(x_s | x_t)) at every (s, t) and every pair (x_0, x_t), with random
and extreme logits, with and without autograd (the no-gradient path works in place);
the fused q_sample draws from q(x_t | x_0) (chi-square on a fixed generator). Both paths are
reached through the public switch, `D3PM(..., fused=True)` against `fused=False`.
"""

from __future__ import annotations

import itertools

import brute
import pytest
import torch
from scipy import stats

from discrete_diffusion import D3PM, schedules
from discrete_diffusion.categorical import categorical_kl
from discrete_diffusion.transitions import Absorbing, DiscretizedGaussian, MaskUniform, Uniform
from discrete_diffusion.transitions.base import FUSED_OPERATIONS
from discrete_diffusion.transitions.mask_uniform import FUSED_MIN_CLASSES

F64 = torch.float64
K = 5
SCHEDULES = {
    "cosine": lambda: schedules.cosine(5),
    "jsd": lambda: schedules.jsd(4),
    # beta_1 = 1e-40: log(alphabar_1 / ((1 - alphabar_1) / K)) ~ 93 > 80, the unbounded path
    "tiny_first": lambda: torch.tensor([1e-40, 0.2, 0.5, 1.0], dtype=F64),
    "zero_then_one": lambda: torch.tensor([0.0, 0.3, 1.0, 0.2], dtype=F64),
}


def _transition(kind: str, steps: int):
    if kind == "uniform":
        return Uniform(K)
    if kind == "absorbing":
        return Absorbing(K, 2)
    if kind == "mask_uniform":
        tr = MaskUniform(K, K - 1, schedules.linear(steps, 0.1, 0.4))
    else:  # a full uniform reset at step 2 (b = 0 from s = 2 on: log b = -inf)
        uniform = torch.full((steps,), 0.2, dtype=F64)
        uniform[1] = 1.0
        tr = MaskUniform(K, 1, uniform)
    return tr


def _pair(kind: str, schedule: str) -> tuple[D3PM, D3PM]:
    """The process with all its fused hooks (at K = 5 MaskUniform would leave its posteriors
    to the generic path), and the same process on the generic path."""
    betas = SCHEDULES[schedule]()
    fused = D3PM(_transition(kind, betas.shape[0]), betas, fused=True)
    generic = D3PM(_transition(kind, betas.shape[0]), betas, fused=False)
    assert fused.fused_operations == frozenset(FUSED_OPERATIONS)
    assert generic.fused_operations == frozenset()
    return fused, generic


def _grid_logits(gen: torch.Generator, extreme: bool, x_t: torch.Tensor) -> torch.Tensor:
    logits = torch.randn(1, K * K, K, generator=gen) * 3
    if extreme:
        logits = torch.sign(logits) * 1e4
        logits.scatter_(-1, x_t[..., None], 1e4)  # x_t itself stays possible
    return logits


KINDS = ["uniform", "absorbing", "mask_uniform", "mask_uniform_reset"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("extreme", [False, True])
def test_fused_vb_term_equals_generic(kind: str, schedule: str, extreme: bool) -> None:
    fused, generic = _pair(kind, schedule)
    gen = torch.Generator().manual_seed(0)
    x_0, x_t = (v.reshape(1, -1) for v in torch.meshgrid(torch.arange(K), torch.arange(K),
                                                          indexing="ij"))
    for s_, t_ in itertools.combinations(range(fused.num_steps + 1), 2):
        s, t = torch.tensor([s_]), torch.tensor([t_])
        log_x0 = _grid_logits(gen, extreme, x_t).log_softmax(-1)
        reach = fused.cumulative_matrix(t_)[x_0, x_t] > 0  # pairs (x_0, x_t) that can occur
        want = generic.vb_term(log_x0, x_0, x_t, t, s=s)
        ok = reach & torch.isfinite(want)
        got = fused.vb_term(log_x0, x_0, x_t, t, s=s)
        torch.testing.assert_close(got[ok], want[ok], atol=2e-4, rtol=1e-4)
        q_f, q_g = (p.q_posterior_logits(x_0, x_t, t, s=s) for p in (fused, generic))
        brute.assert_log_close(q_f[reach], q_g[reach])
        p_f, p_g = (p.p_logits(log_x0, x_t, t, s=s) for p in (fused, generic))
        finite = torch.isfinite(p_g).any(-1)
        brute.assert_log_close(p_f[finite], p_g[finite], atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("schedule", ["cosine", "tiny_first"])
def test_in_place_path_equals_autograd_path(kind: str, schedule: str) -> None:
    """Without autograd the fused operations work in place; values must not change, and the
    gradients through the autograd path must equal those of the generic path."""
    fused, generic = _pair(kind, schedule)
    gen = torch.Generator().manual_seed(3)
    x_0 = torch.randint(0, K, (4, 6), generator=gen)
    t = torch.tensor([1, 2, 3, fused.num_steps])
    x_t = fused.q_sample(x_0, t, generator=gen)
    logits = (torch.randn(4, 6, K, generator=gen, dtype=F64) * 4).requires_grad_(True)
    with torch.no_grad():
        plain = fused.vb_term(logits, x_0, x_t, t)
        plain_p = fused.p_logits(logits, x_t, t)
    graded = fused.vb_term(logits, x_0, x_t, t)
    torch.testing.assert_close(plain, graded.detach(), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(plain_p, fused.p_logits(logits, x_t, t).detach())
    (g_fused,) = torch.autograd.grad(graded.sum(), logits)
    (g_generic,) = torch.autograd.grad(generic.vb_term(logits, x_0, x_t, t).sum(), logits)
    assert torch.isfinite(g_fused).all()
    torch.testing.assert_close(g_fused, g_generic, atol=1e-8, rtol=1e-6)


def test_range_properties_are_decided_at_setup() -> None:
    bounded, unbounded = Uniform(K), Uniform(K)
    bounded.setup(SCHEDULES["cosine"]())
    unbounded.setup(SCHEDULES["tiny_first"]())
    assert bounded.exp_safe_offsets and not unbounded.exp_safe_offsets
    cosine = SCHEDULES["cosine"]()
    positive, reset = _transition("mask_uniform", 5), _transition("mask_uniform_reset", 5)
    positive.setup(cosine)
    reset.setup(cosine)
    assert positive.uniform_keep_positive and not reset.uniform_keep_positive


@pytest.mark.parametrize("kind", KINDS)
def test_fused_q_sample_is_q(kind: str) -> None:
    """Chi-square of the fused draws of x_t given each x_0 against q(x_t | x_0) = Qbar_t."""
    proc, _ = _pair(kind, "cosine")
    n, t = 4000, 3
    gen = torch.Generator().manual_seed(11)
    x_0 = torch.arange(K).repeat_interleave(n).view(K, n)
    x_t = proc.q_sample(x_0, t, generator=gen)
    want = brute.cumulative(proc.transition, t)
    for x in range(K):
        counts = torch.bincount(x_t[x], minlength=K).double()
        support = want[x] > 0
        assert (counts[~support] == 0).all()  # never an impossible state
        if int(support.sum()) == 1:  # a certain outcome: every draw is it
            assert counts[support].item() == n
            continue
        expected = n * want[x][support]
        chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
        assert stats.chi2.sf(chi2, int(support.sum()) - 1) > 1e-4


def test_training_losses_fused_vb_equals_generic_kl() -> None:
    """training_losses' vb on the fused path equals categorical_kl of the public posteriors
    for the same draws (same generator, same t and x_t)."""
    proc, _ = _pair("uniform", "cosine")
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 4, K, generator=gen)
    x_0 = torch.randint(0, K, (3, 4), generator=gen)
    seen = {}

    def denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen["x_t"], seen["t"] = x_t, t
        return logits

    out = proc.training_losses(denoiser, x_0, loss="vb", generator=gen)
    x_t, t = seen["x_t"], seen["t"]
    log_q = proc.q_posterior_logits(x_0, x_t, t)
    log_p = proc.p_logits(logits, x_t, t)
    kl = categorical_kl(log_q, log_p)
    decoder = -log_p.gather(-1, x_0[..., None]).squeeze(-1)
    want = torch.where((t == 1)[:, None], decoder, kl).sum(-1)
    torch.testing.assert_close(out["vb"], want, atol=1e-4, rtol=1e-5)


def test_mask_uniform_small_vocabularies_compose_the_posteriors() -> None:
    """By default (fused=None) MaskUniform leaves its posteriors to the generic path below
    FUSED_MIN_CLASSES classes and uses the closed forms from there on; either way both paths
    give the same posteriors."""
    betas = schedules.linear(3, 0.2, 0.5)
    gen = torch.Generator().manual_seed(4)
    posteriors = {"log_q_posterior", "log_p_posterior"}
    for k in (FUSED_MIN_CLASSES - 1, FUSED_MIN_CLASSES):
        def make(fused: bool | None, k: int = k) -> D3PM:
            return D3PM(MaskUniform(k, 0, schedules.linear(3, 0.1, 0.3)), betas, fused=fused)

        default, fused, generic = make(None), make(True), make(False)
        assert default.fused_operations >= {"sample_cumulative", "posterior_kl"}
        assert (posteriors <= default.fused_operations) == (k >= FUSED_MIN_CLASSES)
        x_0 = torch.randint(0, k, (3, 8), generator=gen)
        t = torch.tensor([1, 2, 3])
        x_t = default.q_sample(x_0, t, generator=gen)
        logits = torch.randn(3, 8, k, generator=gen) * 3
        for proc in (default, fused):
            brute.assert_log_close(proc.q_posterior_logits(x_0, x_t, t),
                                   generic.q_posterior_logits(x_0, x_t, t), atol=1e-5)
            brute.assert_log_close(proc.p_logits(logits, x_t, t),
                                   generic.p_logits(logits, x_t, t), atol=1e-5)


def test_fused_switch_is_checked() -> None:
    """fused=True asks for closed forms a transition must have; anything but a bool or None
    is refused."""
    betas = schedules.cosine(4)
    with pytest.raises(ValueError, match="defines no fused operations"):
        D3PM(DiscretizedGaussian(5), schedules.linear(4, 0.1, 0.5), fused=True)
    with pytest.raises(ValueError, match="fused must be None, True or False"):
        D3PM(Uniform(K), betas, fused="yes")
    assert D3PM(DiscretizedGaussian(5), schedules.linear(4, 0.1, 0.5)).fused_operations == set()
    assert D3PM(Uniform(K), betas).fused_operations == frozenset(FUSED_OPERATIONS)


@pytest.mark.parametrize("k", [2, 3])
def test_uniform_fused_kl_on_the_smallest_vocabularies(k: int) -> None:
    """K = 2 has no state off {x_0, x_t}; the per-example tables must handle it."""
    betas = schedules.cosine(4)
    fused, generic = D3PM(Uniform(k), betas), D3PM(Uniform(k), betas, fused=False)
    gen = torch.Generator().manual_seed(6)
    x_0, x_t = (v.reshape(1, -1) for v in torch.meshgrid(torch.arange(k), torch.arange(k),
                                                          indexing="ij"))
    for s_, t_ in itertools.combinations(range(5), 2):
        s, t = torch.tensor([s_]), torch.tensor([t_])
        log_x0 = (torch.randn(1, k * k, k, generator=gen) * 3).log_softmax(-1)
        torch.testing.assert_close(fused.vb_term(log_x0, x_0, x_t, t, s=s),
                                   generic.vb_term(log_x0, x_0, x_t, t, s=s),
                                   atol=1e-5, rtol=1e-5)
