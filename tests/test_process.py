"""D3PM against brute force: posteriors (eq. 3), eq. (4), losses, bounds and sampling."""

from __future__ import annotations

import itertools
import math

import brute
import pytest
import torch
from conftest import PROCESSES
from hypothesis import given, settings
from hypothesis import strategies as st

import discrete_diffusion as dd
from discrete_diffusion import schedules
from discrete_diffusion.transitions import Absorbing, Dense, Uniform


def _pairs(proc: dd.D3PM, t: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (x_0, x_t) with q(x_t | x_0) > 0, as [B, 1] tensors."""
    qbar = proc.cumulative_matrix(t)
    pairs = [(a, b) for a in range(proc.num_classes) for b in range(proc.num_classes)
             if qbar[a, b] > 0]
    x = torch.tensor(pairs)
    return x[:, :1], x[:, 1:]


def _spans(proc: dd.D3PM):
    """Every (s, t) with 0 <= s < t <= T."""
    return itertools.combinations(range(proc.num_steps + 1), 2)


def _perfect(x_0: torch.Tensor, k: int):
    """A denoiser that puts all its mass on the true x_0."""
    def denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = torch.full((*x_0.shape, k), -math.inf)
        return logits.scatter(-1, x_0.unsqueeze(-1), 0.0)
    return denoiser


def _confident(target: torch.Tensor, k: int):
    """A denoiser sure of `target` (logits +1e4 there) whatever it sees."""
    def denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 1e4 * torch.nn.functional.one_hot(target.expand_as(x_t), k).float()
    return denoiser


# ----- forward process ------------------------------------------------------------------------
def test_q_probs_are_rows_of_qbar(proc: dd.D3PM) -> None:
    x_0 = torch.arange(proc.num_classes)[None]
    for t in range(proc.num_steps + 1):
        got = proc.q_probs(x_0, t)[0].double()
        torch.testing.assert_close(got, proc.cumulative_matrix(t), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got.sum(-1), torch.ones(proc.num_classes, dtype=torch.float64))


@pytest.mark.parametrize("name", ["uniform", "absorbing_mid", "dense"])
def test_q_sample_frequencies_match_q(name: str) -> None:
    proc, n, t = PROCESSES[name](), 20000, 3
    x_0 = torch.full((n, 1), 1, dtype=torch.long)
    x_t = proc.q_sample(x_0, t, torch.Generator().manual_seed(0))
    freq = torch.bincount(x_t.view(-1), minlength=proc.num_classes).double() / n
    want = proc.cumulative_matrix(t)[1]
    se = (want * (1 - want) / n).sqrt()
    assert ((freq - want).abs() <= 5 * se + 1e-12).all()


# ----- posteriors -----------------------------------------------------------------------------
def test_posterior_hard_x0_is_bayes_rule(proc: dd.D3PM) -> None:
    for s, t in _spans(proc):
        x_0, x_t = _pairs(proc, t)
        got = proc.q_posterior_logits(x_0, x_t, t, s=s)[:, 0]
        for b in range(x_0.shape[0]):
            onehot = torch.nn.functional.one_hot(x_0[b, 0], proc.num_classes)
            want = brute.bayes_posterior(proc.transition, onehot, int(x_t[b, 0]), s, t)
            brute.assert_log_close(got[b], want.log())
        if t - s <= s + 1 and s > 0:  # the same span through step_size
            k = t - s
            same = proc.q_posterior_logits(x_0, x_t, t, step_size=k)
            torch.testing.assert_close(same[:, 0], got)


def test_posterior_soft_x0_is_bayes_rule(proc: dd.D3PM) -> None:
    gen = torch.Generator().manual_seed(0)
    k = proc.num_classes
    x_t = torch.arange(k)[None].repeat(2, 1)  # [2, K]
    probs = torch.randn(2, k, k, generator=gen).mul(2).softmax(-1)
    probs[0, :, 0] = 0.0  # exact zeros in the soft x_0
    probs = probs / probs.sum(-1, keepdim=True)
    for s, t in _spans(proc):
        got = proc.q_posterior_logits(probs, x_t, t, s=s)
        for b, j in itertools.product(range(2), range(k)):
            want = brute.bayes_posterior(proc.transition, probs[b, j], int(x_t[b, j]), s, t)
            if not torch.isfinite(want).all():  # x_t unreachable from this x_0 distribution
                continue
            brute.assert_log_close(got[b, j], want.log(), atol=1e-5)


def test_p_logits_is_eq4(proc: dd.D3PM) -> None:
    gen = torch.Generator().manual_seed(1)
    k = proc.num_classes
    x_t = torch.arange(k)[None]
    logits = torch.randn(1, k, k, generator=gen) * 3
    for s, t in _spans(proc):
        got = proc.p_logits(logits, x_t, t, s=s)[0]
        for j in range(k):
            want = brute.eq4(proc.transition, logits[0, j].softmax(-1), j, s, t)
            if want.isnan().any():  # x_t = j cannot be reached at t
                continue
            brute.assert_log_close(got[j], want.log(), atol=1e-5)


def test_p_logits_at_t1_reweights_the_denoiser() -> None:
    """p(x_0 | x_1) is proportional to q(x_1 | x_0) p~(x_0 | x_1), not raw p~."""
    proc = PROCESSES["uniform"]()
    logits = torch.tensor([[[0.3, -1.0, 2.0, 0.5]]])
    x_1 = torch.tensor([[2]])
    got = proc.p_logits(logits, x_1, 1)[0, 0].double().exp()
    want = proc.transition_matrix(1)[:, 2] * logits[0, 0].double().softmax(-1)
    torch.testing.assert_close(got, want / want.sum(), rtol=1e-5, atol=1e-7)


def test_timestep_grid_with_steps_is_rounded_and_increasing() -> None:
    proc = dd.D3PM(Uniform(3), schedules.cosine(1000))
    grid = proc.timestep_grid(steps=256)
    assert len(grid) == 257 and grid[0] == 0 and grid[-1] == 1000
    assert all(b > a for a, b in zip(grid[:-1], grid[1:]))
    assert grid[1] == round(1000 / 256)
    assert proc.timestep_grid(step_size=250) == [0, 250, 500, 750, 1000]
    assert PROCESSES["uniform"]().timestep_grid(steps=3) == [0, 2, 3, 5]


def test_nonuniform_grid_posteriors_equal_dense() -> None:
    proc = PROCESSES["dense"]()
    grid = proc.timestep_grid(steps=3)  # [0, 2, 3, 5]: spans of 2, 1, 2
    gen = torch.Generator().manual_seed(2)
    k = proc.num_classes
    x_t = torch.arange(k).repeat(3).view(3, k)
    x_0 = torch.randint(0, k, (3, k), generator=gen)
    logits = torch.randn(3, k, k, generator=gen)
    s = torch.tensor(grid[:-1])
    t = torch.tensor(grid[1:])
    got_p = proc.p_logits(logits, x_t, t, s=s)
    for b, j in itertools.product(range(3), range(k)):
        sb, tb = int(s[b]), int(t[b])
        want = brute.eq4(proc.transition, logits[b, j].softmax(-1), j, sb, tb)
        brute.assert_log_close(got_p[b, j], want.log(), atol=1e-5)
    reach = torch.stack([proc.cumulative_matrix(int(tb))[x_0[b], x_t[b]] > 0
                         for b, tb in enumerate(t)])
    got_q = proc.q_posterior_logits(x_0, x_t, t, s=s)
    for b, j in itertools.product(range(3), range(k)):
        if reach[b, j]:
            onehot = torch.nn.functional.one_hot(x_0[b, j], k)
            want = brute.bayes_posterior(proc.transition, onehot, j, int(s[b]), int(t[b]))
            brute.assert_log_close(got_q[b, j], want.log(), atol=1e-5)


# ----- losses ---------------------------------------------------------------------------------
def test_training_losses_are_consistent(proc: dd.D3PM) -> None:
    gen = torch.Generator().manual_seed(3)
    x_0 = torch.randint(0, proc.num_classes, (64, 3), generator=gen)
    den = brute.RandomDenoiser(proc.num_classes, proc.num_steps)
    out = proc.training_losses(den, x_0, generator=gen)
    assert set(out) == {"loss", "vb", "ce", "bound", "t"}
    assert all(out[key].dtype == torch.float32 for key in ("loss", "vb", "ce", "bound"))
    assert out["t"].dtype == torch.long and out["t"].min() >= 1
    assert out["t"].max() <= proc.num_steps
    assert (out["vb"] >= -1e-5).all() and torch.isfinite(out["vb"]).all()
    torch.testing.assert_close(out["loss"], out["vb"] + 0.01 * out["ce"])
    want = proc.prior_kl(x_0).float() + proc.num_steps * out["vb"]
    torch.testing.assert_close(out["bound"], want)


def test_vb_matches_dense_per_term(proc: dd.D3PM) -> None:
    """vb for the drawn (t, x_t) equals the dense KL / decoder term."""
    gen = torch.Generator().manual_seed(4)
    k = proc.num_classes
    x_0 = torch.randint(0, k, (12, 2), generator=gen)
    den = brute.RandomDenoiser(k, proc.num_steps, seed=5)
    out = proc.training_losses(den, x_0, generator=torch.Generator().manual_seed(6))
    # replay the draws: times first, then x_t
    replay = torch.Generator().manual_seed(6)
    t = torch.randint(1, proc.num_steps + 1, (12,), generator=replay)
    assert torch.equal(t, out["t"])
    x_t = proc.q_sample(x_0, t, replay)
    p_tilde = den(x_t, t).double().softmax(-1)
    for b in range(12):
        tb, want = int(t[b]), 0.0
        for j in range(2):
            p = brute.eq4(proc.transition, p_tilde[b, j], int(x_t[b, j]), tb - 1, tb)
            onehot = torch.nn.functional.one_hot(x_0[b, j], k).double()
            q = brute.bayes_posterior(proc.transition, onehot, int(x_t[b, j]), tb - 1, tb)
            want += -float(p[x_0[b, j]].log()) if tb == 1 else brute._kl(q, p.log())
        assert out["vb"][b].item() == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_perfect_denoiser_has_zero_kl_terms(proc: dd.D3PM) -> None:
    gen = torch.Generator().manual_seed(7)
    x_0 = torch.randint(0, proc.num_classes, (32, 3), generator=gen)
    den = _perfect(x_0, proc.num_classes)
    out = proc.training_losses(den, x_0, generator=gen)
    assert out["vb"].abs().max() < 1e-5
    assert out["ce"].abs().max() == 0
    terms = proc.nll_bound(den, x_0, generator=gen, return_terms=True)
    assert terms["diffusion"].abs().max() < 1e-5 and terms["decoder"].abs().max() < 1e-5
    torch.testing.assert_close(terms["total"], terms["prior"], atol=1e-4, rtol=0)


def test_hybrid_with_zero_lambda_equals_vb_exactly() -> None:
    proc = PROCESSES["absorbing"]()
    x_0 = torch.randint(0, 4, (16, 5), generator=torch.Generator().manual_seed(0))
    den = brute.RandomDenoiser(4, proc.num_steps)
    a = proc.training_losses(den, x_0, "hybrid", 0.0, torch.Generator().manual_seed(1))
    b = proc.training_losses(den, x_0, "vb", generator=torch.Generator().manual_seed(1))
    c = proc.training_losses(den, x_0, "ce", generator=torch.Generator().manual_seed(1))
    assert torch.equal(a["loss"], b["loss"]) and torch.equal(a["loss"], b["vb"])
    assert torch.equal(c["loss"], c["ce"])


def test_stratified_times_cover_every_stratum() -> None:
    proc = PROCESSES["uniform_cosine"]()
    x_0 = torch.zeros(6, 2, dtype=torch.long)
    den = brute.RandomDenoiser(3, 6)
    out = proc.training_losses(den, x_0, time_sampling="stratified",
                               generator=torch.Generator().manual_seed(0))
    assert sorted(out["t"].tolist()) == [1, 2, 3, 4, 5, 6]


# ----- the bound ------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "steps", "step_size"),
                         [("dense", 3, 1), ("absorbing", 2, 1), ("uniform_cosine", None, 2),
                          ("uniform", None, 1)])
def test_nll_bound_mean_equals_enumerated_expectation(name, steps, step_size) -> None:
    proc = PROCESSES[name]()
    den = brute.RandomDenoiser(proc.num_classes, proc.num_steps, seed=8, scale=1.0)
    x_0 = torch.tensor([1, 0])
    grid = proc.timestep_grid(step_size, steps)
    want = brute.expected_bound(proc.transition, den, x_0, grid)
    reps = 4000
    got = proc.nll_bound(den, x_0.expand(reps, 2), step_size=step_size, steps=steps,
                         generator=torch.Generator().manual_seed(9)).double()
    se = float(got.std()) / math.sqrt(reps)
    assert abs(float(got.mean()) - want) < 4 * se + 1e-6


def test_k_equals_T_bound_is_prior_plus_decoder() -> None:
    proc = PROCESSES["uniform"]()
    x_0 = torch.randint(0, 4, (8, 3), generator=torch.Generator().manual_seed(0))
    den = brute.RandomDenoiser(4, 5)
    terms = proc.nll_bound(den, x_0, step_size=5, generator=torch.Generator().manual_seed(1),
                           return_terms=True)
    assert terms["diffusion"].abs().max() == 0
    x_T = proc.q_sample(x_0, 5, torch.Generator().manual_seed(1))
    t = torch.full((8,), 5)
    log_p = proc.p_logits(den(x_T, t), x_T, 5, step_size=5)
    decoder = -log_p.gather(-1, x_0[..., None]).squeeze(-1).sum(-1)
    assert terms["total"].dtype == torch.float64
    torch.testing.assert_close(terms["decoder"], decoder.double())
    torch.testing.assert_close(terms["total"], proc.prior_kl(x_0) + decoder.double())


def _correlated_data() -> torch.Tensor:
    """p(x_0) over pairs of 3 symbols (K = 4 with the mask 3): strongly correlated."""
    table = torch.tensor([[0.30, 0.02, 0.03], [0.02, 0.25, 0.03], [0.05, 0.05, 0.25]],
                         dtype=torch.float64)
    data = torch.zeros(4, 4, dtype=torch.float64)
    data[:3, :3] = table / table.sum()
    return data.reshape(-1)


def _oracle_bound(proc: dd.D3PM, reps: int, seed: int) -> tuple[float, float]:
    data = _correlated_data()
    seqs = brute.all_sequences(4, 2)
    keep = data > 0
    den = brute.OracleDenoiser(proc.transition, data, 2)
    x_0 = seqs[keep].repeat_interleave(reps, 0)
    got = proc.nll_bound(den, x_0, generator=torch.Generator().manual_seed(seed))
    return brute.mean_and_se(got.view(-1, reps), data[keep])


def test_oracle_bound_never_below_entropy_and_tight_for_absorbing() -> None:
    data = _correlated_data()
    h = brute.entropy(data)
    marg = data.view(4, 4)
    h_marg = brute.entropy(marg.sum(0)) + brute.entropy(marg.sum(1))
    gaps = {}
    for steps in (1, 4, 24):
        proc = dd.D3PM(Absorbing(4, 3), schedules.jsd(steps))
        mean, se = _oracle_bound(proc, 300, steps)
        assert mean >= h - 4 * se
        gaps[steps] = (mean - h, se)
    # T = 1 has no randomness: the bound is exactly the sum of the marginal entropies
    assert gaps[1][0] == pytest.approx(h_marg - h, abs=1e-5)
    assert gaps[4][0] < gaps[1][0] - 4 * gaps[4][1]
    assert gaps[24][0] < gaps[4][0] - 4 * math.hypot(gaps[4][1], gaps[24][1])
    assert gaps[24][0] < 0.15 * gaps[1][0]
    uni = dd.D3PM(Uniform(4), schedules.cosine(4))
    mean, se = _oracle_bound(uni, 300, 0)
    assert mean >= h - 4 * se


# ----- sampling -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PROCESSES))
@pytest.mark.parametrize(("step_size", "steps"), [(1, None), (5, None), (1, 3)])
def test_sampler_reaches_a_confident_target(name: str, step_size: int, steps: int | None) -> None:
    proc = PROCESSES[name]()
    if proc.num_steps % step_size:
        step_size = proc.num_steps
    k = proc.num_classes
    target = torch.arange(6).remainder(k).view(2, 3)
    x, traj = proc.sample(_confident(target, k), (2, 3), step_size=step_size, steps=steps,
                          generator=torch.Generator().manual_seed(0), return_trajectory=True)
    assert torch.equal(x, target)
    grid = proc.timestep_grid(step_size, steps)
    assert [t for t, _ in traj] == grid[::-1]
    assert torch.equal(traj[-1][1], x)


def test_sampler_holds_fixed_positions_and_shows_them_to_the_denoiser() -> None:
    proc = PROCESSES["absorbing"]()
    target = torch.tensor([[0, 1, 2, 0]])
    mask = torch.tensor([[True, False, False, True]])
    values = torch.tensor([[2, -1, -1, 1]])  # free positions may hold anything
    seen = []
    confident = _confident(target, 4)

    def den(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(x_t.clone())
        return confident(x_t, t)

    calls = []
    x = proc.sample(den, (1, 4), fixed=(mask, values), generator=torch.Generator().manual_seed(0),
                    progress=lambda done, total: calls.append((done, total)))
    assert torch.equal(x, torch.tensor([[2, 1, 2, 1]]))
    assert all(torch.equal(s[mask], values[mask]) for s in seen)
    assert calls == [(i, 5) for i in range(1, 6)]


def test_sampler_draws_x0_unless_argmax_last() -> None:
    proc = dd.D3PM(Uniform(3), schedules.constant(1, 0.5))
    logits = torch.tensor([0.0, 0.5, 1.0])

    def den(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return logits.expand(*x_t.shape, 3)

    n = 4000
    x, traj = proc.sample(den, (n, 1), generator=torch.Generator().manual_seed(0),
                          return_trajectory=True)
    x_1 = traj[0][1]
    want = proc.p_logits(den(x_1, None), x_1, 1).double().exp()[:, 0]  # p(x_0 | x_1)
    for state in range(3):  # frequencies of x_0 given x_1 = state match p(x_0 | x_1)
        rows = x_1[:, 0] == state
        freq = torch.bincount(x[rows, 0], minlength=3).double() / rows.sum()
        p = want[rows][0]
        assert ((freq - p).abs() <= 5 * (p * (1 - p) / rows.sum()).sqrt()).all()
    y, traj = proc.sample(den, (200, 1), generator=torch.Generator().manual_seed(0),
                          argmax_last=True, return_trajectory=True)
    x_1 = traj[0][1]
    assert torch.equal(y, proc.p_logits(den(x_1, None), x_1, 1).argmax(-1))


def test_prior_sample_follows_the_stationary_distribution() -> None:
    proc = PROCESSES["dense_rate"]()

    def den(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x_t.shape, 4)

    n = 8000
    _, traj = proc.sample(den, (n, 1), generator=torch.Generator().manual_seed(0),
                          return_trajectory=True)
    freq = torch.bincount(traj[0][1].view(-1), minlength=4).double() / n
    pi = proc.transition.stationary()
    assert ((freq - pi).abs() <= 5 * (pi * (1 - pi) / n).sqrt() + 1e-12).all()


def test_seeded_runs_are_reproducible() -> None:
    proc = PROCESSES["uniform"]()
    den = brute.RandomDenoiser(4, 5)
    x_0 = torch.randint(0, 4, (8, 3), generator=torch.Generator().manual_seed(0))

    def run(seed: int):
        g = torch.Generator().manual_seed(seed)
        return (proc.training_losses(den, x_0, generator=g)["loss"],
                proc.nll_bound(den, x_0, generator=g), proc.sample(den, (4, 3), generator=g))

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


# ----- robustness -----------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(["uniform", "absorbing_mid", "dense", "dense_rate"]),
    seed=st.integers(0, 2**31 - 1),
    extreme=st.sampled_from(["random", "huge", "minus_inf"]),
    t=st.integers(1, 5),
    k=st.integers(1, 5),
)
def test_property_outputs_are_normalised(name, seed, extreme, t, k) -> None:
    proc = dd.D3PM(PROCESSES[name]().transition, schedules.linear(5, 0.1, 0.5))
    gen = torch.Generator().manual_seed(seed)
    kk = proc.num_classes
    x_0 = torch.randint(0, kk, (3, 4), generator=gen)
    x_t = proc.q_sample(x_0, t, gen)
    logits = torch.randn(3, 4, kk, generator=gen) * 5
    if extreme == "huge":
        logits = torch.sign(logits) * 1e4
    elif extreme == "minus_inf":  # -inf allowed anywhere but at x_t (which must stay possible)
        drop = torch.rand(3, 4, kk, generator=gen) < 0.5
        drop.scatter_(-1, x_t[..., None], False)
        logits = logits.masked_fill(drop, -math.inf)
    s = max(t - k, 0)
    for out in (proc.p_logits(logits, x_t, t, s=s), proc.q_posterior_logits(x_0, x_t, t, s=s)):
        assert not out.isnan().any() and not (out == math.inf).any()
        torch.testing.assert_close(out.logsumexp(-1), torch.zeros(3, 4), atol=1e-5, rtol=0)
    q, p = proc.q_posterior_logits(x_0, x_t, t, s=s), proc.p_logits(logits, x_t, t, s=s)
    kl = dd.categorical.categorical_kl(q, p)
    assert (kl >= -1e-4).all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p, x, d: dd.D3PM(Uniform(3), torch.tensor([0.5, 1.2])), "betas"),
        (lambda p, x, d: dd.D3PM(Uniform(3), torch.zeros(2, 2)), "betas"),
        (lambda p, x, d: dd.D3PM(Uniform(3), torch.zeros(0)), "betas"),
        (lambda p, x, d: dd.D3PM("uniform", schedules.jsd(3)), "Transition"),
        (lambda p, x, d: p.q_sample(x, 6), "t must lie"),
        (lambda p, x, d: p.q_sample(x, torch.tensor([0.5, 1.0])), "integer"),
        (lambda p, x, d: p.q_sample(x, torch.tensor([1, 2, 3])), "shape"),
        (lambda p, x, d: p.q_sample(x + 4, 1), r"\[0, 4\)"),
        (lambda p, x, d: p.q_sample(x.float(), 1), "integer tensor"),
        (lambda p, x, d: p.q_posterior_logits(x, x, 0), "t must lie"),
        (lambda p, x, d: p.q_posterior_logits(x, x, 2, step_size=3), "0 <= s < t"),
        (lambda p, x, d: p.q_posterior_logits(x, x, 2, s=2), "t must lie|0 <= s < t"),
        (lambda p, x, d: p.q_posterior_logits(x, x, 2, step_size=2, s=0), "not both"),
        (lambda p, x, d: p.q_posterior_logits(torch.ones(2, 3, 4), x, 2), "summing to one"),
        (lambda p, x, d: p.p_logits(torch.zeros(2, 3, 5), x, 2), "expected"),
        (lambda p, x, d: p.training_losses(d, x, loss="kl"), "loss must be"),
        (lambda p, x, d: p.training_losses(d, x, hybrid_lambda=-1.0), "hybrid_lambda"),
        (lambda p, x, d: p.training_losses(d, x, time_sampling="sobol"), "time_sampling"),
        (lambda p, x, d: p.training_losses(lambda a, b: a.float(), x), "denoiser output"),
        (lambda p, x, d: p.nll_bound(d, x, step_size=2), "dividing"),
        (lambda p, x, d: p.nll_bound(d, x, step_size=5, steps=1), "not both"),
        (lambda p, x, d: p.nll_bound(d, x, steps=9), "steps must"),
        (lambda p, x, d: p.sample(d, (2, 3), fixed=(x, x)), "bool tensor of shape"),
        (lambda p, x, d: p.sample(d, (2, 3), fixed=(torch.ones(2, 3, dtype=torch.bool), x + 7)),
         "fixed values"),
        (lambda p, x, d: p.sample(d, (2, 0)), "shape"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, message: str) -> None:
    proc = PROCESSES["uniform"]()
    x = torch.zeros(2, 3, dtype=torch.long)
    den = brute.RandomDenoiser(4, 5)
    with pytest.raises(ValueError, match=message):
        call(proc, x, den)


def test_to_returns_self_and_keeps_results() -> None:
    proc = PROCESSES["absorbing"]()
    x_0 = torch.tensor([[0, 1, 2]])
    before = proc.q_probs(x_0, 2)
    assert proc.to("cpu") is proc
    assert torch.equal(proc.q_probs(x_0, 2), before)
    assert proc.num_steps == 5 and proc.num_classes == 4 and proc.betas.dtype == torch.float64


def test_dense_process_matches_closed_form_uniform() -> None:
    """The same uniform process, closed form and dense, gives the same losses."""
    betas = schedules.linear(4, 0.1, 0.6)
    closed = dd.D3PM(Uniform(3), betas)
    mats = torch.stack([closed.transition_matrix(t) for t in range(1, 5)])
    dense = dd.D3PM(Dense(matrices=mats), betas)
    den = brute.RandomDenoiser(3, 4)
    x_0 = torch.randint(0, 3, (16, 2), generator=torch.Generator().manual_seed(0))
    a = closed.nll_bound(den, x_0, generator=torch.Generator().manual_seed(1))
    x_t = closed.q_sample(x_0, 3, torch.Generator().manual_seed(2))
    logits = den(x_t, torch.full((16,), 3))
    torch.testing.assert_close(closed.p_logits(logits, x_t, 3), dense.p_logits(logits, x_t, 3),
                               atol=1e-5, rtol=1e-5)
    assert torch.isfinite(a).all()
