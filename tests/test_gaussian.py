"""DiscretizedGaussian against the appendix formula and dense matrix products."""

from __future__ import annotations

import brute
import pytest
import torch

from discrete_diffusion import D3PM, schedules
from discrete_diffusion.categorical import categorical_kl
from discrete_diffusion.transitions import DiscretizedGaussian, Transition
from discrete_diffusion.transitions.gaussian import default_checkpoint_every


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-6) -> None:
    brute.assert_log_close(a, b, atol)


def check_against_dense(tr: Transition, seed: int = 0, invariant_prior: bool = True) -> None:
    """Every structured operation of `tr` equals its dense counterpart (tiny K and T), and
    (if `invariant_prior`) the stationary distribution is invariant under every Q_t."""
    brute.assert_structured_matches_dense(tr, seed)
    pi = tr.stationary()
    torch.testing.assert_close(pi.sum(), torch.tensor(1.0, dtype=torch.float64))
    for t in range(1, tr.num_steps + 1 if invariant_prior else 1):
        torch.testing.assert_close(pi @ tr.transition_matrix(t), pi)


def check_process_against_dense(proc: D3PM, seed: int = 0) -> None:
    """Posteriors by Bayes' rule (eq. 3), p_logits by eq. (4), KL >= 0 and 0 for a perfect
    denoiser, all against dense matrices, for every (x_0, x_t) pair and every span."""
    tr, k, steps = proc.transition, proc.num_classes, proc.num_steps
    gen = torch.Generator().manual_seed(seed)
    x_0 = torch.arange(k).view(k, 1).expand(k, k)  # example b: x_0 = b at every position
    x_t = torch.arange(k).view(1, k).expand(k, k)  # position l: x_t = l
    logits = torch.randn(k, k, k, generator=gen) * 2
    spans = [(t - 1, t) for t in range(1, steps + 1)] + [(0, steps), (1, steps)] * (steps > 2)
    for s, t in spans:
        q_span, qbar_s = brute.span(tr, s, t), brute.cumulative(tr, s)
        joint = qbar_s[x_0] * q_span[:, x_t].permute(1, 2, 0)  # [x_0, x_t, x_s]
        valid = joint.sum(-1) > 0  # q(x_t | x_0) > 0: the posterior exists
        bayes = (joint / joint.sum(-1, keepdim=True)).log()
        st, tt = torch.full((k,), s), torch.full((k,), t)
        got = proc.q_posterior_logits(x_0, x_t, tt, s=st)
        _close(got[valid], bayes[valid])
        mix = logits.double().softmax(-1) @ qbar_s  # sum_x0 p~(x0) Qbar_s[x0, x_s]
        eq4 = mix * q_span[:, x_t].permute(1, 2, 0)
        p = proc.p_logits(logits, x_t, tt, s=st)
        _close(p, (eq4 / eq4.sum(-1, keepdim=True)).log())
        kl = categorical_kl(got[valid], p[valid])
        assert (kl > -1e-5).all()
        perfect = torch.where(torch.nn.functional.one_hot(x_0, k).bool(), 0.0, -1e9)
        kl0 = categorical_kl(got[valid], proc.p_logits(perfect, x_t, tt, s=st)[valid])
        assert kl0.abs().max() < 1e-5


def _formula(k: int, beta: float, bands: int) -> torch.Tensor:
    """Q_t written out entry by entry from the appendix formula (float64)."""
    import math

    norm = sum(math.exp(-((2 * n / (k - 1)) ** 2) / beta) for n in range(-bands, bands + 1))
    q = torch.zeros(k, k, dtype=torch.float64)
    for i in range(k):
        for j in range(k):
            if i != j and abs(i - j) <= bands:
                q[i, j] = math.exp(-((2 * abs(i - j) / (k - 1)) ** 2) / beta) / norm
        q[i, i] = 1.0 - q[i].sum()
    return q


