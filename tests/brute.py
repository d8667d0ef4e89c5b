"""Brute-force references on tiny vocabularies: dense matrices, Bayes' rule, enumeration.

Everything here is float64 and built only from the dense views `transition_matrix(t)` (never
from a transition's own cumulative tables or structured operations), so the tests compare two
independent computations. Import from a test file with `import brute`.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

from discrete_diffusion.transitions.base import Transition


def one_step(tr: Transition) -> Tensor:
    """Q_1..Q_T, float64 [T, K, K]."""
    return torch.stack([tr.transition_matrix(t) for t in range(1, tr.num_steps + 1)])


def span(tr: Transition, s: int, t: int) -> Tensor:
    """Q_{s->t} = Q_{s+1}...Q_t by sequential products, float64 [K, K] (identity if s == t)."""
    out = torch.eye(tr.num_classes, dtype=torch.float64)
    for u in range(s + 1, t + 1):
        out = out @ tr.transition_matrix(u)
    return out


def cumulative(tr: Transition, t: int) -> Tensor:
    """Qbar_t = Q_1...Q_t, float64 [K, K]."""
    return span(tr, 0, t)


def bayes_posterior(tr: Transition, p_x0: Tensor, x_t: int, s: int, t: int) -> Tensor:
    """q(x_s | x_t, x_0) for a distribution p_x0 [K] over x_0 (one-hot for a hard x_0), by
    Bayes' rule on the joint p(x_0) Qbar_s[x_0, x_s] Q_{s->t}[x_s, x_t], marginalised over x_0
    and normalised over x_s (eq. 3). float64 [K]."""
    joint = p_x0.double()[:, None] * cumulative(tr, s) * span(tr, s, t)[:, x_t][None, :]
    marg = joint.sum(0)
    return marg / marg.sum()


def eq4(tr: Transition, p_tilde: Tensor, x_t: int, s: int, t: int) -> Tensor:
    """p(x_s | x_t) proportional to sum_{x0} q(x_s, x_t | x0) p~(x0), eq. (4), float64 [K]."""
    out = torch.zeros(tr.num_classes, dtype=torch.float64)
    q_s, q_span = cumulative(tr, s), span(tr, s, t)
    for x0 in range(tr.num_classes):
        out += p_tilde[x0].double() * q_s[x0] * q_span[:, x_t]
    return out / out.sum()


def all_sequences(num_classes: int, length: int) -> Tensor:
    """Every sequence of `length` states, LongTensor [K^L, L]."""
    return torch.tensor(list(itertools.product(range(num_classes), repeat=length)))


class OracleDenoiser:
    """The exact per-position posterior p(x_0^i | x_t) of a small known data distribution,
    by enumeration of every x_0: a denoiser(x_t, t) -> logits [B, L, K] (log probabilities).

    Args:
        tr: the (set-up) transition whose Qbar_t corrupts the data.
        data: float64 [K^L], p(x_0) over `all_sequences(K, L)` (zeros allowed).
        length: L.
    """

    def __init__(self, tr: Transition, data: Tensor, length: int) -> None:
        self.seqs = all_sequences(tr.num_classes, length)
        self.data = data.double()
        self.qbar = torch.stack([cumulative(tr, t) for t in range(tr.num_steps + 1)])
        self.num_classes = tr.num_classes

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        qbar = self.qbar[t]  # [B, K, K]
        # lik[b, n] = prod_j Qbar_t[seq_n[j], x_t[b, j]]
        cols = qbar[:, self.seqs, :]  # [B, N, L, K]
        idx = x_t[:, None, :, None].expand(-1, self.seqs.shape[0], -1, 1)
        lik = cols.gather(-1, idx).squeeze(-1).prod(-1)
        post = self.data[None] * lik
        post = post / post.sum(-1, keepdim=True)
        onehot = torch.nn.functional.one_hot(self.seqs, self.num_classes).double()
        marg = torch.einsum("bn,nlk->blk", post, onehot)
        return marg.log().float()


def entropy(data: Tensor) -> float:
    """H(x_0) in nats of a distribution over sequences [N]."""
    p = data[data > 0].double()
    return float(-(p * p.log()).sum())


def mean_and_se(values: Tensor, weights: Tensor) -> tuple[float, float]:
    """Weighted mean of per-example values over classes of x_0, and its standard error.

    values: [N_x0, R] Monte-Carlo draws (R per x_0); weights: [N_x0] probabilities p(x_0).
    The estimator sum_x0 p(x0) mean_r(values) has variance sum_x0 p(x0)^2 var_r / R.
    """
    values, weights = values.double(), weights.double()
    reps = values.shape[1]
    mean = float((weights * values.mean(1)).sum())
    var = float((weights**2 * values.var(1) / reps).sum())
    return mean, math.sqrt(var)


def assert_log_close(a: Tensor, b: Tensor, atol: float = 1e-6) -> None:
    """Log probabilities equal: the same -inf pattern, finite entries within atol."""
    a, b = a.double(), b.double()
    assert torch.equal(torch.isneginf(a), torch.isneginf(b)), "different zero patterns"
    assert not torch.isnan(a).any()
    finite = torch.isfinite(b)
    torch.testing.assert_close(a[finite], b[finite], rtol=1e-5, atol=atol)


def assert_structured_matches_dense(tr: Transition, seed: int = 0) -> None:
    """Every structured operation of a set-up `tr` equals its dense counterpart: rows of Q_t
    and Qbar_t sum to one, Qbar_t is the product of the Q_s, and log_cumulative,
    log_cumulative_soft and log_transition_column (every span (s, t), also mixed within one
    batch) agree with the dense products."""
    k, steps = tr.num_classes, tr.num_steps
    gen = torch.Generator().manual_seed(seed)
    ones = torch.ones(k, dtype=torch.float64)
    torch.testing.assert_close(tr.cumulative_matrix(0), torch.eye(k, dtype=torch.float64))
    for t in range(1, steps + 1):
        q_t = tr.transition_matrix(t)
        assert (q_t >= 0).all() and (tr.cumulative_matrix(t) >= 0).all()
        torch.testing.assert_close(q_t.sum(1), ones)
        torch.testing.assert_close(tr.cumulative_matrix(t).sum(1), ones)
        torch.testing.assert_close(tr.cumulative_matrix(t), cumulative(tr, t), rtol=1e-9,
                                   atol=1e-12)
    x = torch.arange(k).repeat(2).view(2, k)  # [B=2, L=K]: every state, two examples
    log_p = torch.log_softmax(torch.randn(2, k, k, generator=gen) * 3, -1)
    log_p[0, 0, 0] = -math.inf  # a zero probability in a soft x_0
    log_p[0, 0] = log_p[0, 0].log_softmax(-1)
    for t in range(steps + 1):
        tt = torch.tensor([t, t])
        qbar_t = cumulative(tr, t)
        assert_log_close(tr.log_cumulative(x, tt), qbar_t[x].log())
        assert_log_close(tr.log_cumulative_soft(log_p, tt), (log_p.double().exp() @ qbar_t).log())
    for s, t in itertools.combinations(range(steps + 1), 2):
        got = tr.log_transition_column(x, torch.tensor([s, s]), torch.tensor([t, t]))
        assert_log_close(got, span(tr, s, t)[:, x].permute(1, 2, 0).log())
    # different times and spans within one batch
    t_mixed = torch.tensor([steps, max(steps - 2, 1)])
    s_mixed = torch.tensor([0, max(steps - 3, 0)])
    got = tr.log_transition_column(x, s_mixed, t_mixed)
    for b in range(2):
        want = span(tr, int(s_mixed[b]), int(t_mixed[b]))[:, x[b]].T.log()
        assert_log_close(got[b], want)
    got = tr.log_cumulative(x, t_mixed)
    for b in range(2):
        assert_log_close(got[b], cumulative(tr, int(t_mixed[b]))[x[b]].log())


class RandomDenoiser:
    """A fixed random denoiser over sequences [B, L]: logits at position j depend on t, on
    x_t[j] and on the next position's x_t, so terms of a bound depend on the whole x_t."""

    def __init__(self, num_classes: int, num_steps: int, seed: int = 0, scale: float = 2.0):
        gen = torch.Generator().manual_seed(seed)
        k = num_classes
        self.own = torch.randn(num_steps + 1, k, k, generator=gen) * scale
        self.next = torch.randn(k, k, generator=gen) * scale

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        own = self.own[t[:, None], x_t]  # [B, L, K]
        return own + self.next[x_t.roll(-1, dims=1)]


