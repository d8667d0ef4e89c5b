"""Autoregressive generation as a deterministic diffusion (paper section 4).

With sequences of length N = T (positions on the last dimension of x), the forward process
masks one position per step from the right:

    q([x_t]_i | x_0) = [x_0]_i if i < N - t else [MASK].

Seen per position, step t applies Q_t^(i) = 1 e_m^T (everything to the mask) at i = N - t and
the identity elsewhere, so a span Q_{s->t}^(i) is 1 e_m^T for N - t <= i < N - s and the
identity otherwise. The posterior q(x_{t-1} | x_t, x_0) is then a point mass everywhere: x_t's
value off position N - t and [x_0]_{N-t} there; eq. (4) gives p(x_{t-1} | x_t) = p~ at
position N - t and x_t's value elsewhere, so the bound is the autoregressive cross-entropy
sum_i -log p~([x_0]_i | x_0 with positions >= i masked) (L_T = 0).

The process is not one K x K matrix applied to every token, so the dense views raise
NotImplementedError; the structured operations are position-aware. The schedule's values are
not used: only its length, which must equal N (schedules.jsd(N) gives every token the same
marginal masking probability t/N).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from discrete_diffusion.transitions._common import check_mask_index, check_num_classes
from discrete_diffusion.transitions.base import Transition

__all__ = ["Autoregressive"]

_DENSE = ("the autoregressive process is position-dependent (a different Q_t per position), "
          "so it has no single dense K x K {what}; use the structured operations")


class Autoregressive(Transition):
    """Right-to-left deterministic masking; T equals the sequence length.

    Args:
        num_classes: K >= 2, the mask included.
        mask_index: the mask state m, 0 <= m < K.
        seq_len: N >= 1, the length of the last dimension of every x.
    """

    def __init__(self, num_classes: int, mask_index: int, seq_len: int) -> None:
        check_num_classes(num_classes)
        check_mask_index(mask_index, num_classes)
        if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
        self.num_classes = num_classes
        self.mask_index = mask_index
        self.seq_len = seq_len
        self._ready = False

    # ----- binding --------------------------------------------------------------------------
    def setup(self, betas: Tensor) -> None:
        if not isinstance(betas, Tensor) or betas.dim() != 1 or betas.numel() != self.seq_len:
            raise ValueError(f"the autoregressive process needs T = seq_len = {self.seq_len} "
                             f"steps, got a schedule of shape {tuple(getattr(betas, 'shape', ()))}")
        self._ready = True

    @property
    def num_steps(self) -> int:
        if not self._ready:
            raise RuntimeError("Autoregressive is not set up: call setup(betas) first")
        return self.seq_len

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "mask_index": self.mask_index,
                "seq_len": self.seq_len}

    # ----- dense views ----------------------------------------------------------------------
    def transition_matrix(self, t: int) -> Tensor:
        raise NotImplementedError(_DENSE.format(what="Q_t"))

    def cumulative_matrix(self, t: int) -> Tensor:
        raise NotImplementedError(_DENSE.format(what="Qbar_t"))

    def stationary(self) -> Tensor:
        """Every position is masked at t = T = N."""
        out = torch.zeros(self.num_classes, dtype=torch.float64)
        out[self.mask_index] = 1.0
        return out

    # ----- structured operations ------------------------------------------------------------
    def _positions(self, x: Tensor, last: int) -> Tensor:
        """Position index i of dimension `last`, shaped to broadcast; checks the length."""
        if x.shape[last] != self.seq_len:
            raise ValueError(f"the autoregressive process needs sequences of length "
                             f"{self.seq_len} on the last dimension, got shape {tuple(x.shape)}")
        self.num_steps  # noqa: B018 (clear error when not set up)
        return torch.arange(self.seq_len, device=x.device)

    def _unmasked(self, t: Tensor, x: Tensor, last: int) -> Tensor:
        """[B, ..., N] bool: i < N - t, with t per example [B]."""
        pos = self._positions(x, last)
        shape = (-1, *([1] * (x.dim() + last)))  # t [B] against [B, ..., N]
        return pos < (self.seq_len - t.to(x.device)).view(shape)

    def _one_hot_log(self, x: Tensor) -> Tensor:
        out = torch.full((*x.shape, self.num_classes), -math.inf, device=x.device)
        return out.scatter_(-1, x.unsqueeze(-1), 0.0)

    def log_cumulative(self, x_0: Tensor, t: Tensor) -> Tensor:
        """One-hot rows of x_0 left of N - t and of the mask from there on. At t = T every
        position is masked whatever its index, so rows of any length are accepted there (a
        per-state table of L_T, say)."""
        if x_0.shape[-1] != self.seq_len and bool((t == self.num_steps).all()):
            return self._one_hot_log(torch.full_like(x_0, self.mask_index))
        keep = self._unmasked(t, x_0, -1)
        return self._one_hot_log(torch.where(keep, x_0, self.mask_index))

    def log_cumulative_soft(self, log_x0: Tensor, t: Tensor) -> Tensor:
        """p at positions left of N - t, the mask from there on (at t = T every position,
        for rows of any length, as in `log_cumulative`)."""
        masked = torch.full_like(log_x0, -math.inf)
        masked[..., self.mask_index] = 0.0
        if log_x0.shape[-2] != self.seq_len and bool((t == self.num_steps).all()):
            return masked
        keep = self._unmasked(t, log_x0, -2).unsqueeze(-1)
        return torch.where(keep, log_x0, masked)

    def log_transition_column(self, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """Column x_t of Q_{s->t} per position: where N - t <= i < N - s it is log 1 for every
        j if x_t is the mask (else -inf); elsewhere the identity's column, one-hot(x_t)."""
        newly = self._unmasked(s, x_t, -1) & ~self._unmasked(t, x_t, -1)
        out = self._one_hot_log(x_t)
        reachable = torch.where(x_t == self.mask_index, 0.0, -math.inf)
        return torch.where(newly.unsqueeze(-1), reachable.unsqueeze(-1), out)
