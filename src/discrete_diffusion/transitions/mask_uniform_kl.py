"""The fused loss term of `MaskUniform`: KL(q(x_s | x_t, x_0) || p(x_s | x_t)) (eq. 3 against
eq. 4) per position, with one K-wide pass.

Notation as in `mask_uniform.py`: R real tokens and the mask m; for the span (s, t) the
unmasked probability A and the kept probability B, with u = (1 - B)/R; for Qbar_s the same
as a, b and c = (1 - b)/R; P = 1 - p~_m, the mass p~ puts on the real tokens, and
V_j = b p~_j + c P, so that (p~ Qbar_s)_j = a V_j on real j.

On the real tokens both distributions share the factor q(x_t | x_s = j), so
    log(q_j / p_j) = log(b [j = x_0] + c) + log(Z_p / Z_q) - log V_j,
and q is a constant plus spikes at x_0 and x_t. The only K-wide work is
sum_j D_j, D_j = log1p(b p~_j / (c P)), one softplus pass; the rest is O(1) per token in
float64, from per-example coefficients for the three cases x_t = m, x_t = x_0 (real) and
x_t != x_0 (real).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from discrete_diffusion.transitions._common import (
    NEG_INF,
    log_add,
    log_mass_off,
    per_example,
    safe_log,
    sum_softplus,
)

if TYPE_CHECKING:
    from discrete_diffusion.transitions.mask_uniform import SpanLogs

__all__ = ["KLCoefficients", "kl_coefficients", "mask_uniform_kl"]


class KLCoefficients(NamedTuple):
    """Per-example coefficients of the KL, each float64 [B, 3] (cases x_t = m, x_t = x_0
    real, x_t != x_0 real) or gathered per position."""

    log_zq: Tensor  # log Z_q, the normaliser of q(x_s | x_t, x_0)
    q_x0: Tensor  # q_{x_0}
    q_other: Tensor  # the q mass on the real j not in {x_0, x_t}
    weight_sum: Tensor  # the weight of sum_{real j} D_j
    weight_xt: Tensor  # the weight of D_{x_t}
    const_x0: Tensor  # q_{x_0} log(b + c)
    q_mask: Tensor  # q_m
    const_mask: Tensor  # q_m log(1 - a)


def kl_coefficients(span: SpanLogs, cum: SpanLogs, num_real: int) -> Tensor:
    """The `KLCoefficients` stacked on the last dimension, float64 [B, 3, 8].

    Args:
        span: the coefficients of Q_{s->t}; cum: those of Qbar_s; each five float64 [B].
        num_real: R = K - 1.
    """
    r = num_real
    span_a, span_1ma, _, span_u, span_b = (v.exp() for v in span)
    cum_a, cum_1ma, _, cum_c, cum_b = (v.exp() for v in cum)
    z_q = torch.stack([span_1ma * cum_a + cum_1ma,
                       span_a * cum_a * (span_b * (cum_b + cum_c) + span_u),
                       span_a * cum_a * (span_b * cum_c + span_u)], -1)
    z_q = torch.where(z_q > 0, z_q, 1.0)  # 0 only where x_t cannot follow x_0
    q_x0 = (torch.stack([span_1ma, span_a * (span_b + span_u), span_a * span_u], -1)
            * (cum_a * (cum_b + cum_c))[:, None] / z_q)
    const = (cum_a * cum_c)[:, None] / z_q  # q_j / q(x_t | x_s = j) for real j != x_0
    zero = torch.zeros_like(span_a)
    q_other = const * torch.stack([span_1ma * (r - 1), span_a * span_u * (r - 1),
                                   span_a * (span_u * (r - 1) + span_b)], -1)
    weight_sum = const * torch.stack([span_1ma, span_a * span_u, span_a * span_u], -1)
    weight_xt = const * torch.stack([zero, zero, span_a * span_b], -1)
    q_mask = torch.stack([cum_1ma, zero, zero], -1) / z_q
    const_mask = torch.where(q_mask > 0, q_mask * safe_log(cum_1ma)[:, None], 0.0)
    return torch.stack([z_q.log(), q_x0, q_other, weight_sum, weight_xt,
                        q_x0 * (cum_b + cum_c).log()[:, None], q_mask, const_mask], -1)


def mask_uniform_kl(
    x_0: Tensor,
    x_t: Tensor,
    log_x0: Tensor,
    span: SpanLogs,
    cum: SpanLogs,
    mask_index: int,
    nll: Tensor | None = None,
) -> Tensor:
    """KL(q(x_s | x_t, x_0) || p(x_s | x_t)) per position, float [B, ...] in the dtype of
    `log_x0`; at s = 0 it is -log p(x_0 | x_t).

    Args:
        x_0, x_t: LongTensor [B, ...].
        log_x0: float [B, ..., K], normalised log p~(x_0 | x_t).
        span: the coefficients of Q_{s->t}; cum: those of Qbar_s; each five float64 [B].
        mask_index: m.
        nll: the caller's -log p~(x_0 | x_t), accepted for the common signature, not used.
    """
    f64, nd, m = torch.float64, x_t.dim(), mask_index
    is_m = x_t == m
    case = torch.where(is_m, 0, torch.where(x_0 == x_t, 1, 2))
    batch = per_example(torch.arange(x_t.shape[0], device=x_t.device), nd)
    num_real = log_x0.shape[-1] - 1
    coef = KLCoefficients(*kl_coefficients(span, cum, num_real)[batch, case].unbind(-1))
    span, cum = span.broadcast(nd, f64), cum.broadcast(nd, f64)  # [B, 1, ..., 1] from here
    # one gather for the entries at x_0, x_t and m: each gather's gradient is a K-wide tensor
    # (so `nll` is not used: with it, two gathers would remain)
    picks = torch.stack([x_0, x_t, torch.full_like(x_t, m)], -1)
    lp_0, lp_t, lp_m = log_x0.gather(-1, picks).unbind(-1)
    log_real = log_mass_off(log_x0, lp_m, m).to(f64)  # log P
    lp_m, lp_0, lp_t = (v.to(f64) for v in (lp_m, lp_0, lp_t))
    # the p~ side in log space: p~ of a few 1e-4 nats underflows float64 probabilities
    log_soft_m = log_add(lp_m, cum.log_1ma + log_real)  # (p~ Qbar_s)_m
    log_v_x0, log_v_xt = (log_add(cum.log_b + lp, cum.log_other + log_real)
                          for lp in (lp_0, lp_t))
    log_zp = torch.where(
        is_m, log_add(span.log_1ma + cum.log_a + log_real, log_soft_m),
        span.log_a + cum.log_a + log_add(span.log_b + log_v_xt,
                                             span.log_other + log_real))
    log_zpq = log_zp - coef.log_zq
    # sum over real j != x_0 of D_j = log1p(b p~_j / (c P)); zero where c P = 0
    ok = (cum.log_other > NEG_INF) & (log_real > NEG_INF)
    log_scale = torch.where(ok, cum.log_b - torch.where(ok, cum.log_other + log_real, 0.0),
                            NEG_INF)
    soft = torch.nn.functional.softplus
    # D_j >= 0 and mostly small: a float32 sum is accurate, a float64 one costs a cast pass
    sum_d = sum_softplus(log_x0, log_scale.to(log_x0.dtype)).to(f64)
    sum_d = sum_d - soft(lp_m + log_scale) - soft(lp_0 + log_scale)
    d_t = soft(lp_t + log_scale)
    kl = (torch.where(coef.q_other > 0, coef.q_other * (log_zpq - log_real), 0.0)
          - coef.weight_sum * sum_d - coef.weight_xt * d_t
          + coef.q_x0 * (log_zpq - log_v_x0) + coef.const_x0)
    kl = kl + torch.where(coef.q_mask > 0,
                          coef.q_mask * (log_zpq - log_soft_m) + coef.const_mask, 0.0)
    # x_0 = m: the posterior is a point mass on the mask (x_t = m)
    from_mask = log_zp - torch.where(x_0 == m, log_soft_m, 0.0)
    return torch.where(x_0 == m, from_mask, kl).to(log_x0.dtype)
