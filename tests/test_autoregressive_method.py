"""The autoregressive baseline: exact NLL by hand, normalisation by enumeration, sampling."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from discrete_diffusion.categorical import gumbel_max
from discrete_diffusion.data.base import DataInfo
from discrete_diffusion.methods import autoregressive
from discrete_diffusion.methods.autoregressive import AutoregressiveMethod
from discrete_diffusion.networks import causal_transformer
from discrete_diffusion.networks.transformer import Config

SMALL = Config(num_layers=1, d_model=16, num_heads=2, mlp_dim=32)


def _setup(k_data: int = 3, length: int = 4, seed: int = 0):
    info = DataInfo(num_classes=k_data, example_shape=(length,), unit="token")
    method = autoregressive.build(autoregressive.Config(), info)
    torch.manual_seed(seed)
    model = causal_transformer.build(SMALL, info, method.num_classes, method.num_steps).eval()
    with torch.no_grad():  # larger logits than the 0.02 init, so the test is not trivial
        model.trunk.head.weight.mul_(50.0)
    return method, model


def test_sizes_and_bos() -> None:
    method, _ = _setup(k_data=5, length=7)
    assert (method.num_classes, method.num_steps, method.bos) == (6, 7, 5)
    x = torch.tensor([[0, 1, 2, 3, 4, 0, 1]])
    assert method.shift_right(x).tolist() == [[5, 0, 1, 2, 3, 4, 0]]


def test_nll_is_the_sum_of_per_token_cross_entropies() -> None:
    method, model = _setup()
    x = torch.tensor([[0, 2, 1, 1], [2, 2, 0, 1]])
    with torch.no_grad():
        logits = model(torch.cat([torch.full((2, 1), method.bos), x[:, :-1]], 1))[..., :3]
    by_hand = torch.zeros(2)
    for b in range(2):
        for i in range(4):
            row = logits[b, i]
            by_hand[b] += -(float(row[x[b, i]]) - math.log(float(row.exp().sum())))
    nll = method.nll(model, x)
    torch.testing.assert_close(nll, by_hand, rtol=1e-5, atol=1e-5)
    out = method.losses(model, x)
    assert torch.equal(out["loss"], out["bound"]) and torch.allclose(out["loss"], nll)
    assert torch.equal(method.nll(model, x, steps=20), nll)  # steps are ignored


def test_probabilities_sum_to_one_over_all_sequences() -> None:
    method, model = _setup(k_data=3, length=3)
    xs = torch.tensor(list(itertools.product(range(3), repeat=3)))
    total = torch.exp(-method.nll(model, xs).double()).sum()
    assert abs(float(total) - 1.0) < 1e-5


def test_sampling_frequencies_match_the_model() -> None:
    method, model = _setup(k_data=2, length=2, seed=3)
    xs = torch.tensor(list(itertools.product(range(2), repeat=2)))
    probs = torch.exp(-method.nll(model, xs).double())
    gen = torch.Generator().manual_seed(0)
    samples = method.sample(model, 4000, generator=gen)
    assert samples.shape == (4000, 2) and samples.max() < 2  # BOS is never drawn
    freq = torch.stack([(samples == x).all(-1).double().mean() for x in xs])
    assert torch.all((freq - probs).abs() < 4 * torch.sqrt(probs * (1 - probs) / 4000) + 1e-3)


def test_sampling_draws_from_the_generator() -> None:
    """With a CPU generator: one Gumbel-max draw per position, left to right, seeded."""
    method, model = _setup(k_data=3, length=4)
    a = method.sample(model, 6, generator=torch.Generator().manual_seed(4))
    b = method.sample(model, 6, generator=torch.Generator().manual_seed(4))
    c = method.sample(model, 6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen, x = torch.Generator().manual_seed(4), torch.full((6, 4), method.bos)
    with torch.no_grad():
        for i in range(4):
            logp = method.log_probs(model, method.shift_right(x)[:, : i + 1])[:, i].double()
            x[:, i] = gumbel_max(logp, gen)
    assert torch.equal(x, a)


def test_fixed_positions_and_trajectory() -> None:
    method, model = _setup(k_data=3, length=4)
    held = torch.tensor([False, True, False, True])
    values = torch.tensor([0, 2, 0, 1])
    x, traj = method.sample(model, 5, fixed=(held, values), trajectory=True,
                            generator=torch.Generator().manual_seed(1))
    assert torch.all(x[:, 1] == 2) and torch.all(x[:, 3] == 1)
    assert len(traj) == 4 and torch.equal(traj[-1][1], x)
    assert method.to("cpu") is method


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="sequences"):
        autoregressive.build(autoregressive.Config(),
                             DataInfo(num_classes=3, example_shape=(2, 2), unit="dim"))
    method, model = _setup(length=4)
    with pytest.raises(ValueError, match="expects x_0"):
        method.nll(model, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="vocabulary"):
        AutoregressiveMethod(0, 3)


def test_trains_a_first_order_chain() -> None:
    """A few Adam steps on a deterministic alternating sequence lower the exact NLL."""
    method, model = _setup(k_data=2, length=6)
    model.train()
    x = torch.tensor([[0, 1, 0, 1, 0, 1]] * 8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = float(method.nll(model, x).mean())
    for _ in range(30):
        opt.zero_grad()
        method.losses(model, x)["loss"].mean().backward()
        opt.step()
    assert float(method.nll(model, x).mean()) < 0.5 * before
    assert isinstance(model, nn.Module)
