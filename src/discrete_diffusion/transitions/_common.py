"""Helpers shared by the transitions (and `D3PM`): argument checks, the per-example broadcast,
and the log-space pieces of the fused posteriors.

The module is private to the package; the names in it are public so that every transition
imports one copy of each.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from discrete_diffusion.categorical import log1mexp

NEG_INF = -math.inf
# exp() of float32 arguments outside about [-87, 88] overflows or leaves the vectorised fast
# path on CPU; up to 80 stays finite with room to spare.
EXP_SAFE = 80.0

BetaKind = Literal["nonnegative", "rate", "probability", "variance"]
_BETA_RULES = {
    "nonnegative": "betas must be finite and >= 0",
    "rate": "betas are rates here: they must be finite and >= 0",
    "probability": "betas must be finite and lie in [0, 1]",
    "variance": "betas are variances here: they must be finite with beta_t > 0 for every t",
}


# ----- argument checks ----------------------------------------------------------------------
def check_betas(betas: Tensor, kind: BetaKind = "nonnegative") -> Tensor:
    """A schedule beta_1..beta_T as float64 [T]: 1-D, length >= 1, finite, and

        "nonnegative": >= 0, the only check `D3PM` makes (and Dense, whose betas may be
                       probabilities or rates);
        "rate":        >= 0 too, worded for rates (NearestNeighbor);
        "probability": in [0, 1] (Uniform, Absorbing, MaskUniform);
        "variance":    > 0 (DiscretizedGaussian).

    Raises:
        ValueError: naming the rule broken.
    """
    if not isinstance(betas, Tensor) or betas.dim() != 1 or betas.numel() < 1:
        raise ValueError("betas must be a 1-D tensor of length T >= 1 (beta_1..beta_T)")
    betas = betas.detach().to(torch.float64)
    ok = bool(torch.isfinite(betas).all())
    if ok and kind in ("nonnegative", "rate"):
        ok = not bool((betas < 0).any())
    elif ok and kind == "probability":
        ok = not bool(betas.min() < 0 or betas.max() > 1)
    elif ok and kind == "variance":
        ok = not bool(betas.min() <= 0)
    if not ok:
        raise ValueError(_BETA_RULES[kind])
    return betas


def check_int(t: int, low: int, high: int) -> None:
    """t is an int (not a bool) in low..high, else a ValueError naming the range."""
    if not isinstance(t, int) or isinstance(t, bool) or not low <= t <= high:
        raise ValueError(f"t must be an integer in {low}..{high}, got {t!r}")


def check_num_classes(num_classes: int, minimum: int = 2, why: str = "") -> None:
    """num_classes is an int (not a bool) >= minimum; `why` is appended to the message."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) \
            or num_classes < minimum:
        raise ValueError(f"num_classes must be an integer >= {minimum}{why}, "
                         f"got {num_classes!r}")


def check_mask_index(mask_index: int, num_classes: int) -> None:
    """mask_index is an int in 0..K-1."""
    if not isinstance(mask_index, int) or not 0 <= mask_index < num_classes:
        raise ValueError(f"mask_index must be an integer in 0..{num_classes - 1}, got "
                         f"{mask_index!r}")


# ----- broadcasting -------------------------------------------------------------------------
def per_example(c: Tensor, ndim: int, dtype: torch.dtype | None = None) -> Tensor:
    """A per-example tensor [B] as [B, 1, ..., 1] with `ndim` dimensions, to broadcast against
    a tensor [B, ...] of that rank (values, or indices in advanced indexing); cast to `dtype`
    first when given."""
    if dtype is not None:
        c = c.to(dtype)
    return c.view(-1, *([1] * (ndim - 1)))


# ----- log-space pieces ---------------------------------------------------------------------
def log_add(a: Tensor, b: Tensor) -> Tensor:
    """log(e^a + e^b), -inf where both are -inf, with finite gradients there too."""
    both = torch.isneginf(a) & torch.isneginf(b)
    out = torch.logaddexp(torch.where(both, 0.0, a), torch.where(both, 0.0, b))
    return torch.where(both, NEG_INF, out)


def log_mass_off(log_p: Tensor, log_p_m: Tensor, m: int) -> Tensor:
    """log(1 - p_m), the mass off class m, for normalised p; a log-sum-exp over the other
    classes where p_m is so close to 1 that 1 - p_m would lose precision.

    Args:
        log_p: float [..., K]; log_p_m: float [...], the caller's `log_p[..., m]` (one view
            serves every later use, so autograd sums its gradients in one place).
    Returns:
        float [...].
    """
    near_one = log_p_m > -1e-3
    # the replaced entries get a harmless input, so no inf enters any gradient
    log_off = log1mexp(torch.where(near_one, -1.0, log_p_m))
    if bool(near_one.any()):
        exact = torch.logsumexp(_without_class(log_p, m), dim=-1)
        log_off = torch.where(near_one, exact, log_off)
    return log_off


def _without_class(log_p: Tensor, m: int) -> Tensor:
    """log p with class m dropped (a view when m is first or last) or set to -inf."""
    k = log_p.shape[-1]
    if m == k - 1:
        return log_p[..., : k - 1]
    if m == 0:
        return log_p[..., 1:]
    return log_p.index_fill(-1, torch.tensor([m], device=log_p.device), NEG_INF)