def expected_bound(tr: Transition, denoiser, x_0: Tensor, grid: list[int]) -> float:
    """E over x_t of the bound of `D3PM.nll_bound` on one sequence x_0 [L], by enumeration of
    every x_t and dense Bayes' rule / eq. (4) per position (nats)."""
    length, k = x_0.shape[0], tr.num_classes
    log_pi = tr.stationary().log()
    q_T = cumulative(tr, tr.num_steps)[x_0]
    total = float(sum(_kl(q_T[j], log_pi) for j in range(length)))
    for s, t in zip(grid[:-1], grid[1:]):
        q_t = cumulative(tr, t)
        for x_t in all_sequences(k, length):
            prob = float(torch.prod(q_t[x_0, x_t]))
            if prob == 0.0:
                continue
            p_tilde = denoiser(x_t[None], torch.tensor([t]))[0].double().softmax(-1)
            for j in range(length):
                p = eq4(tr, p_tilde[j], int(x_t[j]), s, t)
                if s == 0:
                    total += prob * float(-p[x_0[j]].log())
                else:
                    onehot = torch.nn.functional.one_hot(x_0[j], k).double()
                    q = bayes_posterior(tr, onehot, int(x_t[j]), s, t)
                    total += prob * _kl(q, p.log())
    return total


def _kl(p: Tensor, log_q: Tensor) -> float:
    mask = p > 0
    return float((p[mask] * (p[mask].log() - log_q[mask])).sum())
