"""The BERT-like mixture of masking and uniform resampling (paper section 4).

One step, with R = K - 1 real tokens and the mask m:
    * a real token goes to the mask with probability m_t (the process's betas);
    * otherwise it is resampled uniformly over the R real tokens (itself included) with
      probability u_t (`uniform_betas`), and kept with probability 1 - u_t;
    * the mask is absorbing.

    Q_t[i, j] = (1 - m_t) ((1 - u_t) [i = j] + u_t / R)   for real i, j,
    Q_t[i, m] = m_t for real i,   Q_t[m, m] = 1.

Masking and uniform resampling commute on the real tokens (the mask probability does not
depend on which real token is held), so every span Q_{s->t} has the same form with
a = prod (1 - m_u) and b = prod (1 - u_u) over u = s+1..t in place of 1 - m_t and 1 - u_t.
All operations are O(K) per token; no K x K table exists.

Relation to the paper's Q = alpha 1 e_m^T + beta 11^T / K + (1 - alpha - beta) I: on the real
rows it is this process with the uniform part spread over real tokens only (as in the authors'
`mask-beta-diagonal` code): m = alpha + beta / K and (1 - m) u / R = beta / K, i.e.
u = beta R / (K (1 - m)). Unlike the paper's formula, the mask row here is absorbing (the
paper's matrix would move a masked token back to a real one with probability beta R / K).
For T = 1 and data without masks the mask row is never used, and both agree.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from discrete_diffusion.categorical import uniform_noise
from discrete_diffusion.transitions._common import (
    NEG_INF,
    check_betas,
    check_int,
    check_mask_index,
    check_num_classes,
    log_add,
    log_mass_off,
    per_example,
)
from discrete_diffusion.transitions.base import Transition
from discrete_diffusion.transitions.keep import keep_tables, log_keep_span
from discrete_diffusion.transitions.mask_uniform_kl import mask_uniform_kl

__all__ = ["FUSED_MIN_CLASSES", "MaskUniform", "SpanLogs"]

# From this many classes on the closed-form posteriors beat the composed ones (below it, a
# few passes over short rows cost less than their per-token work): see
# `MaskUniform.preferred_fused_operations`.
FUSED_MIN_CLASSES = 64


class SpanLogs(NamedTuple):
    """The coefficients of a span Q_{s->t} (Qbar_t when s = 0), per example, float64 [B] (or
    as `broadcast` gives them). a = prod (1 - m_u) and b = prod (1 - u_u) over the span."""

    log_a: Tensor  # log a: no mask within the span
    log_1ma: Tensor  # log(1 - a)
    log_same: Tensor  # log(b + (1 - b)/R): a real token stays itself, given no mask
    log_other: Tensor  # log((1 - b)/R): it becomes a given other real token, given no mask
    log_b: Tensor  # log b: no uniform resampling within the span

    def broadcast(self, ndim: int, dtype: torch.dtype) -> SpanLogs:
        """Each coefficient as [B, 1, ..., 1] with `ndim` dimensions, in `dtype`."""
        return SpanLogs(*(per_example(v, ndim, dtype) for v in self))


class MaskUniform(Transition):
    """Masking (schedule m_t = the process's betas) mixed with uniform resampling (u_t).

    Args:
        num_classes: K >= 3, the mask included.
        mask_index: the absorbing mask state, 0 <= m < K.
        uniform_betas: float [T], u_1..u_T in [0, 1].

    Attributes (after `setup`):
        uniform_keep_positive: b = prod_{u <= s} (1 - u_u) > 0 at every s < T, so log b is
            finite wherever the fused posteriors use it.
    """

    def __init__(self, num_classes: int, mask_index: int, uniform_betas: Tensor) -> None:
        check_num_classes(num_classes, 3, " (mask + 2 real tokens)")
        check_mask_index(mask_index, num_classes)
        self.num_classes = num_classes
        self.mask_index = mask_index
        self.uniform_betas = check_betas(torch.as_tensor(uniform_betas), "probability")
        self.betas: Tensor | None = None
        self.mask_keep: tuple[Tensor, Tensor] | None = None  # keep_tables of m_t
        self.cumulative_logs: Tensor | None = None  # float64 [T+1, 5], see _span_logs
        self.uniform_keep = keep_tables(self.uniform_betas)  # keep_tables of u_t
        self._log_num_real = math.log(num_classes - 1)

    # ----- binding --------------------------------------------------------------------------
    def setup(self, betas: Tensor) -> None:
        betas = check_betas(betas, "probability")
        if betas.shape != self.uniform_betas.shape:
            raise ValueError(f"MaskUniform has {self.uniform_betas.shape[0]} uniform_betas but "
                             f"the schedule has T = {betas.shape[0]} steps")
        self.betas = betas
        self.mask_keep = keep_tables(betas)
        steps = torch.arange(betas.shape[0] + 1)
        # the five span logs of Qbar_t for every t, gathered in the hot paths
        self.cumulative_logs = torch.stack(self._span_logs(torch.zeros_like(steps), steps), 1)
        # b = prod_{u <= s} (1 - u_u) > 0 at every s < T: log b is finite in the hot paths
        self.uniform_keep_positive = bool(torch.isfinite(self.cumulative_logs[:-1, 4]).all())

    @property
    def num_steps(self) -> int:
        if self.betas is None:
            raise RuntimeError("MaskUniform is not set up: call setup(betas) first")
        return self.betas.shape[0]

    @property
    def preferred_fused_operations(self) -> frozenset[str]:
        """All fused operations from FUSED_MIN_CLASSES classes on; below, the posteriors are
        left to the generic path, which is then faster (sampling and the KL stay fused)."""
        if self.num_classes >= FUSED_MIN_CLASSES:
            return self.fused_operations
        return self.fused_operations - {"log_q_posterior", "log_p_posterior"}

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "mask_index": self.mask_index,
                "uniform_betas": self.uniform_betas.tolist()}

    # ----- span coefficients ----------------------------------------------------------------
    def _span_logs(self, s: Tensor, t: Tensor) -> SpanLogs:
        """The coefficients of Q_{s->t}, per example [B], float64."""
        self.num_steps  # noqa: B018 (clear error when not set up)
        log_a, log_1ma = log_keep_span(*self.mask_keep, s, t)
        log_b, log_1mb = log_keep_span(*self.uniform_keep, s, t)
        log_other = log_1mb - self._log_num_real
        return SpanLogs(log_a, log_1ma, torch.logaddexp(log_b, log_other), log_other, log_b)

    def _cumulative_logs(self, t: Tensor) -> SpanLogs:
        """`_span_logs(0, t)` by one gather from the table built at setup."""
        self.num_steps  # noqa: B018
        table = self.cumulative_logs
        return SpanLogs(*table[t.to(table.device)].to(t.device).unbind(-1))

    def _dense(self, s: int, t: int) -> Tensor:
        logs = self._span_logs(torch.tensor([s]), torch.tensor([t]))[:4]
        a, one_minus_a, same, other = (float(v.exp()) for v in logs)
        k, m = self.num_classes, self.mask_index
        mat = torch.full((k, k), a * other, dtype=torch.float64)
        mat.diagonal().fill_(a * same)
        mat[:, m] = one_minus_a
        mat[m] = 0.0
        mat[m, m] = 1.0
        return mat

    # ----- dense views ----------------------------------------------------------------------
    def transition_matrix(self, t: int) -> Tensor:
        check_int(t, 1, self.num_steps)
        return self._dense(t - 1, t)

    def cumulative_matrix(self, t: int) -> Tensor:
        check_int(t, 0, self.num_steps)
        return self._dense(0, t)

    def stationary(self) -> Tensor:
        """Mask with probability 1 - a_T, else uniform over the real tokens (the limit once
        the uniform part has mixed; a point mass on the mask when a_T = 0)."""
        a_t = float(self._span_logs(torch.tensor([0]), torch.tensor([self.num_steps]))[0].exp())
        out = torch.full((self.num_classes,), a_t / (self.num_classes - 1), dtype=torch.float64)
        out[self.mask_index] = 1.0 - a_t
        return out

    # ----- structured operations ------------------------------------------------------------
    def _log_rows(self, x: Tensor, logs: SpanLogs) -> Tensor:
        """log rows x of a span with `logs` from `_span_logs`, float32 [B, ..., K]; one pass
        over the output."""
        log_a, log_1ma, log_same, log_other, _ = logs
        m, nd, f32 = self.mask_index, x.dim(), torch.float32
        is_mask = x == m
        # a masked x stays masked: -inf off the mask
        off = torch.where(is_mask.unsqueeze(-1), NEG_INF,
                          per_example(log_a + log_other, nd + 1, f32))
        out = off.expand(*x.shape, self.num_classes).clone()
        out[..., m] = torch.where(is_mask, 0.0, per_example(log_1ma, nd, f32))
        same = torch.where(is_mask, 0.0, per_example(log_a + log_same, nd, f32))
        return out.scatter_(-1, x.unsqueeze(-1), same.unsqueeze(-1))

    def log_cumulative(self, x_0: Tensor, t: Tensor) -> Tensor:
        return self._log_rows(x_0, self._cumulative_logs(t))

    def log_transition_column(self, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """Column x_t of Q_{s->t}: for real x_t, a (b [j = x_t] + (1-b)/R) at real j and 0 at
        the mask; for x_t = m, 1 - a at real j and 1 at the mask."""
        log_a, log_1ma, log_same, log_other, _ = self._span_logs(s, t)
        m, nd, f32 = self.mask_index, x_t.dim(), torch.float32
        is_mask = (x_t == m).unsqueeze(-1)
        off = torch.where(is_mask, per_example(log_1ma, nd + 1, f32),
                          per_example(log_a + log_other, nd + 1, f32))
        out = off.expand(*x_t.shape, self.num_classes).clone()
        same = torch.where(is_mask, 0.0, per_example(log_a + log_same, nd + 1, f32))
        out.scatter_(-1, x_t.unsqueeze(-1), same)
        out[..., m] = torch.where(is_mask.squeeze(-1), 0.0, NEG_INF)
        return out

    def log_cumulative_soft(self, log_x0: Tensor, t: Tensor) -> Tensor:
        """p Qbar_t: real j get a (b p_j + (1-b)/R P), the mask gets p_m + (1-a) P, where
        P = 1 - p_m is the mass on the real tokens.

        Computed as log(p_j b / P + (1-b)/R) + log P + log a (four passes over [.., K]): the
        first term is a mixture of O(1) numbers, and where b = 1 (no uniform noise yet) the
        exact log p_j is used instead. Where P underflows (p~ sure of the mask to within
        e^-87) the tokens concerned are recomputed as log(b p_j + c P) in log space.
        """
        log_a, log_1ma, _, log_other, log_b = self._cumulative_logs(t)
        m, nd, dt = self.mask_index, log_x0.dim(), log_x0.dtype
        log_pm = log_x0[..., m]
        log_real = log_mass_off(log_x0, log_pm, m).unsqueeze(-1)  # log P, [..., 1]
        # floor log P at log(tiny): P = 0 (p~ sure of the mask) then gives -inf, not NaN
        log_real_safe = log_real.clamp(min=math.log(torch.finfo(dt).tiny))
        scale = (per_example(log_b, nd, dt) - log_real_safe).exp()  # b / P
        mixed = torch.addcmul(per_example(log_other.exp(), nd, dt), log_x0.exp(), scale).log_()
        if bool((log_other == NEG_INF).any()):  # b = 1 for some example: exact logs there
            exact = per_example(log_other == NEG_INF, nd, torch.bool)
            mixed = torch.where(exact, log_x0 - log_real_safe, mixed)
        out = mixed.add_(log_real + per_example(log_a, nd, dt))
        lost = log_real < math.log(torch.finfo(dt).tiny)
        if bool(lost.any()):  # rare: P below the float range, where b / P is inexact
            exact = log_add(log_x0 + per_example(log_b, nd, dt),
                            log_real + per_example(log_other, nd, dt))
            out = torch.where(lost, exact + per_example(log_a, nd, dt), out)
        out[..., m] = torch.logaddexp(log_pm, log_real.squeeze(-1)
                                      + per_example(log_1ma, nd - 1, dt))
        return out

    # ----- fused posterior (optional hook of D3PM) ------------------------------------------
    def log_q_posterior(self, x_0: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """Normalised log q(x_s | x_t, x_0), eq. (3), for integer x_0, float32 [B, ..., K].

        q(x_s = j | x_t, x_0) is proportional to Q_{s->t}[j, x_t] Qbar_s[x_0, j]; both factors
        are one value on the real tokens off {x_0, x_t} and other values at x_0, x_t and m, so
        the normaliser is a sum of four terms per token and the output is one fill and three
        scatters. (Below FUSED_MIN_CLASSES classes `D3PM(fused=None)` composes the generic
        posterior instead: see `preferred_fused_operations`.)
        """
        span = self._span_logs(s, t).broadcast(x_t.dim(), torch.float64)
        cum = self._cumulative_logs(s).broadcast(x_t.dim(), torch.float64)
        m, r = self.mask_index, self.num_classes - 1
        x0_m, xt_m = x_0 == m, x_t == m
        mask = torch.full_like(x_t, m)

        def log_q(j: Tensor) -> Tensor:
            """log Q_{s->t}[j, x_t] + log Qbar_s[x_0, j] for a state j [B, ...]."""
            j_m = j == m
            col = torch.where(xt_m, torch.where(j_m, 0.0, span.log_1ma),
                              torch.where(j_m, NEG_INF, span.log_a + torch.where(
                                  j == x_t, span.log_same, span.log_other)))
            row = torch.where(x0_m, torch.where(j_m, 0.0, NEG_INF),
                              torch.where(j_m, cum.log_1ma, cum.log_a + torch.where(
                                  j == x_0, cum.log_same, cum.log_other)))
            return col + row

        # a real j off {x_0, x_t}: x_0 != j, x_t != j
        other = (torch.where(xt_m, span.log_1ma, span.log_a + span.log_other)
                 + torch.where(x0_m, NEG_INF, cum.log_a + cum.log_other))
        at_m, at_x0, at_xt = log_q(mask), log_q(x_0), log_q(x_t)
        n_other = r - (~x0_m).double() - (~xt_m & (x_t != x_0)).double()
        log_z = torch.stack([n_other.log() + other, at_m,
                             torch.where(x0_m, NEG_INF, at_x0),
                             torch.where(xt_m | (x_t == x_0), NEG_INF, at_xt)]).logsumexp(0)
        out = (other - log_z).float().unsqueeze(-1).expand(*x_t.shape, self.num_classes)
        out = out.clone()
        for j, v in ((mask, at_m), (x_0, at_x0), (x_t, at_xt)):
            out.scatter_(-1, j.unsqueeze(-1), (v - log_z).float().unsqueeze(-1))
        return out

    def log_p_posterior(self, log_x0: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """Normalised log p(x_s | x_t), eq. (4), from normalised log p~(x_0 | x_t).

        p(x_s = j | x_t) is proportional to Q_{s->t}[j, x_t] (p~ Qbar_s)_j with
        (p~ Qbar_s)_j = a V_j, V_j = b p~_j + c P on real j (P = 1 - p~_m), and
        sum_{real j} V_j = P. The column is one value kappa on the real tokens except x_t
        (kappa' there, 0 at m) for a real x_t, and 1 - A on the real tokens (1 at m) for
        x_t = m; so the normaliser is a (kappa P + (kappa' - kappa) V_{x_t}), resp.
        (1 - A) a P + (p~ Qbar_s)_m, per token, and the only K-wide work is
        log V_j = logaddexp(log b + log p~_j, log c + log P), exact also where c = 0.
        (Below FUSED_MIN_CLASSES classes `D3PM(fused=None)` composes the generic posterior.)
        """
        nd, dt, m, f64 = x_t.dim(), log_x0.dtype, self.mask_index, torch.float64
        span = self._span_logs(s, t).broadcast(nd, f64)  # A, B of the docstring
        cum = self._cumulative_logs(s).broadcast(nd, f64)  # a, b; log_other is log c
        xt_m = x_t == m
        lp_m = log_x0[..., m]
        log_real = log_mass_off(log_x0, lp_m, m).to(f64)  # log P
        lp_xt = log_x0.gather(-1, x_t.unsqueeze(-1)).squeeze(-1).to(f64)
        log_v_xt = log_add(cum.log_b + lp_xt, cum.log_other + log_real)
        log_kappa = span.log_a + span.log_other
        log_z_real = cum.log_a + log_add(log_kappa + log_real,
                                         span.log_a + span.log_b + log_v_xt)
        soft_m = log_add(lp_m.to(f64), cum.log_1ma + log_real)  # (p~ Qbar_s)_m
        log_z_mask = log_add(span.log_1ma + cum.log_a + log_real, soft_m)
        base = torch.where(xt_m, span.log_1ma + cum.log_a - log_z_mask,
                           log_kappa + cum.log_a - log_z_real)
        at_m = torch.where(xt_m, soft_m - log_z_mask, NEG_INF)
        at_xt = torch.where(xt_m, at_m,
                            span.log_a + span.log_same + cum.log_a + log_v_xt - log_z_real)
        if self.uniform_keep_positive:  # log V_j = log b + logaddexp(log p~_j, log(c P / b))
            log_c_real = (cum.log_other + log_real - cum.log_b).to(dt).unsqueeze(-1)
            log_v = torch.logaddexp(log_x0, log_c_real)
            base = base + cum.log_b
        else:
            log_v = torch.logaddexp(log_x0 + per_example(cum.log_b, nd + 1, dt),
                                    (cum.log_other + log_real).to(dt).unsqueeze(-1))
        base = base.to(dt).unsqueeze(-1)
        # logaddexp keeps its result for the gradient: add in place only without autograd
        out = log_v + base if log_v.requires_grad else log_v.add_(base)
        out.scatter_(-1, x_t.unsqueeze(-1), at_xt.to(dt).unsqueeze(-1))
        out[..., m] = at_m.to(dt)
        return out

    # ----- fused bound term (optional hook of D3PM) -----------------------------------------
    def posterior_kl(
        self, x_0: Tensor, x_t: Tensor, log_x0: Tensor, s: Tensor, t: Tensor,
        nll: Tensor | None = None,
    ) -> Tensor:
        """KL(q(x_s | x_t, x_0) || p(x_s | x_t)) per position (eq. 3 against eq. 4), float
        [B, ...] in the dtype of `log_x0`; at s = 0 it is -log p(x_0 | x_t). One K-wide
        softplus pass, the rest O(1) per token: see `mask_uniform_kl`.

        Args:
            x_0, x_t: LongTensor [B, ...].
            log_x0: float [B, ..., K], normalised log p~(x_0 | x_t).
            s, t: LongTensor [B], 0 <= s < t.
            nll: the caller's -log p~(x_0 | x_t), accepted for the common signature and not
                used (one gather of the three entries needed costs less).
        """
        return mask_uniform_kl(x_0, x_t, log_x0, self._span_logs(s, t),
                               self._cumulative_logs(s), self.mask_index, nll)

    def sample_cumulative(
        self, x_0: Tensor, t: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """x_t ~ q(x_t | x_0) in O(1) per token: unmasked with probability a, then kept with
        probability b, else a uniform real token."""
        log_a, _, _, _, log_b = self._cumulative_logs(t)
        nd, m = x_0.dim(), self.mask_index
        u = uniform_noise((2, *x_0.shape), x_0.device, generator)
        fresh = torch.randint(self.num_classes - 1, x_0.shape, device=x_0.device,
                              generator=generator)
        fresh = fresh + (fresh >= m).long()  # skip the mask index
        f32 = torch.float32
        real = torch.where(u[1] < per_example(log_b.exp(), nd, f32).to(u.device), x_0, fresh)
        unmasked = (u[0] < per_example(log_a.exp(), nd, f32).to(u.device)) & (x_0 != m)
        return torch.where(unmasked, real, torch.full_like(x_0, m))

