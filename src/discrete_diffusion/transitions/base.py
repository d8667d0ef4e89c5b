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

Optional fused operations (`FUSED_OPERATIONS`: `sample_cumulative`, `log_q_posterior`,
`log_p_posterior`, `posterior_kl`) may be defined by a subclass for speed. Each must equal the
generic path that `D3PM` composes from the methods below (see `process.py`). A transition has
no fallback of its own: `preferred_fused_operations` says which of its fused operations pay
off at its K, and `D3PM(..., fused=None)` follows it (`fused=True` / `False` overrides it).

Shapes: `t` arguments are LongTensors of shape [B] (one time per example) where x has shape
[B, ...]; `D3PM` normalises ints to that form before calling a transition.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

FUSED_OPERATIONS = ("sample_cumulative", "log_q_posterior", "log_p_posterior", "posterior_kl")


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

    # ----- optional fused operations -------------------------------------------------------
    @property
    def fused_operations(self) -> frozenset[str]:
        """The names in `FUSED_OPERATIONS` this transition defines."""
        return frozenset(name for name in FUSED_OPERATIONS if callable(getattr(self, name, None)))

    @property
    def preferred_fused_operations(self) -> frozenset[str]:
        """The fused operations worth using at this transition's K: all of them unless a
        subclass knows that the generic path is faster for some (`D3PM(fused=None)`)."""
        return self.fused_operations

    def select_fused(self, fused: bool | None) -> frozenset[str]:
        """The fused operations `D3PM(..., fused=fused)` uses: None, the preferred ones; True,
        all defined (an error if there are none); False, none (the generic path)."""
        if fused is None:
            return self.preferred_fused_operations
        if not isinstance(fused, bool):
            raise ValueError(f"fused must be None, True or False, got {fused!r}")
        if fused and not self.fused_operations:
            raise ValueError(f"{type(self).__name__} defines no fused operations; use "
                             f"fused=None or False")
        return self.fused_operations if fused else frozenset()

    # ----- serialisation --------------------------------------------------------------------
    @abstractmethod
    def config(self) -> dict:
        """JSON-serialisable constructor arguments (tensors excluded: see `Dense`)."""

    def table_bytes(self) -> int:
        """Bytes held by precomputed tables (every tensor attribute, also inside lists, tuples
        and dicts); benchmarks report it as the memory cost of a process."""
        return sum(_nbytes(v) for v in vars(self).values())

    def to(self, device: torch.device | str) -> Transition:
        """Move every tensor attribute (also inside lists, tuples and dicts, as `table_bytes`
        counts them) to `device`; returns self. Tables are attributes, so subclasses need no
        override."""
        for name, value in list(vars(self).items()):
            setattr(self, name, _moved(value, device))
        return self


def _nbytes(value: object) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return 0


def _moved(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(v, device) for v in value)
    if isinstance(value, dict):  # OrderedDict too: the order (an LRU cache's) is kept
        return type(value)((k, _moved(v, device)) for k, v in value.items())
    return value
