"""Dense transition matrices: user-supplied Q_t, or Q_t = expm(beta_t R) for a rate matrix R.

`DenseTransition` is the generic dense implementation of every structured operation, for any
process whose one-step matrices can be written down: a subclass only implements
`_one_step_matrices(betas) -> float64 [T, K, K]` (and `config`, and `__init__` setting
`num_classes`), and inherits the float64 tables, spans and log-space gathers. `Dense` is the
subclass for matrices given by the user. (`DiscretizedGaussian` is not one: it stores Q_t as a
banded profile and its own LRU span cache, see `gaussian.py`.)

Tables (tensor attributes: counted by `table_bytes`, moved by `to`):
    one_step   float64 [T, K, K]     Q_1..Q_T
    cumulative float64 [T+1, K, K]   Qbar_0 = I, Qbar_t = Qbar_{t-1} Q_t (sequential float64)
    spans      dict (s, t) -> float64 [K, K], Q_{s->t} = Q_{s+1}...Q_t built on demand, cached
"""

from __future__ import annotations

import torch
from torch import Tensor

from discrete_diffusion.categorical import log_matmul_exp
from discrete_diffusion.transitions._common import (
    check_betas,
    check_int,
    check_num_classes,
    per_example,
)
from discrete_diffusion.transitions.base import Transition

__all__ = ["Dense", "DenseTransition", "check_stochastic"]

_ROW_TOL = 1e-6


def check_stochastic(matrices: Tensor, what: str = "transition matrices") -> Tensor:
    """Validate row-stochastic matrices [..., K, K] and return them as float64.

    Raises:
        ValueError: an entry is negative or not finite, or a row does not sum to one.
    """
    mats = matrices.detach().to(torch.float64)
    if mats.dim() < 2 or mats.shape[-1] != mats.shape[-2]:
        raise ValueError(f"{what} must be square [..., K, K], got shape {tuple(mats.shape)}")
    if not bool(torch.isfinite(mats).all()):
        raise ValueError(f"{what} hold non-finite entries")
    if bool((mats < 0).any()):
        raise ValueError(f"{what} hold a negative entry (min {float(mats.min()):.3g})")
    err = (mats.sum(-1) - 1.0).abs().max()
    if float(err) > _ROW_TOL:
        raise ValueError(f"{what}: a row does not sum to one (largest error {float(err):.3g})")
    return mats


