"""The step rules beyond ancestral: first_hitting, remdm, tau_leaping, confidence.

Exactness is checked against the ancestral sampler's law computed by enumerating every path on
tiny K, L, T with a fixed denoiser that depends on x_t and t.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

import discrete_diffusion as dd
from discrete_diffusion import sampling, sampling_rules
from discrete_diffusion.cli.main import main
from discrete_diffusion.data.base import DataInfo
from discrete_diffusion.methods import autoregressive
from discrete_diffusion.transitions import Absorbing, Dense, Uniform

SAMPLERS = ("ancestral", "first_hitting", "remdm", "remdm:eta=0.3", "tau_leaping", "confidence")
K, M, L = 4, 3, 3  # three data values and the mask, three positions


class TableDenoiser:
    """Logits from a fixed random table indexed by (t, the whole sequence x_t, position): a
    denoiser that depends on x_t and t. `mask_logit` None leaves the mask its random logit
    (p~ gives it mass, as where the mask is a data value); a number replaces it."""

    def __init__(self, k: int, length: int, steps: int, mask: int, mask_logit: float | None,
                 seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.k, self.rows = k, 0
        self.table = 2.0 * torch.randn(steps + 1, k ** length, length, k, generator=gen)
        if mask_logit is not None:
            self.table[..., mask] = mask_logit

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.rows += x_t.shape[0]
        code = (x_t * self.k ** torch.arange(x_t.shape[1] - 1, -1, -1)).sum(1)
        return self.table[t, code]


def _all_states(k: int, length: int) -> torch.Tensor:
    """Every sequence, ordered by its base-k code, LongTensor [k^L, L]."""
    codes = torch.arange(k ** length)
    return torch.stack([(codes // k ** i) % k for i in range(length - 1, -1, -1)], 1)


def _ancestral_law(proc: dd.D3PM, den, grid: list[int]) -> torch.Tensor:
    """The exact law of the ancestral sampler's x_0 from x_T = all masks, float64 [K^L], by
    enumerating every state at every grid time (eq. 4, positions independent given x_t)."""
    states = _all_states(K, L)
    law = torch.zeros(len(states), dtype=torch.float64)
    law[-1] = 1.0  # all masks: the largest code
    for s, t in list(zip(grid[:-1], grid[1:]))[::-1]:
        log_p = proc.p_logits(den(states, torch.full((len(states),), t)), states, t, s=s).double()
        # step[a, b] = prod_i p(x_s[i] = states[b, i] | x_t = states[a])
        step = log_p[:, torch.arange(L), states].sum(-1).exp()  # [K^L (a), K^L (b), L] summed
        law = law @ step
    return law


def _frequencies(x: torch.Tensor) -> torch.Tensor:
    code = (x * K ** torch.arange(L - 1, -1, -1)).sum(1)
    return torch.bincount(code, minlength=K ** L).double()


def _chi_square(counts: torch.Tensor, law: torch.Tensor) -> float:
    """Pearson's statistic; a count where the law is zero makes it infinite."""
    n = counts.sum()
    if bool((counts[law == 0] > 0).any()):
        return math.inf
    keep = law > 0
    expected = n * law[keep]
    return float(((counts[keep] - expected) ** 2 / expected).sum())


# chi-square critical value for <= 63 degrees of freedom at p = 1e-4 is below 110
CRITICAL = 110.0


@pytest.mark.parametrize(("sampler", "mask_logit", "steps"), [
    ("first_hitting", -1e9, None), ("first_hitting", -1e9, 2),
    ("first_hitting", None, None),  # the mask has mass: the proposals are thinned, still exact
    ("remdm:eta=0", -1e9, None), ("remdm:eta=0", None, 3),
])
def test_sampler_has_exactly_the_ancestral_law(sampler, mask_logit, steps) -> None:
    proc = dd.D3PM(Absorbing(K, M), dd.schedules.linear(4, 0.2, 0.6))
    den = TableDenoiser(K, L, 4, M, mask_logit)
    grid = proc.timestep_grid(steps=steps)
    law = _ancestral_law(proc, den, grid)
    x = proc.sample(den, (20000, L), steps=steps, sampler=sampler,
                    generator=torch.Generator().manual_seed(3))
    counts = _frequencies(x)
    assert _chi_square(counts, law) < CRITICAL
    # the test has power: a denoiser shifted by one step in t gives another law, rejected
    wrong = _ancestral_law(proc, lambda x_t, t: den(x_t, t - 1), grid)
    assert _chi_square(counts, wrong) > 5 * CRITICAL
    assert 0.5 * float((counts / counts.sum() - law).abs().sum()) < 0.04  # noise ~0.02


