"""Continuous-time keep schedules alpha(t), t in [0, 1], for the keep-or-jump processes.

q(x_t | x_0) = alpha(t) onehot(x_0) + (1 - alpha(t)) pi (see `continuous`): alpha(0) = 1 (x_0
itself) and alpha decreases to alpha(1) (0, or eps for the log-linear schedule). Each schedule
gives alpha(t), its derivative alpha'(t) and 1 - alpha(t) computed without cancellation near
t = 0 (where the loss weights -alpha'/(1 - alpha) and 1/(1 - alpha) are largest). All values are
float64 for float64 t; a committed schedule never changes meaning.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["AlphaSchedule", "Cosine", "Linear", "LogLinear", "Polynomial", "SCHEDULES"]


class AlphaSchedule:
    """alpha(t) on [0, 1]: decreasing, alpha(0) = 1. Subclasses define the three functions."""

    name = ""

    def alpha(self, t: Tensor) -> Tensor:
        """alpha(t), float64 like `t` [...]."""
        raise NotImplementedError

    def alpha_prime(self, t: Tensor) -> Tensor:
        """d alpha / dt at t (<= 0), float64 like `t`."""
        raise NotImplementedError

    def one_minus_alpha(self, t: Tensor) -> Tensor:
        """1 - alpha(t), accurate where alpha(t) is close to 1."""
        raise NotImplementedError

    def final_alpha(self) -> float:
        """alpha(1): 0 except for the log-linear schedule (eps)."""
        return float(self.alpha(torch.ones((), dtype=torch.float64)))


class Linear(AlphaSchedule):
    """alpha(t) = 1 - t (MD4's linear schedule; MDLM's log-linear with eps = 0)."""

    name = "linear"

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t

    def alpha_prime(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -1.0)

    def one_minus_alpha(self, t: Tensor) -> Tensor:
        return t.clone()


class Cosine(AlphaSchedule):
    """alpha(t) = cos(pi t / 2) (MD4's cosine form), with alpha(1) = 0 exactly (cos(pi/2) is
    6e-17 in floating point, which would leave mass on x_0 at t = 1)."""

    name = "cosine"

    def alpha(self, t: Tensor) -> Tensor:
        return torch.where(t >= 1.0, 0.0, torch.cos(math.pi / 2 * t))

    def alpha_prime(self, t: Tensor) -> Tensor:
        return -math.pi / 2 * torch.sin(math.pi / 2 * t)

    def one_minus_alpha(self, t: Tensor) -> Tensor:
        return torch.where(t >= 1.0, 1.0, 2.0 * torch.sin(math.pi / 4 * t) ** 2)


class Polynomial(AlphaSchedule):
    """alpha(t) = 1 - t^w, w > 0 (MD4's polynomial schedule; w = 1 is linear).

    Args:
        exponent: w.
    """

    name = "polynomial"

    def __init__(self, exponent: float = 1.0) -> None:
        if not (isinstance(exponent, (int, float)) and math.isfinite(exponent) and exponent > 0):
            raise ValueError(f"polynomial schedule needs an exponent > 0, got {exponent!r}")
        self.exponent = float(exponent)

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - t ** self.exponent

    def alpha_prime(self, t: Tensor) -> Tensor:
        return -self.exponent * t ** (self.exponent - 1.0)

    def one_minus_alpha(self, t: Tensor) -> Tensor:
        return t ** self.exponent


class LogLinear(AlphaSchedule):
    """alpha(t) = 1 - (1 - eps) t: the log-linear schedule of MDLM and SEDD, whose total noise
    sigma(t) = -log alpha(t) = -log(1 - (1 - eps) t) ends at -log(eps); alpha(1) = eps.

    Args:
        eps: alpha(1), in [0, 1) (0 gives the linear schedule).
    """

    name = "loglinear"

    def __init__(self, eps: float = 1e-3) -> None:
        if not (isinstance(eps, (int, float)) and 0.0 <= eps < 1.0):
            raise ValueError(f"loglinear schedule needs 0 <= eps < 1, got {eps!r}")
        self.eps = float(eps)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.where(t >= 1.0, self.eps, 1.0 - (1.0 - self.eps) * t)  # alpha_1 = eps exactly

    def alpha_prime(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -(1.0 - self.eps))

    def one_minus_alpha(self, t: Tensor) -> Tensor:
        return (1.0 - self.eps) * t


SCHEDULES: dict[str, type[AlphaSchedule]] = {
    cls.name: cls for cls in (Linear, Cosine, Polynomial, LogLinear)}