class DenseTransition(Transition):
    """Generic dense process: structured operations by gathers on float64 tables.

    Subclasses implement `_one_step_matrices`; see the module docstring.
    """

    num_classes: int

    def __init__(self, num_classes: int) -> None:
        check_num_classes(num_classes)
        self.num_classes = num_classes
        self.betas: Tensor | None = None
        self.one_step: Tensor | None = None
        self.cumulative: Tensor | None = None
        self.spans: dict[tuple[int, int], Tensor] = {}

    def _one_step_matrices(self, betas: Tensor) -> Tensor:
        """Q_1..Q_T for the schedule, float64 [T, K, K] (row-stochastic)."""
        raise NotImplementedError

    # ----- binding --------------------------------------------------------------------------
    def setup(self, betas: Tensor) -> None:
        betas = check_betas(betas)  # probabilities, or rates for Dense(rate=...)
        mats = check_stochastic(self._one_step_matrices(betas), f"{type(self).__name__} Q_t")
        k = self.num_classes
        if mats.shape != (betas.shape[0], k, k):
            raise ValueError(f"one-step matrices have shape {tuple(mats.shape)}, expected "
                             f"({betas.shape[0]}, {k}, {k})")
        cum = torch.empty(mats.shape[0] + 1, k, k, dtype=torch.float64, device=mats.device)
        cum[0] = torch.eye(k, dtype=torch.float64, device=mats.device)
        for t in range(mats.shape[0]):
            cum[t + 1] = cum[t] @ mats[t]
        self.betas, self.one_step, self.cumulative, self.spans = betas, mats, cum, {}

    @property
    def num_steps(self) -> int:
        if self.one_step is None:
            raise RuntimeError(f"{type(self).__name__} is not set up: call setup(betas) first")
        return self.one_step.shape[0]

    # ----- dense views ----------------------------------------------------------------------
    def transition_matrix(self, t: int) -> Tensor:
        check_int(t, 1, self.num_steps)
        return self.one_step[t - 1].clone()

    def cumulative_matrix(self, t: int) -> Tensor:
        check_int(t, 0, self.num_steps)
        return self.cumulative[t].clone()

    def span_matrix(self, s: int, t: int) -> Tensor:
        """Q_{s->t} = Q_{s+1} ... Q_t, float64 [K, K], 0 <= s < t <= T (cached by (s, t))."""
        check_int(t, 1, self.num_steps)
        check_int(s, 0, t - 1)
        if s == t - 1:
            return self.one_step[s]
        if s == 0:
            return self.cumulative[t]
        if (s, t) not in self.spans:
            out = self.one_step[s]
            for u in range(s + 1, t):
                out = out @ self.one_step[u]
            self.spans[(s, t)] = out
        return self.spans[(s, t)]

    def stationary(self) -> Tensor:
        """(1/K) 1^T Qbar_T: the law of x_T for a uniform x_0.

        When the process mixes by T every row of Qbar_T is the stationary distribution and this
        is it; for a doubly stochastic process it is exactly uniform. Any choice gives a valid
        bound; this one is defined for every process and never needs an eigensolver.
        """
        return self.cumulative[self.num_steps].mean(0).cpu()

    # ----- structured operations ------------------------------------------------------------
    def log_cumulative(self, x_0: Tensor, t: Tensor) -> Tensor:
        dev = self.cumulative.device
        rows = self.cumulative[per_example(t.to(dev), x_0.dim()), x_0.to(dev)]
        return rows.log().to(device=x_0.device, dtype=torch.float32)

    def log_cumulative_soft(self, log_x0: Tensor, t: Tensor) -> Tensor:
        b, k = log_x0.shape[0], log_x0.shape[-1]
        flat = log_x0.reshape(b, -1, k)
        mats = self.cumulative[t.to(self.cumulative.device)].to(log_x0.device)
        return log_matmul_exp(flat, mats).reshape(log_x0.shape)

    def log_transition_column(self, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        pairs = torch.stack([s, t], 1).cpu()
        unique, inverse = torch.unique(pairs, dim=0, return_inverse=True)
        spans = [self.span_matrix(int(a), int(b)).transpose(0, 1) for a, b in unique.tolist()]
        stacked = torch.stack(spans)  # [U, K, K], row j of entry u = column j of the span
        cols = stacked[per_example(inverse, x_t.dim()), x_t.to(stacked.device)]
        return cols.log().to(device=x_t.device, dtype=torch.float32)


class Dense(DenseTransition):
    """A process given by its one-step matrices or by a rate matrix.

    Exactly one of:
        matrices: float [T, K, K], row-stochastic Q_1..Q_T (entries >= 0, rows sum to one).
            The schedule passed to `setup` must have length T; its values are not used.
        rate: float [K, K], a rate matrix R (off-diagonal >= 0, rows sum to zero); then
            Q_t = expm(beta_t R) in float64.
    """

    def __init__(self, matrices: Tensor | None = None, rate: Tensor | None = None) -> None:
        if (matrices is None) == (rate is None):
            raise ValueError("Dense needs exactly one of `matrices` [T, K, K] or `rate` [K, K]")
        if matrices is not None:
            if not isinstance(matrices, Tensor) or matrices.dim() != 3:
                raise ValueError("Dense `matrices` must be a tensor [T, K, K]")
            self.matrices: Tensor | None = check_stochastic(matrices, "Dense matrices")
            self.rate: Tensor | None = None
            super().__init__(matrices.shape[-1])
        else:
            self.rate = _check_rate(rate)
            self.matrices = None
            super().__init__(self.rate.shape[0])

    def _one_step_matrices(self, betas: Tensor) -> Tensor:
        if self.matrices is not None:
            if betas.shape[0] != self.matrices.shape[0]:
                raise ValueError(f"Dense was given {self.matrices.shape[0]} matrices but the "
                                 f"schedule has T = {betas.shape[0]} steps")
            return self.matrices.to(betas.device)
        scaled = betas.view(-1, 1, 1) * self.rate.to(betas.device)
        mats = torch.linalg.matrix_exp(scaled).clamp(min=0.0)  # round-off negatives ~1e-17
        return mats / mats.sum(-1, keepdim=True)

    def config(self) -> dict:
        """Tensors are not included: save `matrices` or `rate` beside this."""
        return {"num_classes": self.num_classes,
                "source": "matrices" if self.matrices is not None else "rate"}


def _check_rate(rate: Tensor) -> Tensor:
    if not isinstance(rate, Tensor) or rate.dim() != 2 or rate.shape[0] != rate.shape[1]:
        raise ValueError("Dense `rate` must be a square tensor [K, K]")
    r = rate.detach().to(torch.float64)
    if not bool(torch.isfinite(r).all()):
        raise ValueError("Dense rate matrix holds non-finite entries")
    off = r - torch.diag(torch.diagonal(r))
    if bool((off < 0).any()):
        raise ValueError("Dense rate matrix has a negative off-diagonal entry")
    err = r.sum(-1).abs().max()
    if float(err) > _ROW_TOL * max(1.0, float(r.abs().max())):
        raise ValueError(f"Dense rate matrix: a row does not sum to zero "
                         f"(largest {float(err):.3g})")
    return r
