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

    # ----- binding --------------------------------------------------------------------------
    def setup(self, betas: Tensor) -> None:
        self.betas = check_betas(betas)
        self.log_keep, self.num_full = keep_tables(self.betas)

    @property
    def num_steps(self) -> int:
        if self.betas is None:
            raise RuntimeError(f"{type(self).__name__} is not set up: call setup(betas) first")
        return self.betas.shape[0]

    def to(self, device: torch.device | str) -> KeepTransition:
        for name in ("betas", "log_keep", "num_full"):
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

    def _log_span(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """log r(s, t) and log(1 - r(s, t)), float64 [B] on the device of `t`."""
        self.num_steps  # noqa: B018 (a clear error when not set up)
        return log_keep_span(self.log_keep, self.num_full, s, t)

    def keep_probability(self, s: Tensor, t: Tensor) -> Tensor:
        """r(s, t) = prod_{u=s+1..t} (1 - beta_u), float64 [B]; alphabar_t = r(0, t)."""
        return self._log_span(s, t)[0].exp()


class Uniform(KeepTransition):
    """Uniform transitions over K states; the stationary distribution is uniform.

    Args:
        num_classes: K >= 2.
    """

    def _dense(self, keep: float) -> Tensor:
        k = self.num_classes
        eye = torch.eye(k, dtype=torch.float64)
        return keep * eye + (1.0 - keep) / k * torch.ones(k, k, dtype=torch.float64)

    def stationary(self) -> Tensor:
        return torch.full((self.num_classes,), 1.0 / self.num_classes, dtype=torch.float64)

    # ----- structured operations ------------------------------------------------------------
    def _log_coefficients(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log r, log(1-r)/K and log(r + (1-r)/K) of the span (s, t), float64 [B]."""
        log_r, log_1mr = self._log_span(s, t)
        log_off = log_1mr - math.log(self.num_classes)
        return log_r, log_off, torch.logaddexp(log_r, log_off)

    def _log_rows(self, x: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """log Q_{s->t}[x, :] (= column x, the matrix being symmetric), float32 [B, ..., K]."""
        _, log_off, log_same = self._log_coefficients(s, t)
        ndim = x.dim() + 1
        shape = (*x.shape, self.num_classes)
        out = per_example(log_off, ndim, torch.float32).expand(shape).clone()
        same = per_example(log_same, x.dim(), torch.float32).expand(x.shape)
        return out.scatter_(-1, x.unsqueeze(-1), same.unsqueeze(-1))

    def log_cumulative(self, x_0: Tensor, t: Tensor) -> Tensor:
        return self._log_rows(x_0, torch.zeros_like(t), t)

    def log_cumulative_soft(self, log_x0: Tensor, t: Tensor) -> Tensor:
        log_r, log_off, _ = self._log_coefficients(torch.zeros_like(t), t)
        ndim = log_x0.dim()
        # log(r p + (1 - r)/K) for every class.
        dtype = log_x0.dtype
        return torch.logaddexp(
            log_x0 + per_example(log_r, ndim, dtype), per_example(log_off, ndim, dtype)
        )

    def log_transition_column(self, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        return self._log_rows(x_t, s, t)

    def sample_cumulative(
        self, x_0: Tensor, t: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """x_t ~ q(x_t | x_0) in O(1) per token: keep x_0 with probability alphabar_t, else draw
        a uniform state (which may be x_0 again), exactly the row Qbar_t[x_0, :]."""
        log_r, _, _ = self._log_coefficients(torch.zeros_like(t), t)
        u = uniform_noise(x_0.shape, x_0.device, generator)
        fresh = torch.randint(
            self.num_classes, x_0.shape, device=x_0.device, generator=generator
        )
        keep = u < per_example(log_r.exp(), x_0.dim(), torch.float64)
        return torch.where(keep, x_0, fresh)


def _check_int(t: int, low: int, high: int) -> None:
    if not isinstance(t, int) or isinstance(t, bool) or not low <= t <= high:
        raise ValueError(f"t must be an integer in {low}..{high}, got {t!r}")
