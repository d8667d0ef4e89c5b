"""Inception Score (Salimans et al., 2016): IS = exp(E_x KL(p(y | x) || p(y))).

The classifier is supplied by the user (a TorchScript file or an nn.Module mapping an image batch
to class logits [B, num_labels]); no weights are downloaded. The score is computed from
log-probabilities in float64, in `splits` equal parts whose mean and standard deviation are
reported, as is customary (10 splits of 50,000 images in the literature).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

Classifier = Callable[[Tensor], Tensor]


def load_classifier(path: str | Path, device: str = "cpu") -> torch.jit.ScriptModule:
    """torch.jit.load a classifier mapping images to logits [B, num_labels]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Inception Score classifier not found: {path}")
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path} is not a TorchScript module: {first_line}") from None


def score_from_log_probs(log_probs: np.ndarray) -> float:
    """exp(mean_x KL(p(y|x) || p(y))) for log p(y|x) [N, num_labels], p(y) the mean of p(y|x).

    Uniform predictions give 1; confident, equally used distinct classes give num_labels.
    """
    log_probs = np.asarray(log_probs, dtype=np.float64)
    if log_probs.ndim != 2 or len(log_probs) == 0:
        raise ValueError(f"Inception Score needs log-probabilities [N, labels], "
                         f"got shape {log_probs.shape}")
    probs = np.exp(log_probs)
    log_marginal = np.log(probs.mean(axis=0))
    # 0 * log 0 terms are 0: where p(y|x) = 0 the product is dropped.
    log_ratio = np.where(probs > 0, log_probs - log_marginal, 0.0)
    terms = probs * log_ratio
    return float(math.exp(terms.sum(axis=1).mean()))


def inception_score(
    classifier: Classifier,
    batches: Iterable[Tensor],
    splits: int = 10,
    preprocess: Callable[[Tensor], Tensor] | None = None,
) -> tuple[float, float]:
    """Mean and standard deviation over `splits` parts of the Inception Score.

    Args:
        classifier: images -> logits [b, num_labels].
        batches: image batches, passed through `preprocess` (default: unchanged) first.
        splits: number of equal parts (the remainder of N / splits is dropped).
    Returns:
        (mean, std) of the per-part scores.
    """
    with torch.no_grad():
        parts = [torch.log_softmax(classifier(preprocess(x) if preprocess else x).double(), -1)
                 for x in batches]
    if not parts:
        raise ValueError("Inception Score needs at least one image")
    log_probs = torch.cat(parts).cpu().numpy()
    if splits < 1 or len(log_probs) < splits:
        raise ValueError(f"cannot split {len(log_probs)} images into {splits} parts")
    size = len(log_probs) // splits
    scores = [score_from_log_probs(log_probs[i * size:(i + 1) * size]) for i in range(splits)]
    return float(np.mean(scores)), float(np.std(scores))
