"""The mutual-information schedule (paper section 3.2, appendix A.7).

Choose beta_1..beta_T so that I(x_t; x_0) = (1 - t/T) H(x_0) under a data marginal p(x_0).

Each supported transition is seen as a one-parameter family Qbar(l) of cumulative matrices
with a noise level l >= 0 (Qbar(0) = I, noisier as l grows): a `NoisePath`.
    * rate processes (NearestNeighbor, Dense with a rate R): Qbar(c) = expm(c R) with the
      cumulative exponent c_t = beta_1 + ... + beta_t, so beta_t = c_t - c_{t-1};
    * closed-form processes (Uniform, Absorbing): l = -log alphabar_t, so
      beta_t = 1 - exp(-(l_t - l_{t-1})); l_T = inf gives beta_T = 1 and I(x_T; x_0) = 0.
The relative information removal r(l) = 1 - I(x_0; x_t) / H(x_0) is sampled on a geometric
grid of levels, inverted by monotone (PCHIP) interpolation at the targets r_t = t/T, and, when
cheap, refined by root finding to the exact level (the reference implementation stops at the
interpolation). A rate process reaches I = 0 only in the limit: its last level is the first
where r >= 1 - `final_tolerance`.

MaskUniform has two schedules: its uniform part is fixed by `uniform_betas`, and since the mask
erases a token independently of everything else, I(x_t; x_0) = alphabar_t I_u(t) with I_u(t)
the information left by the uniform part alone; the mask schedule is then alphabar_t =
target_t / I_u(t), in closed form.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.interpolate
import scipy.optimize
import torch
from torch import Tensor

from discrete_diffusion.transitions import (
    Absorbing,
    Dense,
    MaskUniform,
    NearestNeighbor,
    Transition,
    Uniform,
)

__all__ = ["NoisePath", "mutual_information", "mutual_information_of", "noise_path"]

F64 = torch.float64


@dataclass(frozen=True)
class NoisePath:
    """A one-parameter family of cumulative matrices.

    Attributes:
        cumulative: level l >= 0 -> Qbar(l), float64 [K, K].
        to_betas: increasing levels float64 [T] (l_T may be inf) -> betas float64 [T].
        exact_end: whether l = inf is allowed (Qbar(inf) has I(x_T; x_0) = 0 exactly).
    """

    cumulative: Callable[[float], Tensor]
    to_betas: Callable[[Tensor], Tensor]
    exact_end: bool


def mutual_information_of(cumulative: Tensor, marginal: Tensor) -> float:
    """I(x_t; x_0) in nats for x_0 ~ marginal and q(x_t | x_0) = cumulative[x_0, :].

    0 log 0 = 0 throughout (marginals may hold zeros, e.g. at the mask).
    """
    joint_rows = cumulative.to(F64)
    marginal = marginal.to(joint_rows.device, F64)
    p_t = marginal @ joint_rows
    h_t = -torch.special.xlogy(p_t, p_t).sum()
    h_rows = -torch.special.xlogy(joint_rows, joint_rows).sum(-1)
    return max(float(h_t - (marginal * h_rows).sum()), 0.0)


def _entropy(p: Tensor) -> float:
    return float(-torch.special.xlogy(p, p).sum())


# ----- noise paths of the supported transitions ---------------------------------------------
def _rate_betas(levels: Tensor) -> Tensor:
    return torch.diff(levels, prepend=levels.new_zeros(1))


def _keep_betas(levels: Tensor) -> Tensor:
    gaps = torch.diff(levels, prepend=levels.new_zeros(1))
    return -torch.expm1(-gaps)  # gap = inf gives beta = 1


def _uniform_matrix(k: int, keep: float) -> Tensor:
    return keep * torch.eye(k, dtype=F64) + (1.0 - keep) / k


def _absorbing_matrix(k: int, m: int, keep: float) -> Tensor:
    mat = keep * torch.eye(k, dtype=F64)
    mat[:, m] += 1.0 - keep
    mat[m, m] = 1.0
    return mat


def noise_path(transition: Transition) -> NoisePath:
    """The `NoisePath` of a transition; ValueError for families without one."""
    k = transition.num_classes
    if isinstance(transition, NearestNeighbor):
        return NoisePath(transition.matrix_at, _rate_betas, exact_end=False)
    if isinstance(transition, Dense) and transition.rate is not None:
        rate = transition.rate.cpu()

        def expm(c: float) -> Tensor:
            mat = torch.linalg.matrix_exp(c * rate).clamp(min=0.0)
            return mat / mat.sum(-1, keepdim=True)

        return NoisePath(expm, _rate_betas, exact_end=False)
    if isinstance(transition, Absorbing):  # before Uniform: Absorbing subclasses it
        m = transition.mask_index
        return NoisePath(lambda l: _absorbing_matrix(k, m, math.exp(-l)), _keep_betas, True)
    if isinstance(transition, Uniform):
        return NoisePath(lambda l: _uniform_matrix(k, math.exp(-l)), _keep_betas, True)
    raise ValueError(f"the mutual-information schedule needs a one-parameter family of "
                     f"Qbar; {type(transition).__name__} has none (supported: NearestNeighbor, "
                     f"Dense with a rate, Uniform, Absorbing, MaskUniform)")


# ----- the schedule -------------------------------------------------------------------------
def _check_marginal(transition: Transition, data_marginal: Tensor) -> Tensor:
    p = torch.as_tensor(data_marginal).detach().to("cpu", F64).reshape(-1)
    k = transition.num_classes
    mask = getattr(transition, "mask_index", None)
    if p.numel() == k - 1 and mask == k - 1:
        p = torch.cat([p, p.new_zeros(1)])  # a data marginal without the appended mask
    if p.numel() != k:
        raise ValueError(f"data_marginal must have K = {k} entries, got {p.numel()}")
    if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or float(p.sum()) <= 0:
        raise ValueError("data_marginal must be finite, non-negative and not all zero")
    p = p / p.sum()
    if _entropy(p) <= 0:
        raise ValueError("data_marginal has zero entropy: there is no information to remove")
    return p


def mutual_information(
    transition: Transition,
    num_steps: int,
    data_marginal: Tensor,
    *,
    num_samples: int = 128,
    refine: bool | None = None,
    final_tolerance: float = 1e-6,
) -> Tensor:
    """betas float64 [T] with I(x_t; x_0) = (1 - t/T) H(x_0) for t = 1..T.

    Args:
        transition: NearestNeighbor, Dense (with a rate), Uniform, Absorbing or MaskUniform.
            It need not be set up (MaskUniform's uniform_betas must have length T).
        num_steps: T >= 1.
        data_marginal: float [K] (or [K - 1] when the mask is the last state, padded with 0).
        num_samples: levels sampled on the geometric grid 1e-4 .. 1e5.
        refine: solve each level to machine precision by root finding (default: K <= 512;
            each evaluation costs a K x K matrix).
        final_tolerance: the relative information left at t = T for rate processes.
    Returns:
        float64 [T], beta_1..beta_T (rates for rate processes: they may exceed 1).
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"number of steps T must be a positive integer, got {num_steps!r}")
    p = _check_marginal(transition, data_marginal)
    if isinstance(transition, MaskUniform):
        return _mask_uniform_betas(transition, num_steps, p)
    path = noise_path(transition)
    if refine is None:
        refine = transition.num_classes <= 512
    h0 = _entropy(p)

    def removal(level: float) -> float:
        return 1.0 - mutual_information_of(path.cumulative(level), p) / h0

    levels = _solve_levels(removal, num_steps, num_samples, refine, path.exact_end,
                           final_tolerance)
    return path.to_betas(levels)


