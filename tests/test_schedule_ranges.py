"""Who checks the range of a schedule: D3PM checks sign and shape, each transition its range."""

import pytest
import torch

import discrete_diffusion as dd


def test_rate_processes_accept_betas_above_one():
    emb = torch.randn(12, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tr = dd.transitions.NearestNeighbor(emb, k=3)
    marginal = torch.full((12,), 1 / 12, dtype=torch.float64)
    betas = dd.schedules.mutual_information(tr, 6, marginal)
    assert float(betas.max()) > 1.0  # rates, not probabilities: the last steps are large
    proc = dd.D3PM(tr, betas)
    x_0 = torch.randint(0, 12, (3, 5), generator=torch.Generator().manual_seed(1))
    bound = proc.nll_bound(lambda x, t: torch.zeros(*x.shape, 12), x_0)
    assert torch.isfinite(bound).all() and (bound > 0).all()


def test_dense_rate_accepts_betas_above_one():
    rate = torch.tensor([[-1.0, 1.0, 0.0], [0.5, -1.0, 0.5], [0.0, 1.0, -1.0]])
    proc = dd.D3PM(dd.transitions.Dense(rate=rate), torch.tensor([0.5, 3.0]))
    assert torch.allclose(proc.cumulative_matrix(2).sum(-1), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("betas", [torch.tensor([0.1, -0.2]), torch.tensor([float("nan")])])
def test_d3pm_rejects_negative_or_non_finite_betas(betas):
    with pytest.raises(ValueError, match="finite and >= 0"):
        dd.D3PM(dd.transitions.Uniform(num_classes=4), betas)


@pytest.mark.parametrize("make", [
    lambda: dd.transitions.Uniform(num_classes=4),
    lambda: dd.transitions.Absorbing(num_classes=4, mask_index=3),
])
def test_probability_processes_reject_betas_above_one(make):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dd.D3PM(make(), torch.tensor([0.5, 1.5]))
