"""The uniform process: Q_t = (1 - beta_t) I + beta_t/K 11^T (paper section 3.1).

Spans have the same form: Q_{s->t} = r I + (1 - r)/K 11^T with the keep probability
r = prod_{u=s+1..t} (1 - beta_u), and Qbar_t = Q_{0->t} (r = alphabar_t). Every structured
operation is O(K) per token; only the dense views build a K x K table.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from discrete_diffusion.categorical import uniform_noise
from discrete_diffusion.transitions._common import (
    EXP_SAFE,
    per_example,
    softplus_shifted,
    softplus_sum,
)
from discrete_diffusion.transitions.keep import KeepTransition

__all__ = ["Uniform"]


class Uniform(KeepTransition):
    """Uniform transitions over K states; the stationary distribution is uniform.

    Args:
        num_classes: K >= 2.

    Attributes (after `setup`):
        exp_safe_offsets: every finite offset o_s = log(alphabar_s / c_s), c_s =
            (1 - alphabar_s)/K, is at most EXP_SAFE, so the fused posteriors may evaluate
            exp(o_s) p~ directly in float32 (see `softplus_shifted`).
    """

    def setup(self, betas: Tensor) -> None:
        super().setup(betas)
        # The fused posteriors evaluate log(1 + exp(log p~ + o_s)) with o_s = log(alphabar_s /
        # c_s), c_s = (1 - alphabar_s)/K; p~ <= 1 bounds the argument by o_s. Whether every
        # finite o_s keeps exp() in float32 range is a property of the schedule, decided here
        # once rather than by a device sync per call.
        log_a, log_1ma = self.log_cum
        offsets = log_a - (log_1ma - math.log(self.num_classes))
        finite = offsets[torch.isfinite(offsets)]
        self.exp_safe_offsets = bool(finite.numel() == 0 or finite.max() <= EXP_SAFE)

    def _dense(self, keep: float) -> Tensor:
        k = self.num_classes
        eye = torch.eye(k, dtype=torch.float64)
        return keep * eye + (1.0 - keep) / k * torch.ones(k, k, dtype=torch.float64)

    def stationary(self) -> Tensor:
        return torch.full((self.num_classes,), 1.0 / self.num_classes, dtype=torch.float64)

    # ----- structured operations ------------------------------------------------------------
    def _log_coefficients(self, s: Tensor | None, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log r, log((1-r)/K) and log(r + (1-r)/K) of the span (s, t), float64 [B]: the keep
        probability and the off-diagonal and diagonal entries of Q_{s->t}."""
        log_r, log_1mr = self._log_span(s, t)
        log_off = log_1mr - math.log(self.num_classes)
        return log_r, log_off, torch.logaddexp(log_r, log_off)

    def _log_rows(self, x: Tensor, s: Tensor | None, t: Tensor) -> Tensor:
        """log Q_{s->t}[x, :] (= column x, the matrix being symmetric), float32 [B, ..., K]."""
        _, log_off, log_same = self._log_coefficients(s, t)
        ndim = x.dim() + 1
        shape = (*x.shape, self.num_classes)
        out = per_example(log_off, ndim, torch.float32).expand(shape).clone()
        same = per_example(log_same, x.dim(), torch.float32).expand(x.shape)
        return out.scatter_(-1, x.unsqueeze(-1), same.unsqueeze(-1))

    def log_cumulative(self, x_0: Tensor, t: Tensor) -> Tensor:
        return self._log_rows(x_0, None, t)

    def log_cumulative_soft(self, log_x0: Tensor, t: Tensor) -> Tensor:
        log_r, log_off, _ = self._log_coefficients(None, t)
        ndim = log_x0.dim()
        # log(r p + (1 - r)/K) for every class.
        dtype = log_x0.dtype
        return torch.logaddexp(
            log_x0 + per_example(log_r, ndim, dtype), per_example(log_off, ndim, dtype)
        )

    def log_transition_column(self, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        return self._log_rows(x_t, s, t)

    # ----- fused posteriors (optional hooks used by D3PM; O(K) with one K-wide write) -------
    def log_q_posterior(self, x_0: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """Normalised log q(x_s | x_t, x_0), eq. (3), for integer x_0, float32 [B, ..., K].

        Only the entries at x_0 and x_t differ from a constant, so the normaliser is a
        per-token sum of three terms and the output is one fill plus two scatters.
        """
        # column x_t of Q_{s->t} (diagonal at x_t) and row x_0 of Qbar_s (diagonal at x_0)
        _, log_span_off, log_span_diag = self._log_coefficients(s, t)
        _, log_cum_off, log_cum_diag = self._log_coefficients(None, s)
        n = x_t.dim()
        log_span_off, log_span_diag, log_cum_off, log_cum_diag = (
            per_example(c, n, torch.float32)
            for c in (log_span_off, log_span_diag, log_cum_off, log_cum_diag))
        same = x_0 == x_t
        base = log_span_off + log_cum_off  # every j not in {x_0, x_t}
        at_xt = log_span_diag + torch.where(same, log_cum_diag, log_cum_off)
        at_x0 = log_span_off + log_cum_diag
        rest = torch.where(same, self.num_classes - 1.0, self.num_classes - 2.0).log() + base
        terms = torch.stack([rest, at_xt, torch.where(same, -math.inf, at_x0)])
        log_z = terms.logsumexp(0)
        out = (base - log_z).unsqueeze(-1).expand(*x_t.shape, self.num_classes).clone()
        out.scatter_(-1, x_0.unsqueeze(-1), (at_x0 - log_z).unsqueeze(-1))
        return out.scatter_(-1, x_t.unsqueeze(-1), (at_xt - log_z).unsqueeze(-1))

    def log_p_posterior(self, log_x0: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """Normalised log p(x_s | x_t), eq. (4), from normalised log p~(x_0 | x_t).

        p(x_s = j | x_t) is proportional to Q_{s->t}[j, x_t] (r_s p~_j + (1 - r_s)/K); with
        sum_j p~_j = 1 the normaliser is c0 + r (p~ Qbar_s)_{x_t} per token (c0 = (1 - r)/K
        the off-diagonal of the span), so one K-wide log(r_s p~_j + c) does the work.
        """
        log_r, log_span_off, log_span_diag = self._log_coefficients(s, t)
        log_a, log_cum_off, _ = self._log_coefficients(None, s)
        hard = bool(torch.isneginf(log_cum_off).any())  # some Qbar_s = I (s = 0): c = 0 there
        n, dtype = log_x0.dim(), log_x0.dtype
        log_r, log_span_off, log_span_diag, log_a, log_cum_off = (
            per_example(c, n - 1, dtype)
            for c in (log_r, log_span_off, log_span_diag, log_a, log_cum_off))
        idx = x_t.unsqueeze(-1)
        v_xt = torch.logaddexp(log_x0.gather(-1, idx).squeeze(-1) + log_a, log_cum_off)
        log_z = torch.logaddexp(log_span_off, log_r + v_xt)
        shift = (log_span_off - log_z).unsqueeze(-1)  # column off-diagonal over the normaliser
        if hard:
            out = torch.logaddexp(log_x0 + log_a.unsqueeze(-1), log_cum_off.unsqueeze(-1)) + shift
        else:
            # log(r p + c) = log c + softplus(log p + log r - log c)
            offset = (log_a - log_cum_off).unsqueeze(-1)
            out = softplus_shifted(log_x0, offset, self.exp_safe_offsets)
            out = out.add_(log_cum_off.unsqueeze(-1) + shift)
        return out.scatter_(-1, idx, (v_xt + log_span_diag - log_z).unsqueeze(-1))

    def posterior_kl(
        self, x_0: Tensor, x_t: Tensor, log_x0: Tensor, s: Tensor, t: Tensor,
        nll: Tensor | None = None,
    ) -> Tensor:
        """KL(q(x_s | x_t, x_0) || p(x_s | x_t)) per position, float [B, ...], with one K-wide
        pass (exp, scale, log1p, sum) and O(1) further work per token.

        Both posteriors share the column factor q(x_t | x_s = j) = Q_{s->t}[j, x_t]. With
        c = (1 - r_s)/K (r_s = alphabar_s) and w_j = log(1 + r_s p~_j / c) >= 0,
            log q_j - log p_j = [j = x_0] log(Qbar_s[x_0, x_0] / c) - w_j + log Z_p - log Z_q,
        so, as sum_j q_j = 1,
            KL = log Z_p - log Z_q + q_{x_0} log(Qbar_s[x_0, x_0] / c) - sum_j q_j w_j.
        q takes three values (at x_0, at x_t, elsewhere: q_b), so
            sum_j q_j w_j = q_b W + (q_{x_0} - q_b) w_{x_0} + [x_0 != x_t] (q_{x_t} - q_b) w_{x_t}
        with W = sum_j w_j. Z_q, the q values and the constant depend only on the example
        and on whether x_0 = x_t: they are computed per example for both cases. Z_p is
        c0 + r (p~ Qbar_s)_{x_t} (c0 = (1 - r)/K, r of the span). Where Qbar_s = I (s = 0)
        the posterior is a point mass on x_0 and the KL is -log p(x_0 | x_t).

        Args:
            x_0, x_t: LongTensor [B, ...].
            log_x0: float [B, ..., K], normalised log p~(x_0 | x_t).
            s, t: LongTensor [B], 0 <= s < t.
            nll: the caller's -log p~(x_0 | x_t), accepted for the common signature and not
                used (the entries of log p~ come with the K-wide pass).
        """
        log_r, log_span_off, log_span_diag = self._log_coefficients(s, t)
        log_a, log_cum_off, log_cum_diag = self._log_coefficients(None, s)
        hard = torch.isneginf(log_cum_off)  # Qbar_s = I: x_s = x_0
        # finite stand-ins where hard, so no inf reaches a gradient through the discarded side
        log_cum_off = torch.where(hard, log_cum_diag - 1.0, log_cum_off)
        const, q_b, d_x0, d_xt = self._posterior_tables(log_span_off, log_span_diag,
                                                        log_cum_off, log_cum_diag)
        n, dtype = x_t.dim(), log_x0.dtype
        offset = torch.where(hard, 0.0, log_a - log_cum_off)
        log_r, log_span_off, log_span_diag, log_a, log_cum_off, offset, hard_ = (
            per_example(c, n, dtype)
            for c in (log_r, log_span_off, log_span_diag, log_a, log_cum_off, offset, hard))
        same = x_0 == x_t
        const, q_b, d_x0, d_xt = (torch.where(same, per_example(v[:, 1], n, dtype),
                                              per_example(v[:, 0], n, dtype))
                                  for v in (const, q_b, d_x0, d_xt))
        # the entries at x_0 and x_t come with the K-wide sum, whose backward pass adds their
        # gradients in place (`nll` is not used: a separate gather would cost more)
        w_all, picked = softplus_sum(log_x0, offset.unsqueeze(-1), self.exp_safe_offsets,
                                     torch.stack([x_0, x_t], -1))
        lp_x0, lp_xt = picked.unbind(-1)
        w_x0 = torch.nn.functional.softplus(lp_x0 + offset)
        w_xt = torch.nn.functional.softplus(lp_xt + offset)
        v_xt = torch.logaddexp(lp_xt + log_a, log_cum_off)  # log (p~ Qbar_s)_{x_t}
        v_xt = torch.where(hard_ > 0, lp_xt, v_xt)
        log_zp = torch.logaddexp(log_span_off, log_r + v_xt)
        kl = log_zp + const - (q_b * w_all + d_x0 * w_x0 + d_xt * w_xt)
        # -log p(x_0 | x_t), the hard case
        decoder = log_zp - torch.where(same, log_span_diag, log_span_off) - lp_x0
        return torch.where(hard_ > 0, decoder, kl)

    def _posterior_tables(
        self,
        log_span_off: Tensor,
        log_span_diag: Tensor,
        log_cum_off: Tensor,
        log_cum_diag: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per example [B, 2] float64 (column 0: x_0 != x_t, column 1: x_0 = x_t) for
        `posterior_kl`: -log Z_q + q_{x_0} log(Qbar_s[x_0, x_0] / c), q_b, q_{x_0} - q_b and
        [x_0 != x_t] (q_{x_t} - q_b).

        Args:
            log_span_off, log_span_diag: log Q_{s->t} off and on the diagonal, float64 [B].
            log_cum_off, log_cum_diag: log Qbar_s off and on the diagonal, float64 [B], finite.
        """
        k = self.num_classes
        base = log_span_off + log_cum_off  # log of the unnormalised q elsewhere
        at_xt = torch.stack([log_span_diag + log_cum_off, log_span_diag + log_cum_diag], -1)
        at_x0 = torch.stack([log_span_off + log_cum_diag, log_span_diag + log_cum_diag], -1)
        log_k2 = math.log(k - 2) if k > 2 else -math.inf  # K - 2 states off {x_0, x_t}
        log_zq = torch.stack([  # no constant tensors: nothing to copy to the device per call
            torch.stack([base + log_k2, at_xt[:, 0], at_x0[:, 0]]).logsumexp(0),
            torch.logaddexp(base + math.log(k - 1), at_xt[:, 1]),
        ], -1)
        q_b, q_x0, q_xt = ((v - log_zq).exp() for v in (base[:, None], at_x0, at_xt))
        const = q_x0 * (log_cum_diag - log_cum_off)[:, None] - log_zq
        d_xt = torch.stack([q_xt[:, 0] - q_b[:, 0], torch.zeros_like(base)], -1)
        return const, q_b, q_x0 - q_b, d_xt

    def sample_cumulative(
        self, x_0: Tensor, t: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """x_t ~ q(x_t | x_0) in O(1) per token: keep x_0 with probability alphabar_t, else draw
        a uniform state (which may be x_0 again), exactly the row Qbar_t[x_0, :]."""
        log_r, _, _ = self._log_coefficients(None, t)
        u = uniform_noise(x_0.shape, x_0.device, generator)
        fresh = torch.randint(
            self.num_classes, x_0.shape, device=x_0.device, generator=generator
        )
        keep = u < per_example(log_r.exp(), x_0.dim(), torch.float64)
        return torch.where(keep, x_0, fresh)