@pytest.mark.parametrize("bands", [None, 1, 3])
def test_matches_the_appendix_formula(bands: int | None) -> None:
    k = 7
    tr = DiscretizedGaussian(k, bands=bands)
    betas = torch.tensor([0.02, 0.3, 2.0, 40.0], dtype=torch.float64)
    tr.setup(betas)
    for t, beta in enumerate(betas.tolist(), start=1):
        q = tr.transition_matrix(t)
        torch.testing.assert_close(q, _formula(k, beta, bands or k - 1), rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(q, q.T)  # symmetric, so doubly stochastic
        # the one-step matrix of any beta, as the mutual-information schedule builds it
        assert torch.equal(DiscretizedGaussian(k, bands=bands).step_matrix(beta), q)
    with pytest.raises(ValueError, match="variances"):
        tr.step_matrix(0.0)


@pytest.mark.parametrize("bands", [None, 2])
def test_structured_operations_equal_dense(bands: int | None) -> None:
    tr = DiscretizedGaussian(6, bands=bands)
    tr.setup(torch.tensor([0.05, 0.5, 1.0, 3.0], dtype=torch.float64))
    check_against_dense(tr)


def test_process_level_operations_equal_dense() -> None:
    tr = DiscretizedGaussian(5, bands=3)
    check_process_against_dense(D3PM(tr, torch.tensor([0.05, 0.3, 1.0], dtype=torch.float64)))


def test_band_limits_the_support_of_every_one_step_column() -> None:
    tr = DiscretizedGaussian(9, bands=2)
    tr.setup(schedules.linear(3, 0.1, 1.0))
    col = tr.log_transition_column(torch.tensor([[4, 0]]), torch.tensor([1]), torch.tensor([2]))
    assert torch.isfinite(col[0, 0]).tolist() == [False, False, True, True, True, True, True,
                                                  False, False]
    assert torch.isfinite(col[0, 1]).sum().item() == 3


def test_reaches_the_uniform_stationary_distribution() -> None:
    k = 8
    tr = DiscretizedGaussian(k)
    tr.setup(schedules.constant(60, 1.0))
    torch.testing.assert_close(
        tr.cumulative_matrix(60), torch.full((k, k), 1.0 / k, dtype=torch.float64),
        rtol=0, atol=1e-6,
    )
    torch.testing.assert_close(tr.stationary(), torch.full((k,), 1.0 / k, dtype=torch.float64))


def test_tables_are_profiles_and_cumulative_products_only() -> None:
    k, steps, bands = 16, 10, 3
    tr = DiscretizedGaussian(k, bands=bands)
    tr.setup(schedules.linear(steps, 0.01, 0.5))
    expected = 8 * (steps + steps * (bands + 1) + steps * k + (steps + 1) * k * k)
    assert tr.table_bytes() == expected


def test_span_cache_is_bounded() -> None:
    tr = DiscretizedGaussian(5, span_cache_size=2)
    tr.setup(schedules.linear(6, 0.1, 1.0))
    x = torch.tensor([[0, 4]])
    for s in range(4):
        tr.log_transition_column(x, torch.tensor([s]), torch.tensor([s + 2]))
    assert len(tr.spans) == 2


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="bands"):
        DiscretizedGaussian(5, bands=5)
    with pytest.raises(ValueError, match="num_classes"):
        DiscretizedGaussian(1)
    tr = DiscretizedGaussian(4)
    with pytest.raises(RuntimeError, match="setup"):
        _ = tr.num_steps
    with pytest.raises(ValueError, match="beta_t > 0"):
        tr.setup(torch.tensor([0.0, 0.1], dtype=torch.float64))
    tr.setup(torch.tensor([0.1], dtype=torch.float64))
    with pytest.raises(ValueError, match="t must be"):
        tr.transition_matrix(2)


