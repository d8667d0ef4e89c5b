"""Inception Score: known probabilities and a tiny classifier."""

import math

import numpy as np
import pytest
import torch

from discrete_diffusion.evaluation import inception_score as isc


def test_uniform_predictions_score_one():
    log_p = np.full((12, 5), -math.log(5))
    assert isc.score_from_log_probs(log_p) == pytest.approx(1.0)


def test_confident_distinct_classes_score_number_of_classes():
    log_p = np.log(np.eye(4)[np.arange(8) % 4] * (1 - 1e-12) + 1e-12 / 4)
    assert isc.score_from_log_probs(log_p) == pytest.approx(4.0, rel=1e-6)
    exact = np.where(np.eye(3) > 0, 0.0, -np.inf)  # log of one-hot rows with true zeros
    assert isc.score_from_log_probs(exact) == pytest.approx(3.0)


def test_matches_brute_force_kl():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6), size=10)
    marginal = p.mean(0)
    brute = math.exp(np.mean([(row * np.log(row / marginal)).sum() for row in p]))
    assert isc.score_from_log_probs(np.log(p)) == pytest.approx(brute)


def test_with_a_tiny_classifier_and_splits(tmp_path):
    class PickByMean(torch.nn.Module):  # confident class = image mean bucket
        def forward(self, x):
            bucket = (x.float().mean((1, 2, 3)) // 64).long().clamp(max=3)
            return 50.0 * torch.nn.functional.one_hot(bucket, 4).float()

    images = torch.cat([torch.full((5, 1, 2, 2), v) for v in (10, 80, 150, 220)])
    scripted = torch.jit.script(PickByMean())
    scripted.save(str(tmp_path / "clf.pt"))
    clf = isc.load_classifier(tmp_path / "clf.pt")
    mean, std = isc.inception_score(clf, [images], splits=1)
    assert mean == pytest.approx(4.0, rel=1e-6) and std == 0.0
    mean, _ = isc.inception_score(clf, [images[:10], images[10:]], splits=2)
    assert mean == pytest.approx(2.0, rel=1e-6)  # each half holds two classes
    with pytest.raises(ValueError, match="cannot split"):
        isc.inception_score(clf, [images[:3]], splits=10)
