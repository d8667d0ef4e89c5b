"""The absorbing ("mask") process: Q_t = (1 - beta_t) I + beta_t 1 e_m^T (paper section 3.1).

A token is kept with probability 1 - beta_t and otherwise jumps to the mask state m, which it
never leaves. Spans have the same form, Q_{s->t} = r I + (1 - r) 1 e_m^T with
r = prod_{u=s+1..t} (1 - beta_u), and Qbar_t = Q_{0->t}. The mask is one of the K states: an
extra token K-1 added by the caller for text, the grey value 128 for images.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from discrete_diffusion.categorical import uniform_noise
from discrete_diffusion.transitions.uniform import KeepTransition, per_example

_NEG_INF = -math.inf


class Absorbing(KeepTransition):
    """Absorbing transitions into `mask_index`; the stationary distribution is a point mass on
    the mask (reached exactly when alphabar_T = 0, e.g. with the jsd schedule).

    Args:
        num_classes: K >= 2, the mask included.
        mask_index: the absorbing state m, 0 <= m < K.
    """

    def __init__(self, num_classes: int, mask_index: int) -> None:
        super().__init__(num_classes)
        if not isinstance(mask_index, int) or not 0 <= mask_index < num_classes:
            raise ValueError(f"mask_index must be an integer in 0..{num_classes - 1}, got "
                             f"{mask_index!r}")
        self.mask_index = mask_index

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "mask_index": self.mask_index}

    # ----- dense views ----------------------------------------------------------------------
    def _dense(self, keep: float) -> Tensor:
        k, m = self.num_classes, self.mask_index
        mat = keep * torch.eye(k, dtype=torch.float64)
        mat[:, m] += 1.0 - keep
        mat[m, m] = 1.0
        return mat

    def stationary(self) -> Tensor:
        out = torch.zeros(self.num_classes, dtype=torch.float64)
        out[self.mask_index] = 1.0
        return out

    # ----- structured operations ------------------------------------------------------------
    def log_cumulative(self, x_0: Tensor, t: Tensor) -> Tensor:
        """Row x_0 of Qbar_t: alphabar_t at x_0, 1 - alphabar_t at m (1 at m if x_0 = m)."""
        log_r, log_1mr = self._log_span(torch.zeros_like(t), t)
        m, ndim = self.mask_index, x_0.dim() + 1
        out = torch.full((*x_0.shape, self.num_classes), _NEG_INF, device=x_0.device)
        out[..., m] = per_example(log_1mr, x_0.dim(), torch.float32)
        at_x0 = torch.where(x_0 == m, 0.0, per_example(log_r, ndim - 1, torch.float32))
        return out.scatter_(-1, x_0.unsqueeze(-1), at_x0.unsqueeze(-1))

    def log_cumulative_soft(self, log_x0: Tensor, t: Tensor) -> Tensor:
        """p Qbar_t = alphabar_t p + (1 - alphabar_t) e_m for a normalised p."""
        log_r, log_1mr = self._log_span(torch.zeros_like(t), t)
        m, ndim = self.mask_index, log_x0.dim()
        out = log_x0 + per_example(log_r, ndim, log_x0.dtype)
        at_m = torch.logaddexp(out[..., m], per_example(log_1mr, ndim - 1, log_x0.dtype))
        out[..., m] = at_m
        return out

    def log_transition_column(self, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """Column x_t of Q_{s->t}: r at j = x_t if x_t != m; if x_t = m, 1 - r off the mask and
        1 at the mask."""
        log_r, log_1mr = self._log_span(s, t)
        m, ndim = self.mask_index, x_t.dim()
        is_mask = x_t == m
        base = torch.where(is_mask, per_example(log_1mr, ndim, torch.float32), _NEG_INF)
        out = base.unsqueeze(-1).expand(*x_t.shape, self.num_classes).clone()
        at_xt = torch.where(is_mask, 0.0, per_example(log_r, ndim, torch.float32))
        return out.scatter_(-1, x_t.unsqueeze(-1), at_xt.unsqueeze(-1))

    def sample_cumulative(
        self, x_0: Tensor, t: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """x_t ~ q(x_t | x_0) in O(1) per token: keep x_0 with probability alphabar_t, else m."""
        log_r, _ = self._log_span(torch.zeros_like(t), t)
        u = uniform_noise(x_0.shape, x_0.device, generator)
        keep = u < per_example(log_r.exp(), x_0.dim(), torch.float64)
        return torch.where(keep, x_0, torch.full_like(x_0, self.mask_index))