@pytest.mark.parametrize("bands", [None, 2])
@pytest.mark.parametrize("every,cache", [(2, 0), (3, 2), (5, 16), (11, 1), (40, 4)])
def test_checkpointed_cumulative_matrices_equal_the_full_table(
    bands: int | None, every: int, cache: int
) -> None:
    """Keeping every m-th Qbar_t and rebuilding the rest loses nothing: each Qbar_t and each
    operation that reads it equals the full-table (m = 1) version to 1e-12 in float64."""
    k, steps = 7, 11
    betas = schedules.linear(steps, 0.02, 0.9)
    full = DiscretizedGaussian(k, bands=bands, checkpoint_every=1)
    full.setup(betas)
    part = DiscretizedGaussian(k, bands=bands, checkpoint_every=every,
                               cumulative_cache_size=cache)
    part.setup(betas)
    assert part.checkpoint_every == min(every, steps)
    assert part.checkpoints.shape == (steps // part.checkpoint_every + 1, k, k)
    for t in [*range(steps + 1), 3, 1, 3]:  # repeated times read the cache
        torch.testing.assert_close(part.cumulative_matrix(t), full.cumulative_matrix(t),
                                   rtol=1e-12, atol=1e-300)
    assert len(part.cumulative_cache) <= cache
    gen = torch.Generator().manual_seed(every)
    t = torch.tensor([0, 1, 2, 3, 5, 5, 7, 10, 11, 6])
    x_0 = torch.randint(0, k, (len(t), 3, 2), generator=gen)
    torch.testing.assert_close(part.log_cumulative(x_0, t), full.log_cumulative(x_0, t),
                               rtol=0, atol=0)
    log_x0 = torch.randn(len(t), 3, 2, k, generator=gen, dtype=torch.float64).log_softmax(-1)
    torch.testing.assert_close(part.log_cumulative_soft(log_x0, t),
                               full.log_cumulative_soft(log_x0, t), rtol=1e-12, atol=1e-12)
    mats, index = part.cumulative_matrices(t)
    for b, tb in enumerate(t.tolist()):
        torch.testing.assert_close(mats[index[b]], full.cumulative_matrix(tb),
                                   rtol=1e-12, atol=1e-300)
    brute.assert_structured_matches_dense(part)


def test_checkpointed_process_equals_dense() -> None:
    tr = DiscretizedGaussian(5, bands=3, checkpoint_every=2, cumulative_cache_size=1)
    check_process_against_dense(D3PM(tr, torch.tensor([0.05, 0.3, 1.0, 2.0, 0.7],
                                                      dtype=torch.float64)))


def test_checkpoint_table_bytes_and_default_spacing() -> None:
    k, steps, bands = 16, 10, 3
    tr = DiscretizedGaussian(k, bands=bands, checkpoint_every=3, cumulative_cache_size=2)
    tr.setup(schedules.linear(steps, 0.01, 0.5))
    profiles = 8 * (steps + steps * (bands + 1) + steps * k)
    assert tr.table_bytes() == profiles + 8 * (steps // 3 + 1) * k * k
    for t in (1, 2, 4):
        tr.cumulative_matrix(t)
    assert tr.table_bytes() == profiles + 8 * (steps // 3 + 1 + 2) * k * k  # cache: 2 kept
    # the default m: the whole table for small K, every second matrix at K = 256, T = 1000
    assert default_checkpoint_every(17, 250) == 1
    assert default_checkpoint_every(256, 1000) == 2
    assert default_checkpoint_every(256, 250) == 1
    assert default_checkpoint_every(4096, 10, budget=1) == 10


def test_tables_at_k256_t1000_fit_in_300_mb() -> None:
    """The paper's CIFAR-10 setting: the full float64 table would be 525 MB."""
    tr = DiscretizedGaussian(256)
    tr.setup(schedules.linear(1000))
    full_cache = tr.cumulative_cache_size * 256 * 256 * 8
    assert tr.checkpoint_every == 2
    assert tr.table_bytes() + full_cache < 300e6
    torch.testing.assert_close(tr.cumulative_matrix(999).sum(-1),
                               torch.ones(256, dtype=torch.float64), rtol=0, atol=1e-12)


def test_rejects_bad_checkpoint_options() -> None:
    with pytest.raises(ValueError, match="checkpoint_every"):
        DiscretizedGaussian(5, checkpoint_every=0)
    with pytest.raises(ValueError, match="cumulative_cache_size"):
        DiscretizedGaussian(5, cumulative_cache_size=-1)