def _solve_levels(
    removal: Callable[[float], float],
    num_steps: int,
    num_samples: int,
    refine: bool,
    exact_end: bool,
    final_tolerance: float,
) -> Tensor:
    """Levels l_1..l_T with removal(l_t) = t/T (l_T = inf when exact_end)."""
    grid = np.concatenate([[0.0], np.geomspace(1e-4, 1e5, num_samples)])
    r = np.array([removal(float(v)) for v in grid])
    keep = np.concatenate([[True], np.diff(np.maximum.accumulate(r)) > 0])
    keep &= r >= np.maximum.accumulate(r)  # drop points below an earlier maximum
    grid_k, r_k = grid[keep], r[keep]
    inverse = scipy.interpolate.PchipInterpolator(r_k, grid_k)
    last = num_steps - 1 if exact_end else num_steps
    targets = np.arange(1, num_steps + 1) / num_steps
    targets[-1] = 1.0 if exact_end else 1.0 - final_tolerance
    if targets[last - 1] > r_k[-1] + 1e-12:
        raise ValueError(f"the process removes at most {r_k[-1]:.6g} of the information at "
                         f"level 1e5; cannot reach the mutual-information targets")
    out = np.empty(num_steps)
    for i in range(last):
        out[i] = _root(removal, targets[i], grid_k, r_k) if refine else inverse(targets[i])
    if exact_end:
        out[-1] = math.inf
    return torch.from_numpy(np.maximum.accumulate(out))


def _root(f: Callable[[float], float], target: float, grid: np.ndarray, r: np.ndarray) -> float:
    """The level where f = target, bracketed by the sampled (grid, r)."""
    hi = int(np.searchsorted(r, target))
    if hi < len(r) and r[hi] == target:
        return float(grid[hi])
    lo_level, hi_level = grid[max(hi - 1, 0)], grid[min(hi, len(r) - 1)]
    return scipy.optimize.brentq(lambda v: f(v) - target, lo_level, hi_level,
                                 xtol=1e-14, rtol=1e-13)


def _mask_uniform_betas(transition: MaskUniform, num_steps: int, p: Tensor) -> Tensor:
    """Closed form: alphabar_t = (1 - t/T) H(x_0) / I_u(t); see the module docstring."""
    m, k = transition.mask_index, transition.num_classes
    if float(p[m]) > 0:
        raise ValueError("data_marginal must put zero mass on the mask for MaskUniform")
    u = transition.uniform_betas.cpu()
    if u.shape[0] != num_steps:
        raise ValueError(f"MaskUniform has {u.shape[0]} uniform_betas but T = {num_steps}")
    real = [j for j in range(k) if j != m]
    keep_u = torch.cumprod(1.0 - u, 0)
    h0, p_real = _entropy(p), p[real]
    alphabar = torch.empty(num_steps, dtype=F64)
    for t in range(1, num_steps + 1):
        target = (1.0 - t / num_steps) * h0
        info_u = mutual_information_of(_uniform_matrix(k - 1, float(keep_u[t - 1])), p_real)
        if target > info_u * (1 + 1e-12):
            raise ValueError(f"the uniform part alone removes more information than the "
                             f"target at t = {t}; lower uniform_betas")
        alphabar[t - 1] = 0.0 if target == 0 else min(target / info_u, 1.0)
    previous = torch.cat([alphabar.new_ones(1), alphabar[:-1]])
    if bool((alphabar > previous).any()):
        raise ValueError("the mutual-information mask schedule would need a negative beta: "
                         "the uniform part removes information too fast early on")
    ratio = torch.where(previous > 0, alphabar / previous.clamp(min=1e-300), 0.0)
    return (1.0 - ratio).clamp(0.0, 1.0)
