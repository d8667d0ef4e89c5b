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

Any other transition whose one-step matrix is a function of beta, Q(beta) (it defines
`step_matrix(beta)`: DiscretizedGaussian), is solved step by step (`stepwise_betas`): given
Qbar_{t-1}, beta_t is the root of I(x_t; x_0) = (1 - t/T) H(x_0) with Qbar_t = Qbar_{t-1}
Q(beta_t), found by Brent's method on log beta in float64 from a bracket around beta_{t-1}.
Each evaluation is one K x K product and about six are needed per step: at K = 256, T = 1000
the schedule took 150 s on one thread of a loaded two-core machine (`refine=False`, a
tolerance of 1e-6 in beta, saves little: 149 s). The products use torch's threads, so more
cores shorten it; the betas depend only on (K, bands, T, p(x_0)), so compute them once and
keep them (e.g. `torch.save`) rather than per run.
A family that cannot mix in one step (the Gaussian's widest step keeps about half of each row
in place) cannot remove the last 1/T of the information in the last step: beta_T is then the
largest beta of the search, and I(x_T; x_0) is what that step leaves (0.25 H(x_0)/T for the
full-width Gaussian at K = 256, T = 1000), which the prior term L_T of the bound counts.
A narrow band mixes slowly and may fall short earlier: every step from the first that misses
its target takes the largest beta, with a warning.

