"""The uniform process: Q_t = (1 - beta_t) I + beta_t/K 11^T (paper section 3.1).

Spans have the same form: Q_{s->t} = r I + (1 - r)/K 11^T with the keep probability
r = prod_{u=s+1..t} (1 - beta_u), and Qbar_t = Q_{0->t} (r = alphabar_t). Every structured
operation is O(K) per token; only the dense views build a K x K table.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from discrete_diffusion.categorical import log1mexp, uniform_noise
from discrete_diffusion.transitions.base import Transition


def check_betas(betas: Tensor) -> Tensor:
    """Validate a schedule (1-D, length >= 1, values in [0, 1]) and return it as float64."""
    if not isinstance(betas, Tensor) or betas.dim() != 1 or betas.numel() < 1:
        raise ValueError("betas must be a 1-D tensor of length T >= 1 (beta_1..beta_T)")
    betas = betas.detach().to(torch.float64)
    if not bool(torch.isfinite(betas).all()) or betas.min() < 0 or betas.max() > 1:
        raise ValueError("betas must be finite and lie in [0, 1]")
    return betas


def keep_tables(betas: Tensor) -> tuple[Tensor, Tensor]:
    """Tables for span keep probabilities r(s, t) = prod_{u=s+1..t} (1 - beta_u), float64.

    Steps with beta_u = 1 are counted apart so that spans not containing one stay exact.

    Args:
        betas: float64 [T].
    Returns:
        log_keep: float64 [T+1], cumulative sum of log(1 - beta_u) over steps with beta_u < 1.
        num_full: int64 [T+1], cumulative count of steps with beta_u = 1.
    """
    full = betas >= 1.0
    logs = torch.where(full, torch.zeros_like(betas), torch.log1p(-betas))
    zero = betas.new_zeros(1)
    log_keep = torch.cat([zero, logs.cumsum(0)])
    num_full = torch.cat([zero.long(), full.long().cumsum(0)])
    return log_keep, num_full


def log_keep_span(
    log_keep: Tensor, num_full: Tensor, s: Tensor, t: Tensor
) -> tuple[Tensor, Tensor]:
    """log r(s, t) and log(1 - r(s, t)) per example, float64 [B], on the device of `t`."""
    dev = log_keep.device
    s_, t_ = s.to(dev), t.to(dev)
    log_r = torch.where(
        num_full[t_] == num_full[s_],
        log_keep[t_] - log_keep[s_],
        torch.full((), -math.inf, dtype=torch.float64, device=dev),
    )
    log_r = log_r.clamp(max=0.0)
    return log_r.to(t.device), log1mexp(log_r).to(t.device)


def per_example(c: Tensor, ndim: int, dtype: torch.dtype) -> Tensor:
    """Reshape a per-example vector [B] to broadcast against [B, ..., K] (ndim dims)."""
    return c.to(dtype).view(-1, *([1] * (ndim - 1)))


class KeepTransition(Transition):
    """Shared base of the processes whose spans are Q_{s->t} = r I + (1 - r) B for a fixed
    row-stochastic B and a scalar keep probability r(s, t) (uniform, absorbing).

    Subclasses give `_dense(r)` and the structured operations; this class holds the float64
    keep tables (tensor attributes, so `table_bytes` counts them) and the dense views.

    Args:
        num_classes: K >= 2.
    """

    def __init__(self, num_classes: int) -> None:
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        self.betas: Tensor | None = None
        self.log_keep: Tensor | None = None
        self.num_full: Tensor | None = None
        self.log_cum: Tensor | None = None

    # ----- binding --------------------------------------------------------------------------
    def setup(self, betas: Tensor) -> None:
        self.betas = check_betas(betas)
        self.log_keep, self.num_full = keep_tables(self.betas)
        # log alphabar_t and log(1 - alphabar_t), t = 0..T: the cumulative case, gathered
        steps = torch.arange(self.betas.shape[0] + 1, device=self.betas.device)
        self.log_cum = torch.stack(log_keep_span(self.log_keep, self.num_full, 0 * steps, steps))

    @property
    def num_steps(self) -> int:
        if self.betas is None:
            raise RuntimeError(f"{type(self).__name__} is not set up: call setup(betas) first")
        return self.betas.shape[0]

    def to(self, device: torch.device | str) -> KeepTransition:
        for name in ("betas", "log_keep", "num_full", "log_cum"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self

    def config(self) -> dict:
        return {"num_classes": self.num_classes}

    # ----- dense views ----------------------------------------------------------------------
    def _dense(self, keep: float) -> Tensor:
        raise NotImplementedError

    def _keep(self, s: int, t: int) -> float:
        dev = self.log_keep.device
        lk, _ = self._log_span(torch.tensor([s], device=dev), torch.tensor([t], device=dev))
        return float(lk.exp())

    def transition_matrix(self, t: int) -> Tensor:
        _check_int(t, 1, self.num_steps)
        return self._dense(self._keep(t - 1, t))

    def cumulative_matrix(self, t: int) -> Tensor:
        _check_int(t, 0, self.num_steps)
        return self._dense(self._keep(0, t))

    def _log_span(self, s: Tensor | None, t: Tensor) -> tuple[Tensor, Tensor]:
        """log r(s, t) and log(1 - r(s, t)), float64 [B] on the device of `t`; s = None is
        s = 0 (alphabar_t), read from a table."""
        self.num_steps  # noqa: B018 (a clear error when not set up)
        if s is None:
            out = self.log_cum[:, t.to(self.log_cum.device)].to(t.device)
            return out[0], out[1]
        return log_keep_span(self.log_keep, self.num_full, s, t)

    def keep_probability(self, s: Tensor, t: Tensor) -> Tensor:
        """r(s, t) = prod_{u=s+1..t} (1 - beta_u), float64 [B]; alphabar_t = r(0, t)."""
        return self._log_span(s, t)[0].exp()


class Uniform(KeepTransition):
    """Uniform transitions over K states; the stationary distribution is uniform.

    Args:
        num_classes: K >= 2.
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
        self._bounded = bool(finite.numel() == 0 or finite.max() <= _EXP_SAFE)

    def _dense(self, keep: float) -> Tensor:
        k = self.num_classes
        eye = torch.eye(k, dtype=torch.float64)
        return keep * eye + (1.0 - keep) / k * torch.ones(k, k, dtype=torch.float64)

    def stationary(self) -> Tensor:
        return torch.full((self.num_classes,), 1.0 / self.num_classes, dtype=torch.float64)

    # ----- structured operations ------------------------------------------------------------
    def _log_coefficients(self, s: Tensor | None, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log r, log(1-r)/K and log(r + (1-r)/K) of the span (s, t), float64 [B]."""
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
        _, lc0, lc1 = self._log_coefficients(s, t)  # column x_t of Q_{s->t}: lc1 at x_t
        _, lq0, lq1 = self._log_coefficients(None, s)  # row x_0 of Qbar_s
        n = x_t.dim()
        lc0, lc1, lq0, lq1 = (per_example(c, n, torch.float32) for c in (lc0, lc1, lq0, lq1))
        same = x_0 == x_t
        base = lc0 + lq0  # every j not in {x_0, x_t}
        at_xt = lc1 + torch.where(same, lq1, lq0)
        at_x0 = lc0 + lq1
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
        log_r, lc0, lc1 = self._log_coefficients(s, t)
        log_a, lq0, _ = self._log_coefficients(None, s)
        hard = bool(torch.isneginf(lq0).any())  # some Qbar_s = I (s = 0): c = 0 there
        n, dtype = log_x0.dim(), log_x0.dtype
        log_r, lc0, lc1, log_a, lq0 = (per_example(c, n - 1, dtype)
                                       for c in (log_r, lc0, lc1, log_a, lq0))
        idx = x_t.unsqueeze(-1)
        v_xt = torch.logaddexp(log_x0.gather(-1, idx).squeeze(-1) + log_a, lq0)
        log_z = torch.logaddexp(lc0, log_r + v_xt)
        shift = (lc0 - log_z).unsqueeze(-1)  # column off-diagonal over the normaliser
        if hard:
            out = torch.logaddexp(log_x0 + log_a.unsqueeze(-1), lq0.unsqueeze(-1)) + shift
        else:
            # log(r p + c) = log c + softplus(log p + log r - log c)
            out = _softplus_shifted(log_x0, (log_a - lq0).unsqueeze(-1), self._bounded)
            out = out.add_(lq0.unsqueeze(-1) + shift)
        return out.scatter_(-1, idx, (v_xt + lc1 - log_z).unsqueeze(-1))

    def posterior_kl(
        self, x_0: Tensor, x_t: Tensor, log_x0: Tensor, s: Tensor, t: Tensor
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
        """
        log_r, lc0, lc1 = self._log_coefficients(s, t)
        log_a, lq0, lq1 = self._log_coefficients(None, s)
        hard = torch.isneginf(lq0)  # Qbar_s = I: x_s = x_0
        # finite stand-ins where hard, so no inf reaches a gradient through the discarded side
        lq0 = torch.where(hard, lq1 - 1.0, lq0)
        const, q_b, d_x0, d_xt = self._posterior_tables(lc0, lc1, lq0, lq1)
        n, dtype = x_t.dim(), log_x0.dtype
        offset = torch.where(hard, 0.0, log_a - lq0)
        log_r, lc0, lc1, log_a, lq0, offset, hard_ = (
            per_example(c, n, dtype) for c in (log_r, lc0, lc1, log_a, lq0, offset, hard))
        same = x_0 == x_t
        const, q_b, d_x0, d_xt = (torch.where(same, per_example(v[:, 1], n, dtype),
                                              per_example(v[:, 0], n, dtype))
                                  for v in (const, q_b, d_x0, d_xt))
        lp_x0 = log_x0.gather(-1, x_0.unsqueeze(-1)).squeeze(-1)
        lp_xt = log_x0.gather(-1, x_t.unsqueeze(-1)).squeeze(-1)
        w_all = _softplus_shifted(log_x0, offset.unsqueeze(-1), self._bounded).sum(-1)
        w_x0 = torch.nn.functional.softplus(lp_x0 + offset)
        w_xt = torch.nn.functional.softplus(lp_xt + offset)
        v_xt = torch.logaddexp(lp_xt + log_a, lq0)  # log (p~ Qbar_s)_{x_t}
        v_xt = torch.where(hard_ > 0, lp_xt, v_xt)
        log_zp = torch.logaddexp(lc0, log_r + v_xt)
        kl = log_zp + const - (q_b * w_all + d_x0 * w_x0 + d_xt * w_xt)
        decoder = log_zp - torch.where(same, lc1, lc0) - lp_x0  # -log p(x_0 | x_t), hard case
        return torch.where(hard_ > 0, decoder, kl)

    def _posterior_tables(
        self, lc0: Tensor, lc1: Tensor, lq0: Tensor, lq1: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per example [B, 2] float64 (column 0: x_0 != x_t, column 1: x_0 = x_t) for
        `posterior_kl`: -log Z_q + q_{x_0} log(Qbar_s[x_0, x_0] / c), q_b, q_{x_0} - q_b and
        [x_0 != x_t] (q_{x_t} - q_b).

        Args:
            lc0, lc1: log Q_{s->t} off and on the diagonal, float64 [B].
            lq0, lq1: log Qbar_s off and on the diagonal, float64 [B], finite.
        """
        k = self.num_classes
        base = lc0 + lq0  # log of the unnormalised q elsewhere
        at_xt = torch.stack([lc1 + lq0, lc1 + lq1], -1)
        at_x0 = torch.stack([lc0 + lq1, lc1 + lq1], -1)
        log_k2 = math.log(k - 2) if k > 2 else -math.inf  # K - 2 states off {x_0, x_t}
        log_zq = torch.stack([  # no constant tensors: nothing to copy to the device per call
            torch.stack([base + log_k2, at_xt[:, 0], at_x0[:, 0]]).logsumexp(0),
            torch.logaddexp(base + math.log(k - 1), at_xt[:, 1]),
        ], -1)
        q_b, q_x0, q_xt = ((v - log_zq).exp() for v in (base[:, None], at_x0, at_xt))
        const = q_x0 * (lq1 - lq0)[:, None] - log_zq
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


def _check_int(t: int, low: int, high: int) -> None:
    if not isinstance(t, int) or isinstance(t, bool) or not low <= t <= high:
        raise ValueError(f"t must be an integer in {low}..{high}, got {t!r}")


# exp() of float32 arguments outside about [-87, 88] leaves the vectorised fast path on CPU.
_EXP_SAFE = 80.0


def _softplus_shifted(log_p: Tensor, offset: Tensor, bounded: bool) -> Tensor:
    """log(1 + exp(log_p + offset)) = log(1 + e^offset p), elementwise, for log_p <= 0.

    `bounded` promises offset <= 80, so e^offset p stays finite in float32: then three
    passes (exp, scale, log1p; in place when no gradient is needed) and no K-wide sum
    `log_p + offset` nor clamp. Otherwise softplus of the clamped sum (arguments below -80
    add under 2e-35, and exp() of them is many times slower than of moderate ones).

    Args:
        log_p: float [..., K], log probabilities.
        offset: float [..., 1], finite.
    """
    if not bounded:
        return torch.nn.functional.softplus((log_p + offset).clamp(min=-_EXP_SAFE))
    scale = offset.exp()
    if torch.is_grad_enabled() and (log_p.requires_grad or offset.requires_grad):
        return torch.log1p(log_p.exp() * scale)
    return log_p.exp().mul_(scale).log1p_()


def _weighted(log_q: Tensor, value: Tensor) -> Tensor:
    """q * value, 0 where q = 0 (whatever value is), with finite gradients there."""
    zero = torch.zeros((), dtype=value.dtype, device=value.device)
    return log_q.exp() * torch.where(torch.isneginf(log_q), zero, value)


def _plogp_ratio(log_q: Tensor, log_p: Tensor) -> Tensor:
    """q (log q - log p), 0 where q = 0, with finite gradients there."""
    return _weighted(log_q, log_q - log_p)