@pytest.mark.parametrize("batch", [1, 16])
def test_first_hitting_passes_per_sequence_follow_the_formula(batch: int) -> None:
    """jsd schedule: each position unmasks at a uniform step, so the expected number of steps
    with an unmasking is T (1 - (1 - 1/T)^L) ~ T (1 - exp(-L/T)), 226 for T = 1000, L = 256."""
    T, length = 1000, 256
    proc = dd.D3PM(Absorbing(3, 2), dd.schedules.jsd(T))
    rows = []

    def den(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        rows.append(x_t.shape[0])
        return torch.zeros(*x_t.shape, 3).index_fill_(-1, torch.tensor([2]), -1e9)

    x = proc.sample(den, (batch, length), sampler="first_hitting",
                    generator=torch.Generator().manual_seed(0))
    assert not bool((x == 2).any())
    expected = T * (1 - (1 - 1 / T) ** length)
    assert abs(expected - 226.0) < 0.5
    per_sequence = sum(rows) / batch  # the std of one sequence's count is about 4.6
    assert abs(per_sequence - expected) < (25 if batch == 1 else 8)
    rows.clear()
    proc.sample(den, (batch, 4), steps=10, generator=torch.Generator().manual_seed(0))
    assert sum(rows) == 10 * batch  # ancestral: one pass per step and sequence


def _absorbing() -> dd.D3PM:
    return dd.D3PM(Absorbing(K, M), dd.schedules.jsd(6))


@pytest.mark.parametrize(("sampler", "kind"), [
    *((name, "absorbing") for name in SAMPLERS),
    *((name, "uniform") for name in ("ancestral", "tau_leaping")),  # the others: absorbing only
])
def test_fixed_positions_never_change(sampler: str, kind: str) -> None:
    proc = _absorbing() if kind == "absorbing" else dd.D3PM(Uniform(K), dd.schedules.cosine(6))
    den = TableDenoiser(K, L, 6, M, -1e9 if kind == "absorbing" else None)
    held = torch.tensor([[True, False, True]]).expand(64, L)
    values = torch.tensor([[2, 0, 1]]).expand(64, L)
    seen = []

    def watched(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(x_t.clone())
        return den(x_t, t)

    x, path = proc.sample(watched, (64, L), sampler=sampler, fixed=(held, values),
                          return_trajectory=True, generator=torch.Generator().manual_seed(1))
    assert len(path) == 7 and seen
    for state in [s for _, s in path] + seen:
        assert torch.equal(state[:, [0, 2]], torch.tensor([[2, 1]]).expand(len(state), 2))
    assert not bool((x == M).any()) if kind == "absorbing" else x.max() < K


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_start_reaches_a_confident_target(sampler: str) -> None:
    proc = _absorbing()
    target = torch.tensor([[0, 1, 2]]).expand(5, L)  # the same target in every row

    def sure(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = 1e4 * torch.nn.functional.one_hot(target[: len(x_t)], K).float()
        return logits.index_fill(-1, torch.tensor([M]), -1e9)

    x_t = proc.q_sample(target, 4, torch.Generator().manual_seed(0))
    x, path = proc.sample(sure, start=(4, x_t), sampler=sampler, return_trajectory=True,
                          generator=torch.Generator().manual_seed(0))
    assert [t for t, _ in path] == [4, 3, 2, 1, 0] and torch.equal(path[0][1], x_t)
    assert torch.equal(x, target)  # remdm may remask on the way, never at the last step


def test_remdm_keeps_the_forward_marginals_by_enumeration() -> None:
    """x_t ~ q(x_t | x_0) and p~ = x_0 give x_s ~ q(x_s | x_0) for every eta (the ReMDM
    identity), and eta = 0 is eq. (4) for any p~, the mask's mass included."""
    proc = dd.D3PM(Absorbing(K, M), dd.schedules.linear(8, 0.05, 0.4))
    x_t = torch.tensor([0, M])[:, None]  # x_0 = 0: x_t is x_0 or the mask
    log_x0 = torch.nn.functional.one_hot(torch.zeros(2, 1, dtype=torch.long), K).double().log()
    for s, t in [(0, 1), (2, 5), (6, 7), (0, 8), (3, 8)]:
        q_t = proc.q_probs(torch.zeros(1, 1, dtype=torch.long), t).double()[0, 0]
        q_s = proc.q_probs(torch.zeros(1, 1, dtype=torch.long), s).double()[0, 0]
        for eta in (0.0, 0.3, 1.0):
            law = sampling_rules.remdm_log_probs(proc, log_x0, x_t, torch.tensor([s, s]),
                                                 torch.tensor([t, t]), eta).exp()[:, 0]
            assert torch.allclose(q_t[[0, M]] @ law, q_s, atol=1e-6)
        sigma = sampling_rules.remdm_sigma(proc, torch.tensor([s]), torch.tensor([t]), 1.0)
        assert 0 <= float(sigma) <= 1 and (s > 0 or float(sigma) == 0.0)
    p_tilde = torch.randn(5, 2, K, generator=torch.Generator().manual_seed(0)).log_softmax(-1)
    x = torch.tensor([[M, 0], [M, M], [1, M], [2, 1], [M, M]])
    s, t = torch.tensor([0, 1, 2, 3, 5]), torch.tensor([1, 3, 5, 8, 6])
    assert torch.allclose(sampling_rules.remdm_log_probs(proc, p_tilde, x, s, t, 0.0).exp(),
                          proc.log_p_posterior(p_tilde, x, s, t).double().exp(), atol=1e-6)


@pytest.mark.parametrize("mask_logit", [-1e9, None])
def test_remdm_step_draws_its_law(mask_logit) -> None:
    proc = dd.D3PM(Absorbing(K, M), dd.schedules.linear(6, 0.1, 0.4))
    x_t = torch.tensor([[M, 1, M]]).expand(40000, L)
    den = TableDenoiser(K, L, 6, M, mask_logit, seed=2)
    s, t = torch.full((40000,), 2), torch.full((40000,), 4)
    x_s = sampling_rules.remdm_step(proc, den, x_t, s, t, torch.Generator().manual_seed(0),
                                    eta=0.6)
    log_x0 = den(x_t[:1], t[:1]).log_softmax(-1)
    law = sampling_rules.remdm_log_probs(proc, log_x0, x_t[:1], s[:1], t[:1], 0.6).exp()[0]
    for i in range(L):
        counts = torch.bincount(x_s[:, i], minlength=K).double()
        assert _chi_square(counts, law[i]) < 30.0  # 3 degrees of freedom, p < 1e-5


@pytest.mark.parametrize("transition", ["uniform", "absorbing", "absorbing_mask_mass"])
def test_tau_leaping_step_converges_to_the_exact_step(transition: str) -> None:
    """One step t -> t - h: the distance to eq. (4) falls like h^2, so the rates (the first
    order of the law in h) are those of the exact step: a first-order method."""
    T, t = 4000, 2000
    tr = Uniform(K) if transition == "uniform" else Absorbing(K, M)
    proc = dd.D3PM(tr, dd.schedules.cosine(T))  # alphabar_t ~ 0.5 at t = T / 2
    x_t = torch.tensor([[0, M, 2, M]])
    p_tilde = torch.randn(1, 4, K, generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64)
    if transition == "absorbing":
        p_tilde[..., M] = -1e9
    log_x0 = p_tilde.log_softmax(-1)
    errors = []
    for h in (256, 64, 16, 4):
        s, tt = torch.tensor([t - h]), torch.tensor([t])
        tau = sampling_rules.tau_leaping_log_probs(proc, log_x0, x_t, s, tt).exp()
        exact = proc.log_p_posterior(log_x0, x_t, s, tt).double().exp()
        assert torch.allclose(tau.sum(-1), torch.ones(1, 4, dtype=torch.float64))
        errors.append(float((tau - exact).abs().sum(-1).max()))
    assert errors[-1] < 1e-4
    assert all(0 < b < a / 10 for a, b in zip(errors, errors[1:]))  # ~ 1/16 per 4x smaller h


@pytest.mark.parametrize("transition", ["uniform", "absorbing"])
def test_tau_leaping_samples_are_valid_states(transition: str) -> None:
    tr = Uniform(K) if transition == "uniform" else Absorbing(K, M)
    proc = dd.D3PM(tr, dd.schedules.jsd(8) if transition == "absorbing"
                   else dd.schedules.cosine(8))
    den = TableDenoiser(K, L, 8, M, -1e9 if transition == "absorbing" else None)
    x = proc.sample(den, (200, L), steps=3, sampler="tau_leaping",
                    generator=torch.Generator().manual_seed(0))
    assert x.min() >= 0 and x.max() < (M if transition == "absorbing" else K)


def test_confidence_unmasks_the_most_confident_positions() -> None:
    """jsd, T = 4: from t = 4 to s = 2 half of the 4 masked positions unmask, those whose
    drawn value is most probable; the step to 0 unmasks the rest."""
    proc = dd.D3PM(Absorbing(K, M), dd.schedules.jsd(4))
    peaks = torch.tensor([1.0, 3.0, 4.0, 2.0])  # position 2, then 1, is the most confident

    def den(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*x_t.shape, K)
        logits[..., 0] = peaks
        return logits.index_fill(-1, torch.tensor([M]), -1e9)

    x_t = torch.full((1, 4), M)
    x_s = sampling_rules.confidence_step(proc, den, x_t, torch.tensor([2]), torch.tensor([4]),
                                         argmax=True)
    assert x_s.tolist() == [[M, 0, 0, M]]
    x, path = proc.sample(den, (5, 4), steps=2, sampler="confidence", return_trajectory=True,
                          generator=torch.Generator().manual_seed(0))
    assert [int((s == M).sum(1).max()) for _, s in path] == [4, 2, 0]


@pytest.mark.parametrize("sampler", ["first_hitting", "remdm", "confidence", "tau_leaping"])
def test_samplers_refuse_other_transitions(sampler: str) -> None:
    proc = dd.D3PM(Dense(matrices=torch.eye(3, dtype=torch.float64).expand(4, 3, 3)),
                   dd.schedules.constant(4, 0.1))
    with pytest.raises(ValueError, match=rf"^sampler {sampler} needs an? "):
        proc.sample(lambda x, t: torch.zeros(*x.shape, 3), (1, 2), sampler=sampler)


@pytest.mark.parametrize(("name", "message"), [
    ("fast", r"^sampler must be one of \['ancestral', 'confidence', 'first_hitting', 'remdm', "
             r"'tau_leaping'\], got 'fast'$"),
    ("remdm:beta=1", r"^sampler remdm takes options \['eta'\], got 'beta=1'$"),
    ("remdm:eta=x", r"^sampler option remdm:eta must be a number, got 'x'$"),
    ("remdm:eta=1.5", r"^remdm eta must be a number in \[0, 1\], got 1.5$"),
    ("first_hitting:eta=1", r"^sampler first_hitting takes no options, got 'eta=1'$"),
])
def test_sampler_names_are_checked(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _absorbing().sample(TableDenoiser(K, 2, 6, M, -1e9), (1, 2), sampler=name)


def test_autoregressive_method_samples_only_ancestrally() -> None:
    method = autoregressive.build(autoregressive.Config(),
                                  DataInfo(num_classes=3, example_shape=(4,), unit="char"))
    with pytest.raises(ValueError, match="only with sampler 'ancestral', got 'first_hitting'"):
        method.sample(torch.nn.Linear(1, 1), 2, sampler="first_hitting")


def test_step_rule_names_every_sampler() -> None:
    assert set(sampling.STEP_RULES) == {s.split(":")[0] for s in SAMPLERS}
    assert sampling.step_rule("remdm:eta=0.25").keywords == {"eta": 0.25}


# ----- the CLI ---------------------------------------------------------------------------------
CONFIG = {
    "data": {"kind": "synthetic", "vocab_size": 4, "seq_len": 6, "num_train": 64, "num_eval": 24},
    "model": {"kind": "mlp", "hidden": 32, "layers": 1, "embed_dim": 8},
    "method": {"kind": "diffusion", "transition": "absorbing", "schedule": "jsd",
               "num_steps": 20},
    "train": {"steps": 2, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "log_every": 1,
              "eval_every": 0, "ckpt_every": 2, "device": "cpu"},
}


@pytest.fixture(scope="module")
def absorbing_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("samplers")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    assert main(["train", "--config", str(config), "--out", str(root / "run"),
                 "--no-progress"]) == 0
    return root / "run"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_cli_samples_with_every_sampler_and_writes_stats(absorbing_run, tmp_path, capsys,
                                                         sampler):
    stats = tmp_path / "stats" / "s.json"
    assert main(["sample", "--checkpoint", str(absorbing_run), "--num", "8", "--steps", "20",
                 "--sampler", sampler, "--stats", str(stats)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len([line for line in lines if len(line.split()) == 6]) == 8  # 8 samples of length 6
    record = json.loads(stats.read_text())
    assert set(record) == {"sampler", "steps", "nfe_per_sample", "seconds"}
    assert record["sampler"] == sampler and record["steps"] == 20 and record["seconds"] > 0
    if sampler == "first_hitting":  # 6 positions, 20 jsd steps: 20 (1 - 0.95^6) ~ 5.3
        assert 2 <= record["nfe_per_sample"] <= 9
    elif sampler in ("ancestral", "tau_leaping"):
        assert record["nfe_per_sample"] == 20


def test_cli_rejects_an_unknown_sampler_in_one_line(absorbing_run, capsys):
    assert main(["sample", "--checkpoint", str(absorbing_run), "--sampler", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("d3pm: error: sampler must be one of") and err.count("\n") == 1
