"""The keep-or-jump family: spans Q_{s->t} = r I + (1 - r) B for a fixed row-stochastic B and
a scalar keep probability r(s, t) = prod_{u=s+1..t} (1 - beta_u) (Uniform: B = 11^T / K;
Absorbing: B = 1 e_m^T). Qbar_t is the span (0, t), with r = alphabar_t.

`keep_tables` and `log_keep_span` also serve MaskUniform, whose masking and uniform parts are
each a keep-or-jump schedule.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from discrete_diffusion.categorical import log1mexp
from discrete_diffusion.transitions._common import check_betas, check_int, check_num_classes
from discrete_diffusion.transitions.base import Transition

__all__ = ["KeepTransition", "keep_tables", "log_keep_span"]


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


class KeepTransition(Transition):
    """Shared base of the processes whose spans are Q_{s->t} = r I + (1 - r) B for a fixed
    row-stochastic B and a scalar keep probability r(s, t) (uniform, absorbing).

    Subclasses give `_dense(r)` and the structured operations; this class holds the float64
    keep tables (tensor attributes, so `table_bytes` counts them and `to` moves them) and the
    dense views.

    Args:
        num_classes: K >= 2.
    """

    def __init__(self, num_classes: int) -> None:
        check_num_classes(num_classes)
        self.num_classes = num_classes
        self.betas: Tensor | None = None
        self.log_keep: Tensor | None = None
        self.num_full: Tensor | None = None
        self.log_cum: Tensor | None = None

    # ----- binding --------------------------------------------------------------------------
    def setup(self, betas: Tensor) -> None:
        self.betas = check_betas(betas, "probability")
        self.log_keep, self.num_full = keep_tables(self.betas)
        # log alphabar_t and log(1 - alphabar_t), t = 0..T: the cumulative case, gathered
        steps = torch.arange(self.betas.shape[0] + 1, device=self.betas.device)
        self.log_cum = torch.stack(log_keep_span(self.log_keep, self.num_full, 0 * steps, steps))

    @property
    def num_steps(self) -> int:
        if self.betas is None:
            raise RuntimeError(f"{type(self).__name__} is not set up: call setup(betas) first")
        return self.betas.shape[0]

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
        check_int(t, 1, self.num_steps)
        return self._dense(self._keep(t - 1, t))

    def cumulative_matrix(self, t: int) -> Tensor:
        check_int(t, 0, self.num_steps)
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
