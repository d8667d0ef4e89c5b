"""Sampling a D3PM: one loop down a time grid, and the per-step rules it can use.

`D3PM.sample` is the entry point; it checks its inputs, draws x_T ~ p(x_T) (or takes a given
state x_t) and calls `run_chain`, which walks the grid t_S > ... > t_0, holding fixed
positions, recording the trajectory and reporting progress. What happens at one step is a
step rule:

    step(process, denoiser, x_t, s, t, generator, argmax=False) -> x_s

with x_t a LongTensor [B, ...], s < t LongTensors [B] of times, and x_s shaped like x_t.
`STEP_RULES` names the rules `D3PM.sample(sampler=...)` accepts; a new sampler is one function
and one entry there. A sampler is named by a string, "NAME" or "NAME:key=value,..." for its
options (`SAMPLER_OPTIONS`: "remdm:eta=0.05"), so one string carries it through the
`Method`, the CLI and the records:

    ancestral      x_s ~ p(x_s | x_t), eq. (4): exact; every transition; one pass per step.
    first_hitting  exact (the same law); absorbing; passes only for sequences that unmask.
    remdm          ReMDM remasking (option eta, default 0.02); absorbing; keeps the forward
                   marginals, eta = 0 is exact.
    tau_leaping    approximation (reverse rates at t held over the step); uniform, absorbing.
    confidence     MaskGIT-style top-k unmasking; not exact; absorbing.

The rules other than ancestral are in `sampling_rules`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

from discrete_diffusion import sampling_rules as rules
from discrete_diffusion.categorical import gumbel_max, log_normalise
from discrete_diffusion.checks import check_shape, check_states, is_int

if TYPE_CHECKING:
    from discrete_diffusion.process import D3PM, Denoiser, Progress


class StepRule(Protocol):
    """One step of a sampler: x_s given x_t, for times s < t (LongTensors [B])."""

    def __call__(self, process: D3PM, denoiser: Denoiser, x_t: Tensor, s: Tensor, t: Tensor,
                 generator: torch.Generator | None, argmax: bool = False) -> Tensor: ...


def ancestral_step(
    process: D3PM,
    denoiser: Denoiser,
    x_t: Tensor,
    s: Tensor,
    t: Tensor,
    generator: torch.Generator | None = None,
    argmax: bool = False,
) -> Tensor:
    """x_s ~ p(x_s | x_t), eq. (4) (x0-parameterisation), by Gumbel-max with float64 noise;
    the most likely x_s instead with `argmax=True`. One denoiser call.

    Args:
        x_t: LongTensor [B, ...]; s, t: LongTensors [B] with 0 <= s < t <= T.
    Returns:
        LongTensor [B, ...].
    """
    log_x0 = log_normalise(process.denoise(denoiser, x_t, t))
    log_p = process.log_p_posterior(log_x0, x_t, s, t)
    return log_p.argmax(-1) if argmax else gumbel_max(log_p, generator)


STEP_RULES: dict[str, StepRule] = {
    "ancestral": ancestral_step,
    "first_hitting": rules.first_hitting_step,
    "remdm": rules.remdm_step,
    "tau_leaping": rules.tau_leaping_step,
    "confidence": rules.confidence_step,
}
# sampler -> its options and their defaults; given as "NAME:key=value,..."
SAMPLER_OPTIONS: dict[str, dict[str, float]] = {"remdm": {"eta": rules.REMDM_ETA}}


def step_rule(name: str) -> StepRule:
    """The step rule of sampler `name`: "NAME" (a key of `STEP_RULES`) or
    "NAME:key=value,..." with numeric options of that rule (`SAMPLER_OPTIONS`)."""
    base, _, rest = name.partition(":") if isinstance(name, str) else (name, "", "")
    if base not in STEP_RULES:
        raise ValueError(f"sampler must be one of {sorted(STEP_RULES)}, got {name!r}")
    if not rest:
        return STEP_RULES[base]
    known, options = SAMPLER_OPTIONS.get(base, {}), {}
    for item in rest.split(","):
        key, _, value = item.partition("=")
        if key not in known:
            raise ValueError(f"sampler {base} takes options {sorted(known)}, got {item!r}"
                             if known else f"sampler {base} takes no options, got {item!r}")
        try:
            options[key] = float(value)
        except ValueError:
            raise ValueError(f"sampler option {base}:{key} must be a number, got {value!r}") \
                from None
    return functools.partial(STEP_RULES[base], **options)


def prior_sample(
    process: D3PM,
    shape: tuple[int, ...],
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """x_T ~ p(x_T), the transition's stationary distribution, LongTensor [*shape]."""
    log_pi = process.transition.stationary().to(device).log()
    return gumbel_max(log_pi.expand(*shape, -1), generator)


