"""Noise schedules: float64 tensors [T] holding beta_1..beta_T (paper section 3.4).

A committed schedule never changes meaning: each function here is a promise about its output.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"number of steps T must be a positive integer, got {num_steps!r}")


def linear(num_steps: int, start: float = 1e-4, stop: float = 0.02) -> Tensor:
    """beta_t linearly spaced from `start` (t = 1) to `stop` (t = T), as for the Gaussian
    matrix in the paper (1e-4 -> 0.02, T = 1000)."""
    _check_steps(num_steps)
    if not (0.0 <= start <= 1.0 and 0.0 <= stop <= 1.0):
        raise ValueError(f"linear schedule needs 0 <= start, stop <= 1, got {start}, {stop}")
    return torch.linspace(start, stop, num_steps, dtype=torch.float64)


def cosine(num_steps: int, offset: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """The cosine schedule (Nichol & Dhariwal; Hoogeboom et al.): the cumulative keep
    probability alphabar(t) = f(t)/f(0), f(t) = cos((t/T + s)/(1 + s) * pi/2), and
    beta_t = min(1 - alphabar(t)/alphabar(t-1), max_beta) for t = 1..T."""
    _check_steps(num_steps)
    t = torch.arange(num_steps + 1, dtype=torch.float64)
    f = torch.cos((t / num_steps + offset) / (1 + offset) * math.pi / 2)
    betas = 1.0 - f[1:] / f[:-1]
    return betas.clamp(min=0.0, max=max_beta)


def jsd(num_steps: int) -> Tensor:
    """beta_t = 1/(T - t + 1) (Sohl-Dickstein et al.): for the absorbing process it masks a
    token at step t with probability t/T overall, and beta_T = 1 reaches the mask exactly."""
    _check_steps(num_steps)
    t = torch.arange(1, num_steps + 1, dtype=torch.float64)
    return 1.0 / (num_steps - t + 1.0)


def constant(num_steps: int, beta: float) -> Tensor:
    """beta_t = beta for every t (useful for one-step processes and tests)."""
    _check_steps(num_steps)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"constant schedule needs 0 <= beta <= 1, got {beta}")
    return torch.full((num_steps,), float(beta), dtype=torch.float64)


def mutual_information(
    transition: object, num_steps: int, data_marginal: Tensor, **kwargs: object
) -> Tensor:
    """beta_t with I(x_t; x_0) = (1 - t/T) H(x_0) for x_0 ~ `data_marginal` (paper section
    3.2); see `discrete_diffusion.mutual_info.mutual_information` for the method and options."""
    from discrete_diffusion.mutual_info import mutual_information as solve

    return solve(transition, num_steps, data_marginal, **kwargs)