MaskUniform has two schedules: its uniform part is fixed by `uniform_betas`, and since the mask
erases a token independently of everything else, I(x_t; x_0) = alphabar_t I_u(t) with I_u(t)
the information left by the uniform part alone; the mask schedule is then alphabar_t =
target_t / I_u(t), in closed form.
"""

from __future__ import annotations

import math
import warnings
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

__all__ = [
    "STEP_BETA_RANGE",
    "NoisePath",
    "mutual_information",
    "mutual_information_of",
    "noise_path",
    "stepwise_betas",
]

F64 = torch.float64
# The betas `stepwise_betas` searches by default: from no noise at all (Q(1e-12) is the
# identity to double precision for the Gaussian up to K ~ 10^4) to the widest step (Q(1e6)
# is within 4e-6 of the Gaussian's beta -> inf limit).
STEP_BETA_RANGE = (1e-12, 1e6)


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
    raise ValueError(f"{type(transition).__name__} has no one-parameter family of Qbar "
                     f"(those with one: NearestNeighbor, Dense with a rate, Uniform, "
                     f"Absorbing); the mutual-information schedule also takes MaskUniform and "
                     f"any transition with a one-step matrix step_matrix(beta), e.g. "
                     f"DiscretizedGaussian")


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
        transition: NearestNeighbor, Dense (with a rate), Uniform, Absorbing, MaskUniform,
            or any transition with `step_matrix(beta)` (DiscretizedGaussian), solved step by
            step (`stepwise_betas`). It need not be set up (MaskUniform's uniform_betas must
            have length T).
        num_steps: T >= 1.
        data_marginal: float [K] (or [K - 1] when the mask is the last state, padded with 0).
        num_samples: levels sampled on the geometric grid 1e-4 .. 1e5.
        refine: solve each level to machine precision by root finding (default: K <= 512;
            each evaluation costs a K x K matrix; always for the stepwise solver unless False).
        final_tolerance: the relative information left at t = T for rate processes and the
            stepwise solver.
    Returns:
        float64 [T], beta_1..beta_T (rates for rate processes: they may exceed 1).
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"number of steps T must be a positive integer, got {num_steps!r}")
    p = _check_marginal(transition, data_marginal)
    if isinstance(transition, MaskUniform):
        return _mask_uniform_betas(transition, num_steps, p)
    step_matrix = getattr(transition, "step_matrix", None)
    if callable(step_matrix):
        return stepwise_betas(step_matrix, num_steps, p, final_tolerance=final_tolerance,
                              refine=True if refine is None else refine)
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


def stepwise_betas(
    step_matrix: Callable[[float], Tensor],
    num_steps: int,
    marginal: Tensor,
    *,
    beta_range: tuple[float, float] = STEP_BETA_RANGE,
    final_tolerance: float = 1e-6,
    refine: bool = True,
) -> Tensor:
    """beta_1..beta_T, float64 [T], chosen one at a time so that I(x_t; x_0) = (1 - t/T)
    H(x_0) with Qbar_t = Qbar_{t-1} Q(beta_t) (the last target: final_tolerance H(x_0)).

    Each beta_t is a root in log beta over `beta_range` (Brent, float64), bracketed around
    a prediction from beta_{t-1}; I(x_t; x_0) must fall as beta grows. Where even the largest
    beta cannot reach the target, that step and every later one take it: silently at the
    last step (a family that cannot mix in one step never removes the last 1/T there; see
    the module docstring), with a warning naming the step and the information left at T
    when an earlier step falls short (a narrow band with few steps).

    Args:
        step_matrix: beta -> Q(beta), float64 [K, K], row-stochastic, the identity at the
            low end of `beta_range`.
        num_steps: T >= 1.
        marginal: p(x_0), float64 [K], normalised, H(x_0) > 0.
        beta_range: (low, high), 0 < low < high.
        final_tolerance: the relative information left at t = T.
        refine: solve to a relative tolerance of 1e-12 in beta (else 1e-6).
    """
    low, high = math.log(beta_range[0]), math.log(beta_range[1])
    xtol = 1e-12 if refine else 1e-6
    p = marginal.to("cpu", F64)
    rows = p > 0  # rows of Qbar with p(x_0) = 0 carry no information
    p_rows, h0 = p[rows], _entropy(p)
    qbar = torch.eye(p.numel(), dtype=F64)[rows]
    betas, guess, stride = [], 0.5 * (low + high), None
    saturated, short_from = False, 0  # a step before T missed its target; the first miss
    for t in range(1, num_steps + 1):
        target = (1.0 - t / num_steps) * h0 if t < num_steps else final_tolerance * h0
        seen: dict[float, tuple[float, Tensor]] = {}  # u -> (excess, Qbar_t): Brent
        # re-evaluates its bracket ends, and the root's product is the next Qbar

        def excess(u: float, prev: Tensor = qbar, target: float = target,
                   seen: dict = seen) -> float:
            if u not in seen:
                product = prev @ step_matrix(math.exp(u))
                seen[u] = (mutual_information_of(product, p_rows) - target, product)
            return seen[u][0]

        # log beta_t moves smoothly with t: the previous stride predicts it, and a bracket
        # of a quarter of that stride around the prediction rarely needs widening
        width = 0.5 if stride is None else 0.25 * abs(stride) + 1e-6
        u = None if saturated else _bracketed_root(excess, guess, width, low, high, xtol)
        if u is None:  # out of reach: mix as fast as the family can from here on
            saturated = saturated or t < num_steps
            short_from = short_from or t
            u = high
        excess(u)
        qbar = seen[u][1]
        if betas:
            stride = u - math.log(betas[-1])
        betas.append(math.exp(u))
        guess = u if stride is None else u + stride
    if saturated:
        left = mutual_information_of(qbar, p_rows)
        warnings.warn(f"mutual-information schedule: from step {short_from} of {num_steps} "
                      f"on, even the largest beta ({beta_range[1]:g}) cannot follow the "
                      f"linear target; those steps take it, leaving I(x_T; x_0) = {left:.3g} "
                      f"nats ({left / h0:.2g} of H(x_0)); more steps or wider bands follow "
                      f"it further", stacklevel=3)
    return torch.tensor(betas, dtype=F64)


def _bracketed_root(
    f: Callable[[float], float], guess: float, width: float, low: float, high: float,
    xtol: float,
) -> float | None:
    """A root of a decreasing f in [low, high] by Brent's method, bracketed by steps from
    guess +- width that double until f changes sign; None when f(high) > 0 (no root: the
    target is out of reach)."""
    a, b = max(low, guess - width), min(high, guess + width)
    fa, fb = f(a), f(b)
    while fa < 0 and a > low:  # already past the target at a: move down
        b, fb = a, fa
        width *= 2
        a = max(low, a - width)
        fa = f(a)
    while fb > 0 and b < high:  # not yet at the target at b: move up
        a, fa = b, fb
        width *= 2
        b = min(high, b + width)
        fb = f(b)
    if fb > 0:
        return None
    if fa <= 0:  # the target is met with (next to) no noise
        return a
    return scipy.optimize.brentq(f, a, b, xtol=xtol, rtol=4 * np.finfo(float).eps)


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