def check_start(
    process: D3PM,
    start: tuple[int, Tensor],
    shape: tuple[int, ...] | torch.Size | None,
    device: torch.device,
) -> tuple[int, Tensor]:
    """(t, x_t) with t an int in 0..T and x_t a LongTensor of states shaped `shape` (if
    given), on `device`."""
    if not isinstance(start, (tuple, list)) or len(start) != 2:
        raise ValueError("start must be a pair (t, x_t)")
    t, x_t = start
    if isinstance(t, Tensor) and t.dim() == 0 and not t.is_floating_point() \
            and t.dtype != torch.bool:
        t = int(t)
    if not is_int(t) or not 0 <= t <= process.num_steps:
        raise ValueError(f"start step must be an int in 0..{process.num_steps}, got {t!r}")
    x_t = check_states(x_t, "start x_t", process.num_classes)
    if shape is not None and check_shape(shape) != tuple(x_t.shape):
        raise ValueError(f"start x_t has shape {tuple(x_t.shape)}, expected {tuple(shape)}")
    return t, x_t.to(device)


def sample_device(
    device: torch.device | str | None,
    start: tuple[int, Tensor] | None,
    fixed: tuple[Tensor, Tensor] | None,
    generator: torch.Generator | None,
) -> torch.device:
    """`device` if given, else that of the start state, of `fixed`, of `generator`, or CPU."""
    if device is not None:
        return torch.device(device)
    for pair, i in ((start, 1), (fixed, 0)):  # x_t of start, the mask of fixed
        if isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[i], Tensor):
            return pair[i].device
    if generator is not None:
        return generator.device
    return torch.device("cpu")


def run_chain(
    process: D3PM,
    denoiser: Denoiser,
    x: Tensor,
    grid: Sequence[int],
    step: StepRule = ancestral_step,
    generator: torch.Generator | None = None,
    fixed: tuple[Tensor, Tensor] | None = None,
    argmax_last: bool = False,
    progress: Progress | None = None,
    return_trajectory: bool = False,
) -> Tensor | tuple[Tensor, list[tuple[int, Tensor]]]:
    """Walk x from time grid[-1] down the grid: x_{t_{i-1}} = step(x_{t_i}) for i = S..1.

    Args:
        x: LongTensor [B, ...], the state at time grid[-1].
        grid: increasing times t_0 < ... < t_S in 0..T (S = 0: no step).
        step: the step rule (see the module docstring).
        fixed: optional (bool mask, LongTensor values), both shaped like x and on its device:
            held positions take `values` in x before the first step and after every step, so
            the denoiser sees them.
        argmax_last: the step to s = 0 takes the most likely state instead of a draw.
        progress: optional callable(done, total) after each step.
    Returns:
        the state at grid[0], LongTensor [B, ...], or (it, [(t, x_t)] for every grid time,
        grid[-1] first).
    """
    if not all(is_int(g) for g in grid) or len(grid) < 1 or grid[0] < 0 \
            or grid[-1] > process.num_steps or any(a >= b for a, b in zip(grid, grid[1:])):
        raise ValueError(f"grid must be increasing ints in 0..{process.num_steps}, got {grid!r}")
    x = _hold(x, fixed)
    trajectory = [(grid[-1], x)]
    pairs = list(zip(grid[:-1], grid[1:]))[::-1]
    for done, (s_int, t_int) in enumerate(pairs, start=1):
        s, t = (torch.full((x.shape[0],), v, dtype=torch.long, device=x.device)
                for v in (s_int, t_int))
        x = _hold(step(process, denoiser, x, s, t, generator, argmax_last and s_int == 0), fixed)
        trajectory.append((s_int, x))
        if progress is not None:
            progress(done, len(pairs))
    return (x, trajectory) if return_trajectory else x


def _hold(x: Tensor, fixed: tuple[Tensor, Tensor] | None) -> Tensor:
    return x if fixed is None else torch.where(fixed[0], fixed[1], x)
