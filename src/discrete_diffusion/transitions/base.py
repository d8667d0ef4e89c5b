"""The forward-process interface shared by every transition.

Conventions (paper, Austin et al. 2021, section 3):
    * K categories, states are integers 0..K-1; x_0 is data, t in 1..T.
    * Q_t is row-stochastic: Q_t[i, j] = q(x_t = j | x_{t-1} = i)  (eq. 2).
    * Qbar_t = Q_1 Q_2 ... Q_t, Qbar_0 = I, so q(x_t | x_0) = Cat(x_0 Qbar_t)  (eq. 3).
    * Q_{s->t} = Q_{s+1} ... Q_t (s < t) is the span used by k-step skipping.

A transition describes one family of Q_t. `setup(betas)` binds it to a schedule of T steps;
every other method needs that binding. Tables are built in float64; methods return log
probabilities in the dtype of their floating input (float32 unless given float64), computed in
log space where a closed form allows. Zero probabilities are -inf, never NaN.

Optional fused operations (`sample_cumulative`, `log_q_posterior`, `log_p_posterior`,
`posterior_kl`) may be defined by a subclass for speed; `D3PM` looks them up once and falls
back to the generic path built on the methods below (see `process.py`).

Shapes: `t` arguments are LongTensors of shape [B] (one time per example) where x has shape
[B, ...]; `D3PM` normalises ints to that form before calling a transition.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class Transition(ABC):
    """Base class of a forward process q(x_t | x_{t-1}) = Cat(x_{t-1} Q_t).

    Subclasses implement the structured operations in O(K) per token where a closed form
    exists; the dense fallbacks here exist for inspection, tests and the `Dense` process.
    """

    num_classes: int

    # ----- binding to a schedule ------------------------------------------------------------
    @abstractmethod
    def setup(self, betas: Tensor) -> None:
        """Precompute float64 tables for `betas` (float64 [T], beta_1..beta_T)."""

    @property
    @abstractmethod
    def num_steps(self) -> int:
        """T, the number of steps this transition was set up with."""

    # ----- dense views (float64; for inspection and tests) ---------------------------------
    @abstractmethod
    def transition_matrix(self, t: int) -> Tensor:
        """Dense Q_t, float64 [K, K], t in 1..T."""

    @abstractmethod
    def cumulative_matrix(self, t: int) -> Tensor:
        """Dense Qbar_t, float64 [K, K], t in 0..T (Qbar_0 = I)."""

    @abstractmethod
    def stationary(self) -> Tensor:
        """The prior p(x_T) the process reaches, float64 [K]."""

    # ----- structured operations -----------------------------------------------------------
    @abstractmethod
    def log_cumulative(self, x_0: Tensor, t: Tensor) -> Tensor:
        """log q(x_t | x_0) = log Qbar_t[x_0, :].

        Args:
            x_0: LongTensor [B, ...].
            t: LongTensor [B], values in 0..T.
        Returns:
            float32 [B, ..., K].
        """

    @abstractmethod
    def log_cumulative_soft(self, log_x0: Tensor, t: Tensor) -> Tensor:
        """log(p Qbar_t) for a distribution p over x_0 given in log space.

        Args:
            log_x0: float [B, ..., K], normalised log probabilities (may hold -inf).
            t: LongTensor [B], values in 0..T.
        Returns:
            float [B, ..., K] in the dtype of `log_x0`.
        """

    @abstractmethod
    def log_transition_column(self, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """log q(x_t | x_s = j) for every j: log of column x_t of Q_{s->t} = Q_{s+1}...Q_t.

        The factor of the posterior (eq. 3) with s = t - 1, and of k-step skipping with s = t - k.

        Args:
            x_t: LongTensor [B, ...].
            s, t: LongTensor [B], 0 <= s < t <= T.
        Returns:
            float32 [B, ..., K].
        """

    # ----- serialisation --------------------------------------------------------------------
    @abstractmethod
    def config(self) -> dict:
        """JSON-serialisable constructor arguments (tensors excluded: see `Dense`)."""

    def table_bytes(self) -> int:
        """Bytes held by precomputed tables (every tensor attribute, also inside lists, tuples
        and dicts); benchmarks report it as the memory cost of a process."""
        return sum(_nbytes(v) for v in vars(self).values())

    def to(self, device: torch.device | str) -> Transition:
        """Move precomputed tables to `device` (default: no tables, nothing to move)."""
        return self


def check_schedule(betas: Tensor) -> Tensor:
    """betas as float64 [T]: 1-D, length >= 1, finite, >= 0.

    Only the sign is checked here: whether a beta is a probability in [0, 1] (Uniform,
    Absorbing, MaskUniform), a rate (NearestNeighbor, Dense with a rate matrix) or a variance
    (DiscretizedGaussian) is each transition's to check in `setup`.
    """
    if not isinstance(betas, Tensor) or betas.dim() != 1 or betas.numel() < 1:
        raise ValueError("betas must be a 1-D tensor of length T >= 1 (beta_1..beta_T)")
    betas = betas.detach().to(torch.float64)
    if not bool(torch.isfinite(betas).all()) or bool((betas < 0).any()):
        raise ValueError("betas must be finite and >= 0")
    return betas


def _nbytes(value: object) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0
