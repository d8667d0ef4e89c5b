"""The oracle denoiser of benchmarks/text_diagnose.py against enumeration: the bigram chain's
exact per-position posterior, divided by q(x_t^i | x_0^i), on every x_0 of a tiny vocabulary."""

import importlib.util
import itertools
from pathlib import Path

import torch

import discrete_diffusion as dd

ROOT = Path(__file__).resolve().parents[1]


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _joint_by_enumeration(log_pi, log_a, q_t, x_t_row):
    """p(x_0^i = k, x_t) [L, K] for one sequence x_t [L], summing the chain over every x_0."""
    K, L = len(log_pi), len(x_t_row)
    joint = torch.zeros(L, K, dtype=torch.float64)
    for x_0 in itertools.product(range(K), repeat=L):
        p = log_pi[x_0[0]].exp() * torch.prod(torch.stack(
            [log_a[x_0[i - 1], x_0[i]].exp() for i in range(1, L)]))
        p = p * torch.prod(torch.stack([q_t[x_0[i], x_t_row[i]] for i in range(L)]))
        for i in range(L):
            joint[i, x_0[i]] += p
    return joint


def test_bigram_oracle_is_the_exact_cavity_marginal():
    diagnose = _module("text_diagnose")
    torch.manual_seed(0)
    K, L, t = 3, 4, 3
    log_pi = torch.randn(K, dtype=torch.float64).log_softmax(0)
    log_a = torch.randn(K, K, dtype=torch.float64).log_softmax(1)
    process = dd.D3PM(dd.transitions.Uniform(K), dd.schedules.cosine(5))
    x_t = torch.randint(0, K, (2, L))
    got = diagnose.bigram_denoiser(process, log_pi, log_a)(x_t, torch.full((2,), t))
    q_t = torch.stack([process.q_probs(torch.full((1,), k), t)[0] for k in range(K)]).double()
    for b in range(2):
        joint = _joint_by_enumeration(log_pi, log_a, q_t, x_t[b])
        cavity = joint / q_t[:, x_t[b]].t()  # divide out the position's own likelihood
        expected = (cavity / cavity.sum(-1, keepdim=True)).log()
        torch.testing.assert_close(got[b].double().log_softmax(-1), expected, atol=1e-5, rtol=0)


def test_marginal_denoiser_bound_is_the_unigram_cross_entropy():
    """With p~ = the marginal m, eq. 4 is the exact reverse of the i.i.d. model m: the expected
    bound of any sequence is -log m(x_0) (what the oracle table's first column checks)."""
    diagnose = _module("text_diagnose")
    bound_terms = _module("digits_diagnose").bound_terms
    K = 4
    log_m = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64).log()
    process = dd.D3PM(dd.transitions.Uniform(K), dd.schedules.cosine(8))
    x_0 = torch.randint(0, K, (3, 5), generator=torch.Generator().manual_seed(1))
    marginal = diagnose._padded(lambda x_t, t: log_m.float().expand(*x_t.shape, -1), process)
    draws = 4000  # each sequence repeated: the mean over draws of x_t
    prior, terms = bound_terms(process, marginal, x_0.repeat(draws, 1), seed=0)
    bound = (prior + terms.sum(0)).reshape(draws, 3)
    expected = -log_m[x_0].sum(1)
    stderr = bound.std(0) / draws**0.5
    assert ((bound.mean(0) - expected).abs() < 4 * stderr + 1e-3).all()
    # another marginal m' is the exact reverse of its own i.i.d. model: -log m'(x_0), not m's
    flipped = log_m.flip(0)
    other = diagnose._padded(lambda x_t, t: flipped.float().expand(*x_t.shape, -1), process)
    prior, terms = bound_terms(process, other, x_0.repeat(draws, 1), seed=0)
    other_bound = (prior + terms.sum(0)).reshape(draws, 3)
    mean, stderr = other_bound.mean(0), other_bound.std(0) / draws**0.5
    assert ((mean + flipped[x_0].sum(1)).abs() < 4 * stderr + 1e-3).all()
    assert ((mean - expected).abs() > 6 * stderr).all()  # the check can tell them apart


def test_geometric_path_joins_the_marginal_to_the_oracle():
    """w = 0 is the marginal, w = 1 the oracle, and every point is a normalised distribution
    whose log is the w-weighted mix of the two (up to the normaliser)."""
    diagnose = _module("text_diagnose")
    torch.manual_seed(0)
    K = 3
    log_m = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64).log()
    oracle_logits = torch.randn(2, 4, K).log_softmax(-1)
    oracle = lambda x_t, t: oracle_logits  # noqa: E731
    x_t, t = torch.zeros(2, 4, dtype=torch.long), torch.full((2,), 2)
    for w in (0.0, 0.3, 1.0):
        got = diagnose.geometric_path(log_m, oracle, w)(x_t, t).double()
        torch.testing.assert_close(got.exp().sum(-1), torch.ones(2, 4, dtype=torch.float64))
        mix = (1 - w) * log_m + w * oracle_logits.double()
        torch.testing.assert_close(got - got[..., :1], mix - mix[..., :1], atol=1e-5, rtol=0)
    torch.testing.assert_close(diagnose.geometric_path(log_m, oracle, 0.0)(x_t, t).double(),
                               log_m.expand(2, 4, K), atol=1e-6, rtol=0)


def test_posterior_oracle_is_the_exact_posterior():
    """The full posterior p(x_0^i | x_t) of the bigram chain, own x_t^i included, against
    enumeration (the cavity above, times q(x_t^i | x_0^i), renormalised)."""
    diagnose = _module("text_diagnose")
    torch.manual_seed(1)
    K, L, t = 3, 3, 2
    log_pi = torch.randn(K, dtype=torch.float64).log_softmax(0)
    log_a = torch.randn(K, K, dtype=torch.float64).log_softmax(1)
    process = dd.D3PM(dd.transitions.Uniform(K), dd.schedules.cosine(4))
    x_t = torch.randint(0, K, (1, L))
    got = diagnose.posterior_denoiser(process, log_pi, log_a)(x_t, torch.full((1,), t))
    q_t = torch.stack([process.q_probs(torch.full((1,), k), t)[0] for k in range(K)]).double()
    joint = _joint_by_enumeration(log_pi, log_a, q_t, x_t[0])
    expected = (joint / joint.sum(-1, keepdim=True)).log()
    torch.testing.assert_close(got[0].double(), expected, atol=1e-5, rtol=0)