def safe_log(x: Tensor) -> Tensor:
    """log x with log 0 = -inf and no NaN gradient (the derivative at 0 is not taken)."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, 1.0).log(), NEG_INF)


def weighted(log_q: Tensor, value: Tensor) -> Tensor:
    """q * value, 0 where q = 0 (whatever value is), with finite gradients there."""
    zero = torch.zeros((), dtype=value.dtype, device=value.device)
    return log_q.exp() * torch.where(torch.isneginf(log_q), zero, value)


def plogp_ratio(log_q: Tensor, log_p: Tensor) -> Tensor:
    """q (log q - log p), 0 where q = 0, with finite gradients there."""
    return weighted(log_q, log_q - log_p)


def softplus_shifted(log_p: Tensor, offset: Tensor, bounded: bool) -> Tensor:
    """log(1 + exp(log_p + offset)) = log(1 + e^offset p), elementwise, for log_p <= 0.

    `bounded` promises offset <= EXP_SAFE, so e^offset p stays finite in float32: then three
    passes (exp, scale, log1p; in place when no gradient is needed) and no K-wide sum
    `log_p + offset` nor clamp. Otherwise softplus of the clamped sum (arguments below -80
    add under 2e-35, and exp() of them is many times slower than of moderate ones).

    Args:
        log_p: float [..., K], log probabilities.
        offset: float [..., 1], finite.
    """
    if not bounded:
        return torch.nn.functional.softplus((log_p + offset).clamp(min=-EXP_SAFE))
    scale = offset.exp()
    if torch.is_grad_enabled() and (log_p.requires_grad or offset.requires_grad):
        return torch.log1p(log_p.exp() * scale)
    return log_p.exp().mul_(scale).log1p_()


class _SoftplusSum(torch.autograd.Function):
    """sum_j softplus(x_j), x = log_p + offset, over the last dimension, and entries of log_p
    picked at `index`. Autograd through exp, scale, log1p, sum and a gather keeps four K-wide
    tensors and makes five more in the backward pass (a gather's gradient is a K-wide tensor
    of zeros); this keeps x and turns it into the derivative sigmoid(x) in place in the
    backward pass, adding the picked entries' gradients into it. (sigmoid is several times
    cheaper than log1p or expm1 on CPU.) A second backward pass through the same graph is
    refused, since the saved x has changed."""

    @staticmethod
    def forward(ctx, log_p: Tensor, offset: Tensor, index: Tensor,
                bounded: bool) -> tuple[Tensor, Tensor]:
        x = log_p + offset
        if bounded:  # e^x <= e^EXP_SAFE: finite
            total = x.exp().log1p_().sum(-1)
        else:  # arguments below -80 add under 2e-35
            total = torch.nn.functional.softplus(x.clamp_(min=-EXP_SAFE)).sum(-1)
        ctx.save_for_backward(x, offset, index)
        return total, log_p.gather(-1, index)

    @staticmethod
    def backward(ctx, grad_sum: Tensor, grad_picked: Tensor):
        x, offset, index = ctx.saved_tensors
        g = x.sigmoid_().mul_(grad_sum.unsqueeze(-1))
        g_offset = None
        if ctx.needs_input_grad[1]:
            g_offset = g.sum(-1, keepdim=True).sum_to_size(offset.shape)
        g.scatter_add_(-1, index, grad_picked)
        return (g if ctx.needs_input_grad[0] else None), g_offset, None, None


def softplus_sum(log_p: Tensor, offset: Tensor, bounded: bool,
                 index: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """sum_j log(1 + exp(log_p_j + offset)) over the last dimension, for log_p <= 0 (the sum
    of `softplus_shifted`), and log_p.gather(-1, index), with one K-wide temporary in the
    forward pass and none in the backward pass (an autograd function).

    Args:
        log_p: float [..., K], log probabilities.
        offset: float [..., 1] (may be -inf); `bounded` promises offset <= EXP_SAFE.
        index: LongTensor [..., n], the entries to pick (none if None).
    Returns:
        float [...], and float [..., n].
    """
    if index is None:
        index = torch.zeros((*log_p.shape[:-1], 0), dtype=torch.long, device=log_p.device)
    return _SoftplusSum.apply(log_p, offset, index, bounded)


def sum_softplus(log_p: Tensor, log_scale: Tensor) -> Tensor:
    """sum_j log(1 + e^log_scale p_j) over the last dimension, for log_p <= 0.

    As exp, scale and log1p (in place without autograd) where the scale fits float32 with
    room to spare, which is nearly always; tokens whose scale exceeds e^EXP_SAFE are
    recomputed with softplus.

    Args:
        log_p: float [..., K]; log_scale: float [...] (may be -inf).
    Returns:
        float [...].
    """
    big = log_scale > EXP_SAFE
    scale = log_scale.clamp(max=EXP_SAFE).exp().unsqueeze(-1)
    if torch.is_grad_enabled() and (log_p.requires_grad or log_scale.requires_grad):
        out = softplus_sum(log_p, log_scale.clamp(max=EXP_SAFE).unsqueeze(-1), True)[0]
    else:
        out = log_p.exp().mul_(scale).log1p_().sum(-1)
    if bool(big.any()):  # rare
        exact = torch.nn.functional.softplus(log_p[big] + log_scale[big].unsqueeze(-1))
        out = out.index_put((big,), exact.sum(-1))
    return out
