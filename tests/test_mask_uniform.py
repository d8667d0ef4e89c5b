"""MaskUniform: closed forms against dense products, and the BERT connection by enumeration."""

from __future__ import annotations

import itertools

import brute
import pytest
import torch
from test_gaussian import check_against_dense, check_process_against_dense

from discrete_diffusion import D3PM, schedules
from discrete_diffusion.transitions import MaskUniform

F64 = torch.float64


def _process(k: int = 5, mask: int = 2, steps: int = 4, seed: int = 0) -> D3PM:
    gen = torch.Generator().manual_seed(seed)
    uniform = torch.rand(steps, generator=gen, dtype=F64) * 0.5
    betas = torch.rand(steps, generator=gen, dtype=F64) * 0.5
    return D3PM(MaskUniform(k, mask, uniform), betas)


def test_one_step_matrix_is_the_described_mixture() -> None:
    k, mask, m_t, u_t = 5, 1, 0.2, 0.3
    tr = MaskUniform(k, mask, torch.tensor([u_t], dtype=F64))
    tr.setup(torch.tensor([m_t], dtype=F64))
    q = tr.transition_matrix(1)
    real = [i for i in range(k) if i != mask]
    for i in real:
        for j in real:
            expected = (1 - m_t) * ((1 - u_t) * (i == j) + u_t / (k - 1))
            assert q[i, j].item() == pytest.approx(expected, rel=1e-12)
        assert q[i, mask].item() == pytest.approx(m_t, rel=1e-12)
    assert q[mask].tolist() == [float(j == mask) for j in range(k)]


@pytest.mark.parametrize("mask", [0, 2, 4])
def test_structured_operations_equal_dense(mask: int) -> None:
    proc = _process(mask=mask)
    check_against_dense(proc.transition, invariant_prior=False)  # the mask is not yet certain
    check_process_against_dense(proc)


def test_spans_stay_exact_after_a_certain_mask_step() -> None:
    # beta_T = 1 (jsd schedule) masks everything at T; spans before T must still be exact.
    steps = 4
    tr = MaskUniform(4, 3, torch.full((steps,), 0.2, dtype=F64))
    proc = D3PM(tr, schedules.jsd(steps))
    check_against_dense(tr)
    torch.testing.assert_close(tr.stationary(), torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=F64))
    x_0 = torch.tensor([[0, 1, 2, 3]])
    assert proc.prior_kl(x_0).item() == pytest.approx(0.0, abs=1e-6)


def test_sample_cumulative_matches_q_probs() -> None:
    proc = _process(k=4, mask=1, steps=3)
    n = 40000
    x_0 = torch.tensor([0, 1, 3]).repeat(n, 1)  # a real token, the mask, a real token
    t = torch.full((n,), 3)
    draws = proc.transition.sample_cumulative(x_0, t, torch.Generator().manual_seed(1))
    freq = torch.nn.functional.one_hot(draws, 4).double().mean(0)  # [3, K]
    expected = proc.q_probs(x_0[:1], 3)[0].double()
    torch.testing.assert_close(freq, expected, rtol=0, atol=0.012)


def test_bert_one_step_process_by_enumeration() -> None:
    """T = 1, 10% to [MASK], 5% to a uniform real token: the bound's decoder term
    E_q(x_1|x_0)[-log p(x_0 | x_1)] (eq. 4) is the BERT cross-entropy: exactly -log p~ at
    masked positions (p~ puts zero on the mask), and -log of p~ reweighted by q(x_1 | x_0)
    at the others."""
    k, mask, length = 4, 3, 3
    tr = MaskUniform(k, mask, torch.tensor([0.05 / 0.9], dtype=F64))
    proc = D3PM(tr, schedules.constant(1, 0.1))
    x_0 = torch.tensor([[0, 2, 0]])
    q1 = proc.q_probs(x_0, 1)[0].double()  # [L, K]
    torch.testing.assert_close(q1[0], torch.tensor([0.85 + 0.05 / 3, 0.05 / 3, 0.05 / 3, 0.1],
                                                   dtype=F64))
    gen = torch.Generator().manual_seed(3)
    table = torch.randn(k**length, length, k, generator=gen, dtype=F64)
    table[..., mask] = float("-inf")  # p~ never predicts the mask

    def denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        code = (x_t * k ** torch.arange(length)).sum(-1)  # context-dependent logits
        return table[code].float()

    bound = bert = masked_only = 0.0
    q_one = tr.transition_matrix(1)
    for x_1 in itertools.product(range(k), repeat=length):
        x1 = torch.tensor([x_1])
        weight = float(torch.prod(q1[torch.arange(length), x1[0]]))
        log_p = proc.p_logits(denoiser(x1, torch.tensor([1])), x1, 1)[0].double()
        p_tilde = denoiser(x1, torch.tensor([1]))[0].double().softmax(-1)
        bound += weight * -sum(log_p[i, x_0[0, i]].item() for i in range(length))
        for i, (target, seen) in enumerate(zip(x_0[0].tolist(), x_1)):
            if seen == mask:
                term = -p_tilde[i, target].log().item()
                torch.testing.assert_close(log_p[i].exp(), p_tilde[i], rtol=1e-5, atol=1e-6)
                masked_only += weight * term
            else:
                reweighted = p_tilde[i] * q_one[:, seen]
                term = -(reweighted[target] / reweighted.sum()).log().item()
            bert += weight * term
    assert bound == pytest.approx(bert, rel=1e-5)
    assert masked_only > 0 and masked_only < bound


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        MaskUniform(2, 1, torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="mask_index"):
        MaskUniform(4, 4, torch.zeros(3, dtype=F64))
    with pytest.raises(ValueError, match="betas"):
        MaskUniform(4, 3, torch.tensor([1.5], dtype=F64))
    with pytest.raises(ValueError, match="uniform_betas"):
        D3PM(MaskUniform(4, 3, torch.zeros(3, dtype=F64)), schedules.jsd(5))


