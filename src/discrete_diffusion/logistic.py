"""The truncated discretized logistic head for ordinal data (paper section 3.3, appendix A.8).

A network predicting (loc, log_scale) per pixel defines p~(x_0 | x_t) over K ordered bins:
bin k has centre c_k = linspace(-1, 1, K)[k] and width w = 2/(K - 1), and

    p~(k) propto sigmoid(inv_s (c_k - loc + w/2)) - sigmoid(inv_s (c_k - loc - w/2)),

renormalised over the K bins, which truncates the logistic to [-1 - w/2, 1 + w/2] (the mass
outside is spread proportionally, not piled onto the edge bins).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["logits"]

# inv_s is capped at exp(_MAX_LOG_INV_S): beyond it the bins are a delta to float precision,
# and the cap keeps inv_s * (c - loc) finite so that no NaN can arise from inf * 0.
_MAX_LOG_INV_S = 30.0


def log1m_exp_neg(x: Tensor) -> Tensor:
    """log(1 - exp(-x)) for x >= 0, accurate for small and large x (Maechler, 2012).

    Note the sign: `categorical.log1mexp` computes log(1 - exp(x)) for x <= 0.

    Args:
        x: float tensor, x >= 0 (x = 0 gives -inf).
    Returns:
        float tensor shaped like `x`.
    """
    small = x < math.log(2.0)
    # expm1 is accurate near 0, log1p accurate for large x; each branch sees safe values only.
    x_small = torch.where(small, x, torch.ones_like(x))
    x_large = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, torch.log(-torch.expm1(-x_small)), torch.log1p(-torch.exp(-x_large)))


def logits(
    loc: Tensor, log_scale: Tensor, num_classes: int = 256, scale_shift: float = 2.0
) -> Tensor:
    """Normalised log-probabilities of the truncated discretized logistic.

    With a = inv_s (c_k - loc + w/2) and b = inv_s (c_k - loc - w/2),
    sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(-(a - b))), so

        log p~(k) = log_sigmoid(a) + log_sigmoid(-b) + log(1 - exp(-inv_s w)) - log Z,

    exact in log space for any loc and scale (no epsilon, no cancellation).

    Args:
        loc: float [...], location in data units ([-1, 1] holds the bins).
        log_scale: float [...], broadcastable with `loc`.
        num_classes: K >= 2, the number of bins.
        scale_shift: inv_s = exp(scale_shift - log_scale). The default 2.0 is the published
            CIFAR-10 model's convention: log_scale = 0 (a zero-initialised output layer) gives a
            scale of exp(-2), about 17 bins at K = 256. Pass 0.0 for the plain parameterisation.
    Returns:
        float [..., K] log-probabilities summing to one over the last axis, finite everywhere.
    """
    if num_classes < 2:
        raise ValueError(f"the logistic head needs num_classes >= 2, got {num_classes}")
    loc, log_scale = torch.broadcast_tensors(loc, log_scale)
    dtype = loc.dtype if loc.is_floating_point() else torch.get_default_dtype()
    centres = torch.linspace(-1.0, 1.0, num_classes, dtype=dtype, device=loc.device)
    half_width = 1.0 / (num_classes - 1)
    log_inv_s = (scale_shift - log_scale.to(dtype)).clamp(max=_MAX_LOG_INV_S).unsqueeze(-1)
    inv_s = torch.exp(log_inv_s)
    centred = centres - loc.to(dtype).unsqueeze(-1)  # [..., K]
    bound = torch.finfo(dtype).max / 4  # keeps a and b finite for absurd loc
    a = (inv_s * (centred + half_width)).clamp(-bound, bound)
    b = (inv_s * (centred - half_width)).clamp(-bound, bound)
    # a - b = inv_s * w > 0; the floor keeps it positive when inv_s underflows.
    gap = (inv_s * (2.0 * half_width)).clamp(min=torch.finfo(dtype).tiny)
    log_mass = F.logsigmoid(a) + F.logsigmoid(-b) + log1m_exp_neg(gap)
    return torch.log_softmax(log_mass, dim=-1)
