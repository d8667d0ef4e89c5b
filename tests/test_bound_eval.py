"""Bound evaluation: means, standard errors, counts and perplexity against direct formulas,
with a method whose per-example bound is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from discrete_diffusion.data.base import DataInfo
from discrete_diffusion.evaluation.bound import evaluate_bound, named_result, summarise
from discrete_diffusion.methods.diffusion import Config, DiffusionMethod
from discrete_diffusion.networks.mlp import MLPDenoiser


class KnownBound:
    """nll(x_0) = (sum of x_0 over positions + 1) * steps nats, deterministic per example."""

    num_classes, num_steps = 5, 10

    def nll(self, model, x_0, steps=None, generator=None):
        return (x_0.reshape(x_0.shape[0], -1).sum(-1).double() + 1.0) * (steps or self.num_steps)


def test_mean_stderr_count_and_perplexity():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (23, 4), generator=gen)
    batches = list(torch.split(x, 5))  # uneven last batch
    results = evaluate_bound(KnownBound(), None, batches, [None, 2], unit="token")
    for result, steps in zip(results, (10, 2)):
        bits = (x.sum(-1).double().numpy() + 1.0) * steps / (4 * math.log(2))
        assert result["count"] == 23 and result["steps"] == (None if steps == 10 else 2)
        assert result["bits_per_unit"] == pytest.approx(bits.mean())
        assert result["stderr"] == pytest.approx(bits.std(ddof=1) / math.sqrt(23))
        nats_per_token = (x.sum(-1).double().numpy() + 1.0) * steps / 4
        assert result["perplexity"] == pytest.approx(math.exp(nats_per_token.mean()))


def test_batching_does_not_change_the_result():
    x = torch.randint(0, 5, (17, 3), generator=torch.Generator().manual_seed(1))
    one = evaluate_bound(KnownBound(), None, [x], [4])[0]
    many = evaluate_bound(KnownBound(), None, torch.split(x, 2), [4])[0]
    assert one["bits_per_unit"] == pytest.approx(many["bits_per_unit"])
    assert one["stderr"] == pytest.approx(many["stderr"])


def test_images_count_dimensions():
    x = torch.randint(0, 5, (6, 2, 3, 3), generator=torch.Generator().manual_seed(2))
    (result,) = evaluate_bound(KnownBound(), None, [x], [None], unit="dim")
    bits = (x.reshape(6, -1).sum(-1).double() + 1.0) * 10 / (18 * math.log(2))
    assert result["bits_per_unit"] == pytest.approx(float(bits.mean()))
    assert result["count"] == 6 and "perplexity" not in result
    named = named_result(result)
    assert set(named) == {"steps", "bits_per_dim", "stderr", "num_images"}


def test_named_fields_per_unit():
    bits = torch.tensor([1.0, 2.0, 4.0])
    char = named_result(summarise(bits, 5, "char"))
    assert char["bits_per_char"] == char["bits_per_token"] == pytest.approx(7 / 3)
    assert char["num_sequences"] == 3 and "perplexity" not in char
    token = named_result(summarise(bits, 5, "token"))
    assert token["perplexity"] == pytest.approx(2 ** (7 / 3))
    assert token["stderr"] == pytest.approx(np.std([1, 2, 4], ddof=1) / math.sqrt(3))
    assert summarise(torch.tensor([3.0]), 1)["stderr"] is None  # one example: unknown spread
    with pytest.raises(ValueError, match="no examples"):
        summarise(torch.empty(0), 1)


def test_real_bound_is_positive_and_reproducible():
    info = DataInfo(num_classes=3, example_shape=(4,), unit="token")
    method = DiffusionMethod(Config(transition="uniform", schedule="cosine", num_steps=6), info)
    torch.manual_seed(0)
    model = MLPDenoiser((4,), method.num_classes, hidden=16, layers=1, embed_dim=4)
    x = torch.randint(0, 3, (10, 4), generator=torch.Generator().manual_seed(3))
    runs = [evaluate_bound(method, model, [x], [6, 3], torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert runs[0] == runs[1]
    for entry in runs[0]:
        # a bound on -log p of a 3-letter alphabet can't be below 0 nor, for an untrained
        # model near uniform, far from log2(3)
        assert 0 < entry["bits_per_unit"] < 3 * math.log2(3)