def test_soft_cumulative_when_p_tilde_is_almost_sure_of_the_mask() -> None:
    proc = _process(k=4, mask=3, steps=3)
    tr = proc.transition
    for p_mask in (1.0 - 1e-6, 1.0):
        p = torch.tensor([(1 - p_mask) / 3] * 3 + [p_mask], dtype=F64).view(1, 1, 4)
        for t in range(4):
            got = tr.log_cumulative_soft(p.log(), torch.tensor([t]))
            expected = (p[0] @ tr.cumulative_matrix(t)).log()
            finite = torch.isfinite(expected)
            assert torch.equal(torch.isfinite(got[0]), finite)
            torch.testing.assert_close(got[0][finite], expected[finite], rtol=1e-9, atol=1e-9)


def _dense_kl(tr: MaskUniform, logits: torch.Tensor, x_0: int, x_t: int, s: int,
              t: int) -> torch.Tensor:
    """KL(q(x_s | x_t, x_0) || p(x_s | x_t)) from Bayes' rule and eq. (4) on dense matrices."""
    q = brute.bayes_posterior(tr, torch.eye(tr.num_classes, dtype=F64)[x_0], x_t, s, t)
    p = brute.eq4(tr, logits.softmax(-1), x_t, s, t)
    support = q > 0
    return (q[support] * (q[support].log() - p[support].log())).sum()


@pytest.mark.parametrize(
    ("mask", "betas", "uniform", "mask_logit"),
    [
        (2, [0.1, 0.3, 0.2], [0.2, 0.1, 0.3], None),
        (4, [0.25, 1 / 3, 0.5, 1.0], [0.2, 0.0, 0.3, 0.5], None),  # jsd: a_T = 0
        (0, [0.1, 0.3, 0.2], [0.0, 0.0, 0.0], None),  # no uniform part: c = 0
        (2, [0.1, 0.3, 0.2], [0.2, 0.1, 1.0], float("-inf")),  # p~ never predicts the mask
        (2, [0.1, 0.3, 0.2], [0.2, 0.1, 0.3], 30.0),  # p~ almost sure of the mask
    ],
)
def test_fused_posterior_kl_equals_dense_kl(mask: int, betas: list[float], uniform: list[float],
                                            mask_logit: float | None) -> None:
    k, steps = 5, len(betas)
    tr = MaskUniform(k, mask, torch.tensor(uniform, dtype=F64))
    D3PM(tr, torch.tensor(betas, dtype=F64))
    gen = torch.Generator().manual_seed(5)
    x_0 = torch.arange(k).view(k, 1).expand(k, k)
    x_t = torch.arange(k).view(1, k).expand(k, k)
    for s, t in itertools.combinations(range(steps + 1), 2):
        logits = torch.randn(k, k, k, generator=gen, dtype=F64) * 2
        if mask_logit is not None:
            logits[..., mask] = mask_logit
        logits.requires_grad_(True)
        st, tt = torch.full((k,), s), torch.full((k,), t)
        got = tr.posterior_kl(x_0, x_t, logits.log_softmax(-1), st, tt)
        reachable = tr.cumulative_matrix(t)[x_0, x_t] > 0
        for i, j in reachable.nonzero().tolist():
            expected = _dense_kl(tr, logits[i, j].detach(), i, j, s, t)
            assert got[i, j].item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-10)
        (grad,) = torch.autograd.grad(got[reachable].sum(), logits)
        assert torch.isfinite(grad).all()
        i, j = reachable.nonzero()[-1].tolist()  # one gradient against the dense autograd
        dense_logits = logits[i, j].detach().requires_grad_(True)
        (dense_grad,) = torch.autograd.grad(_dense_kl(tr, dense_logits, i, j, s, t), dense_logits)
        torch.testing.assert_close(grad[i, j], dense_grad, rtol=1e-7, atol=1e-9)
