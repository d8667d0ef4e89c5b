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

import torch
from torch import Tensor

from discrete_diffusion.categorical import log1mexp, uniform_noise
from discrete_diffusion.transitions.base import Transition
from discrete_diffusion.transitions.uniform import check_betas, keep_tables, log_keep_span

__all__ = ["MaskUniform"]

_NEG_INF = -math.inf
FUSED_MIN_CLASSES = 64  # see `log_q_posterior`
_EXP_SAFE = 80.0  # exp() of float32 arguments up to here stays finite with room to spare


class MaskUniform(Transition):
    """Masking (schedule m_t = the process's betas) mixed with uniform resampling (u_t).

    Args:
        num_classes: K >= 3, the mask included.
        mask_index: the absorbing mask state, 0 <= m < K.
        uniform_betas: float [T], u_1..u_T in [0, 1].
    """

    def __init__(self, num_classes: int, mask_index: int, uniform_betas: Tensor) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 3:
            raise ValueError(f"num_classes must be an integer >= 3 (mask + 2 real tokens), "
                             f"got {num_classes!r}")
        if not isinstance(mask_index, int) or not 0 <= mask_index < num_classes:
            raise ValueError(f"mask_index must be an integer in 0..{num_classes - 1}, got "
                             f"{mask_index!r}")
        self.num_classes = num_classes
        self.mask_index = mask_index
        self.uniform_betas = check_betas(torch.as_tensor(uniform_betas))
        self.betas: Tensor | None = None
        self.mask_keep: tuple[Tensor, Tensor] | None = None  # keep_tables of m_t
        self.cumulative_logs: Tensor | None = None  # float64 [T+1, 5], see _span_logs
        self.uniform_keep = keep_tables(self.uniform_betas)  # keep_tables of u_t
        self._log_real = math.log(num_classes - 1)
        # below this many classes the generic posteriors (a few passes over short rows) cost
        # less than the per-token work of the closed forms
        self._fused_posteriors = num_classes >= FUSED_MIN_CLASSES

    # ----- binding --------------------------------------------------------------------------
    def setup(self, betas: Tensor) -> None:
        betas = check_betas(betas)
        if betas.shape != self.uniform_betas.shape:
            raise ValueError(f"MaskUniform has {self.uniform_betas.shape[0]} uniform_betas but "
                             f"the schedule has T = {betas.shape[0]} steps")
        self.betas = betas
        self.mask_keep = keep_tables(betas)
        steps = torch.arange(betas.shape[0] + 1)
        # the five span logs of Qbar_t for every t, gathered in the hot paths
        self.cumulative_logs = torch.stack(self._span_logs(torch.zeros_like(steps), steps), 1)
        # b = prod_{u <= s} (1 - u_u) > 0 at every s < T: log b is finite in the hot paths
        self._b_positive = bool(torch.isfinite(self.cumulative_logs[:-1, 4]).all())

    @property
    def num_steps(self) -> int:
        if self.betas is None:
            raise RuntimeError("MaskUniform is not set up: call setup(betas) first")
        return self.betas.shape[0]

    def to(self, device: torch.device | str) -> MaskUniform:
        self.uniform_betas = self.uniform_betas.to(device)
        self.uniform_keep = tuple(v.to(device) for v in self.uniform_keep)
        if self.betas is not None:
            self.betas = self.betas.to(device)
            self.mask_keep = tuple(v.to(device) for v in self.mask_keep)
            self.cumulative_logs = self.cumulative_logs.to(device)
        return self

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "mask_index": self.mask_index,
                "uniform_betas": self.uniform_betas.tolist()}

    # ----- span coefficients ----------------------------------------------------------------
    def _span_logs(self, s: Tensor, t: Tensor) -> tuple[Tensor, ...]:
        """Per example [B] float64: log a, log(1 - a), log of the same-token and of the
        other-token probability given no mask, log(b + (1-b)/R) and log((1-b)/R), and log b."""
        self.num_steps  # noqa: B018 (clear error when not set up)
        log_a, log_1ma = log_keep_span(*self.mask_keep, s, t)
        log_b, log_1mb = log_keep_span(*self.uniform_keep, s, t)
        log_other = log_1mb - self._log_real
        return log_a, log_1ma, torch.logaddexp(log_b, log_other), log_other, log_b

    def _cumulative_logs(self, t: Tensor) -> tuple[Tensor, ...]:
        """`_span_logs(0, t)` by one gather from the table built at setup."""
        self.num_steps  # noqa: B018
        table = self.cumulative_logs
        return table[t.to(table.device)].to(t.device).unbind(-1)

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
        _check_int(t, 1, self.num_steps)
        return self._dense(t - 1, t)

    def cumulative_matrix(self, t: int) -> Tensor:
        _check_int(t, 0, self.num_steps)
        return self._dense(0, t)

    def stationary(self) -> Tensor:
        """Mask with probability 1 - a_T, else uniform over the real tokens (the limit once
        the uniform part has mixed; a point mass on the mask when a_T = 0)."""
        a_t = float(self._span_logs(torch.tensor([0]), torch.tensor([self.num_steps]))[0].exp())
        out = torch.full((self.num_classes,), a_t / (self.num_classes - 1), dtype=torch.float64)
        out[self.mask_index] = 1.0 - a_t
        return out

    # ----- structured operations ------------------------------------------------------------
    def _log_rows(self, x: Tensor, logs: tuple[Tensor, ...]) -> Tensor:
        """log rows x of a span with `logs` from `_span_logs`, float32 [B, ..., K]; one pass
        over the output."""
        log_a, log_1ma, log_same, log_other, _ = logs
        m, nd = self.mask_index, x.dim()
        is_mask = x == m
        # a masked x stays masked: -inf off the mask
        off = torch.where(is_mask.unsqueeze(-1), _NEG_INF, _per_example(log_a + log_other, nd + 1))
        out = off.expand(*x.shape, self.num_classes).clone()
        out[..., m] = torch.where(is_mask, 0.0, _per_example(log_1ma, nd))
        same = torch.where(is_mask, 0.0, _per_example(log_a + log_same, nd))
        return out.scatter_(-1, x.unsqueeze(-1), same.unsqueeze(-1))

    def log_cumulative(self, x_0: Tensor, t: Tensor) -> Tensor:
        return self._log_rows(x_0, self._cumulative_logs(t))

    def log_transition_column(self, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """Column x_t of Q_{s->t}: for real x_t, a (b [j = x_t] + (1-b)/R) at real j and 0 at
        the mask; for x_t = m, 1 - a at real j and 1 at the mask."""
        log_a, log_1ma, log_same, log_other, _ = self._span_logs(s, t)
        m, nd = self.mask_index, x_t.dim()
        is_mask = (x_t == m).unsqueeze(-1)
        off = torch.where(is_mask, _per_example(log_1ma, nd + 1),
                          _per_example(log_a + log_other, nd + 1))
        out = off.expand(*x_t.shape, self.num_classes).clone()
        same = torch.where(is_mask, 0.0, _per_example(log_a + log_same, nd + 1))
        out.scatter_(-1, x_t.unsqueeze(-1), same)
        out[..., m] = torch.where(is_mask.squeeze(-1), 0.0, _NEG_INF)
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
        log_real = self._log_real_mass(log_x0, log_pm).unsqueeze(-1)  # log P, [..., 1]
        # floor log P at log(tiny): P = 0 (p~ sure of the mask) then gives -inf, not NaN
        log_real_safe = log_real.clamp(min=math.log(torch.finfo(dt).tiny))
        scale = (_per_example(log_b, nd, dt) - log_real_safe).exp()  # b / P
        mixed = torch.addcmul(_per_example(log_other.exp(), nd, dt), log_x0.exp(), scale).log_()
        if bool((log_other == _NEG_INF).any()):  # b = 1 for some example: exact logs there
            exact = _per_example(log_other == _NEG_INF, nd, torch.bool)
            mixed = torch.where(exact, log_x0 - log_real_safe, mixed)
        out = mixed.add_(log_real + _per_example(log_a, nd, dt))
        lost = log_real < math.log(torch.finfo(dt).tiny)
        if bool(lost.any()):  # rare: P below the float range, where b / P is inexact
            exact = _log_add(log_x0 + _per_example(log_b, nd, dt),
                             log_real + _per_example(log_other, nd, dt))
            out = torch.where(lost, exact + _per_example(log_a, nd, dt), out)
        out[..., m] = torch.logaddexp(log_pm, log_real.squeeze(-1)
                                      + _per_example(log_1ma, nd - 1, dt))
        return out

    def _log_real_mass(self, log_x0: Tensor, log_pm: Tensor) -> Tensor:
        """log P = log(1 - p_m) for normalised p; a log-sum-exp over the real tokens where
        p_m is so close to 1 that 1 - p_m would lose precision."""
        near_one = log_pm > -1e-3
        # the replaced entries get a harmless input, so no inf enters any gradient
        log_real = log1mexp(torch.where(near_one, -1.0, log_pm))
        if bool(near_one.any()):
            exact = torch.logsumexp(self._real_part(log_x0), dim=-1)
            log_real = torch.where(near_one, exact, log_real)
        return log_real

    def _real_part(self, log_x0: Tensor) -> Tensor:
        """log p over the real tokens only (a view when the mask is first or last)."""
        m, k = self.mask_index, self.num_classes
        if m == k - 1:
            return log_x0[..., : k - 1]
        if m == 0:
            return log_x0[..., 1:]
        return log_x0.index_fill(-1, self._mask_tensor(log_x0), _NEG_INF)

    # ----- fused posterior (optional hook of D3PM) ------------------------------------------
    def log_q_posterior(self, x_0: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """Normalised log q(x_s | x_t, x_0), eq. (3), for integer x_0, float32 [B, ..., K].

        q(x_s = j | x_t, x_0) is proportional to Q_{s->t}[j, x_t] Qbar_s[x_0, j]; both factors
        are one value on the real tokens off {x_0, x_t} and other values at x_0, x_t and m, so
        the normaliser is a sum of four terms per token and the output is one fill and three
        scatters. Below FUSED_MIN_CLASSES classes (set at construction) both posteriors are
        composed from the structured operations instead, which is then faster.
        """
        if not self._fused_posteriors:
            col = self.log_transition_column(x_t, s, t)
            return (col + self.log_cumulative(x_0, s)).log_softmax(-1)
        span = [_per_example(v, x_t.dim(), torch.float64) for v in self._span_logs(s, t)]
        cum = [_per_example(v, x_t.dim(), torch.float64) for v in self._cumulative_logs(s)]
        m, r = self.mask_index, self.num_classes - 1
        x0_m, xt_m = x_0 == m, x_t == m
        mask = torch.full_like(x_t, m)

        def log_q(j: Tensor) -> Tensor:
            """log Q_{s->t}[j, x_t] + log Qbar_s[x_0, j] for a state j [B, ...]."""
            j_m = j == m
            col = torch.where(xt_m, torch.where(j_m, 0.0, span[1]),
                              torch.where(j_m, _NEG_INF, span[0] + torch.where(
                                  j == x_t, span[2], span[3])))
            row = torch.where(x0_m, torch.where(j_m, 0.0, _NEG_INF),
                              torch.where(j_m, cum[1], cum[0] + torch.where(
                                  j == x_0, cum[2], cum[3])))
            return col + row

        # a real j off {x_0, x_t}: x_0 != j, x_t != j
        other = (torch.where(xt_m, span[1], span[0] + span[3])
                 + torch.where(x0_m, _NEG_INF, cum[0] + cum[3]))
        at_m, at_x0, at_xt = log_q(mask), log_q(x_0), log_q(x_t)
        n_other = r - (~x0_m).double() - (~xt_m & (x_t != x_0)).double()
        log_z = torch.stack([n_other.log() + other, at_m,
                             torch.where(x0_m, _NEG_INF, at_x0),
                             torch.where(xt_m | (x_t == x_0), _NEG_INF, at_xt)]).logsumexp(0)
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
        """
        if not self._fused_posteriors:
            col = self.log_transition_column(x_t, s, t)
            return (col + self.log_cumulative_soft(log_x0, s)).log_softmax(-1)
        nd, dt, m, f64 = x_t.dim(), log_x0.dtype, self.mask_index, torch.float64
        l_A, l_1mA, l_same, l_other, l_B = (_per_example(v, nd, f64) for v in self._span_logs(s, t))
        l_a, l_1ma, _, l_c, l_b = (_per_example(v, nd, f64) for v in self._cumulative_logs(s))
        xt_m = x_t == m
        lp_m = log_x0[..., m]
        l_real = self._log_real_mass(log_x0, lp_m).to(f64)  # log P
        lp_xt = log_x0.gather(-1, x_t.unsqueeze(-1)).squeeze(-1).to(f64)
        l_vt = _log_add(l_b + lp_xt, l_c + l_real)
        l_kappa = l_A + l_other
        log_z_real = l_a + _log_add(l_kappa + l_real, l_A + l_B + l_vt)
        soft_m = _log_add(lp_m.to(f64), l_1ma + l_real)  # (p~ Qbar_s)_m
        log_z_mask = _log_add(l_1mA + l_a + l_real, soft_m)
        base = torch.where(xt_m, l_1mA + l_a - log_z_mask, l_kappa + l_a - log_z_real)
        at_m = torch.where(xt_m, soft_m - log_z_mask, _NEG_INF)
        at_xt = torch.where(xt_m, at_m, l_A + l_same + l_a + l_vt - log_z_real)
        if self._b_positive:  # log V_j = log b + logaddexp(log p~_j, log(c P / b)): one pass
            log_v = torch.logaddexp(log_x0, (l_c + l_real - l_b).to(dt).unsqueeze(-1))
            base = base + l_b
        else:
            log_v = torch.logaddexp(log_x0 + _per_example(l_b, nd + 1, dt),
                                    (l_c + l_real).to(dt).unsqueeze(-1))
        base = base.to(dt).unsqueeze(-1)
        # logaddexp keeps its result for the gradient: add in place only without autograd
        out = log_v + base if log_v.requires_grad else log_v.add_(base)
        out.scatter_(-1, x_t.unsqueeze(-1), at_xt.to(dt).unsqueeze(-1))
        out[..., m] = at_m.to(dt)
        return out

    # ----- fused bound term (optional hook of D3PM) -----------------------------------------
    def posterior_kl(
        self, x_0: Tensor, x_t: Tensor, log_x0: Tensor, s: Tensor, t: Tensor
    ) -> Tensor:
        """KL(q(x_s | x_t, x_0) || p(x_s | x_t)) per position (eq. 3 against eq. 4), float
        [B, ...] in the dtype of `log_x0`; at s = 0 it is -log p(x_0 | x_t).

        On the real tokens both distributions share the factor q(x_t | x_s = j), so
        log(q_j / p_j) = log(b [j = x_0] + c) + log(Z_p / Z_q) - log V_j with
        V_j = b p~_j + c P (b, c = (1 - b)/R, a of Qbar_s; P = 1 - p~_m), and q is a constant
        plus spikes at x_0 and x_t. The only K-wide work is sum_j log1p(b p~_j / (c P)),
        one softplus pass; the rest is O(1) per token in float64.

        Args:
            x_0, x_t: LongTensor [B, ...].
            log_x0: float [B, ..., K], normalised log p~(x_0 | x_t).
            s, t: LongTensor [B], 0 <= s < t.
        """
        f64, nd, m = torch.float64, x_t.dim(), self.mask_index
        span_a, cum_a = self._span_logs(s, t), self._cumulative_logs(s)
        (l_A, l_1mA, _, l_u, l_B), (l_a, l_1ma, _, l_c, l_b) = (
            [_per_example(v, nd, f64) for v in logs] for logs in (span_a, cum_a))
        is_m = x_t == m
        case = torch.where(is_m, 0, torch.where(x_0 == x_t, 1, 2))
        batch = torch.arange(x_t.shape[0], device=x_t.device).view(-1, *([1] * (nd - 1)))
        l_zq, q_0, other, c_sum, c_dt, k_0, q_m, k_m = (
            self._kl_tables(span_a, cum_a)[batch, case].unbind(-1))
        lp_m = log_x0[..., m]
        lp_0 = log_x0.gather(-1, x_0.unsqueeze(-1)).squeeze(-1)
        lp_t = log_x0.gather(-1, x_t.unsqueeze(-1)).squeeze(-1)
        l_real = self._log_real_mass(log_x0, lp_m).to(f64)  # log P
        lp_m, lp_0, lp_t = (v.to(f64) for v in (lp_m, lp_0, lp_t))
        # the p~ side in log space: p~ of a few 1e-4 nats underflows float64 probabilities
        l_soft_m = _log_add(lp_m, l_1ma + l_real)  # (p~ Qbar_s)_m
        l_v0, l_vt = (_log_add(l_b + lp, l_c + l_real) for lp in (lp_0, lp_t))
        l_zp = torch.where(is_m, _log_add(l_1mA + l_a + l_real, l_soft_m),
                           l_A + l_a + _log_add(l_B + l_vt, l_u + l_real))
        log_zpq = l_zp - l_zq
        # sum over real j != x_0 of D_j = log1p(b p~_j / (c P)); zero where c P = 0
        ok = (l_c > _NEG_INF) & (l_real > _NEG_INF)
        log_scale = torch.where(ok, l_b - torch.where(ok, l_c + l_real, 0.0), _NEG_INF)
        soft = torch.nn.functional.softplus
        # D_j >= 0 and mostly small: a float32 sum is accurate, a float64 one costs a cast pass
        sum_d = _sum_softplus(log_x0, log_scale.to(log_x0.dtype)).to(f64)
        sum_d = sum_d - soft(lp_m + log_scale) - soft(lp_0 + log_scale)
        d_t = soft(lp_t + log_scale)
        kl = (torch.where(other > 0, other * (log_zpq - l_real), 0.0) - c_sum * sum_d
              - c_dt * d_t + q_0 * (log_zpq - l_v0) + k_0)
        kl = kl + torch.where(q_m > 0, q_m * (log_zpq - l_soft_m) + k_m, 0.0)
        # x_0 = m: the posterior is a point mass on the mask (x_t = m)
        from_mask = l_zp - torch.where(x_0 == m, l_soft_m, 0.0)
        return torch.where(x_0 == m, from_mask, kl).to(log_x0.dtype)

    def _kl_tables(self, span_a: tuple[Tensor, ...], cum_a: tuple[Tensor, ...]) -> Tensor:
        """Per-example coefficients of `posterior_kl`, float64 [B, 3, 8], for the cases
        x_t = m (0), x_t = x_0 real (1), x_t != x_0 real (2): log Z_q, q_{x_0}, the q mass on
        real j not in {x_0, x_t} (`other`), the weights of sum_j D_j and of D_{x_t},
        q_{x_0} log(b + c), q_m and q_m log(1 - a).

        Args:
            span_a: `_span_logs(s, t)`; cum_a: `_cumulative_logs(s)`, each five float64 [B].
        """
        r = self.num_classes - 1
        (A, one_m_A, _, u, B), (a, one_m_a, _, c, b) = (
            [v.exp() for v in logs] for logs in (span_a, cum_a))
        z_q = torch.stack([one_m_A * a + one_m_a, A * a * (B * (b + c) + u),
                           A * a * (B * c + u)], -1)
        z_q = torch.where(z_q > 0, z_q, 1.0)  # 0 only where x_t cannot follow x_0
        q_0 = torch.stack([one_m_A, A * (B + u), A * u], -1) * (a * (b + c))[:, None] / z_q
        const = (a * c)[:, None] / z_q  # q_j / q(x_t | x_s = j) for real j != x_0
        zero = torch.zeros_like(A)
        other = const * torch.stack([one_m_A * (r - 1), A * u * (r - 1),
                                     A * (u * (r - 1) + B)], -1)
        c_sum = const * torch.stack([one_m_A, A * u, A * u], -1)
        c_dt = const * torch.stack([zero, zero, A * B], -1)
        q_m = torch.stack([one_m_a, zero, zero], -1) / z_q
        k_m = torch.where(q_m > 0, q_m * _safe_log(one_m_a)[:, None], 0.0)
        return torch.stack([z_q.log(), q_0, other, c_sum, c_dt, q_0 * (b + c).log()[:, None],
                            q_m, k_m], -1)

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
        real = torch.where(u[1] < _per_example(log_b.exp(), nd).to(u.device), x_0, fresh)
        unmasked = (u[0] < _per_example(log_a.exp(), nd).to(u.device)) & (x_0 != m)
        return torch.where(unmasked, real, torch.full_like(x_0, m))

    def _mask_tensor(self, x: Tensor) -> Tensor:
        return torch.tensor([self.mask_index], device=x.device)


def _safe_log(x: Tensor) -> Tensor:
    """log x with log 0 = -inf and no NaN gradient (the derivative at 0 is not taken)."""
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, 1.0).log(), _NEG_INF)


def _sum_softplus(log_p: Tensor, log_scale: Tensor) -> Tensor:
    """sum_j log(1 + e^log_scale p_j) over the last dimension, for log_p <= 0.

    As exp, scale and log1p (in place without autograd) where the scale fits float32 with
    room to spare, which is nearly always; tokens whose scale exceeds e^80 (p~ nearly sure of
    the mask, or almost no uniform noise yet) are recomputed with softplus.

    Args:
        log_p: float [..., K]; log_scale: float [...] (may be -inf).
    Returns:
        float [...].
    """
    big = log_scale > _EXP_SAFE
    scale = log_scale.clamp(max=_EXP_SAFE).exp().unsqueeze(-1)
    if torch.is_grad_enabled() and (log_p.requires_grad or log_scale.requires_grad):
        out = torch.log1p(log_p.exp() * scale).sum(-1)
    else:
        out = log_p.exp().mul_(scale).log1p_().sum(-1)
    if bool(big.any()):  # rare
        exact = torch.nn.functional.softplus(log_p[big] + log_scale[big].unsqueeze(-1))
        out = out.index_put((big,), exact.sum(-1))
    return out


def _log_add(a: Tensor, b: Tensor) -> Tensor:
    """log(e^a + e^b), -inf where both are -inf, with finite gradients there too."""
    both = torch.isneginf(a) & torch.isneginf(b)
    out = torch.logaddexp(torch.where(both, 0.0, a), torch.where(both, 0.0, b))
    return torch.where(both, _NEG_INF, out)


def _per_example(c: Tensor, ndim: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """[B] -> [B, 1, ..., 1] with `ndim` dims, in `dtype`."""
    return c.to(dtype).view(-1, *([1] * (ndim - 1)))


def _check_int(t: int, low: int, high: int) -> None:
    if not isinstance(t, int) or isinstance(t, bool) or not low <= t <= high:
        raise ValueError(f"t must be an integer in {low}..{high}, got {t!r}")
