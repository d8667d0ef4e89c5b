"""Times of a D3PM: the grid the bound and the sampler walk, and the draw of t for the loss.

t runs over 1..T (0 is x_0 itself). Both functions are pure: they take T and return integers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from discrete_diffusion.checks import is_int

TIME_SAMPLING = ("uniform", "stratified")


def timestep_grid(num_steps: int, step_size: int = 1, steps: int | None = None) -> list[int]:
    """A grid of times 0 = t_0 < t_1 < ... < t_S = T for the bound and the sampler.

    Args:
        num_steps: T.
        step_size: k, dividing T: the grid 0, k, 2k, ..., T.
        steps: S in 1..T (instead of step_size): S evenly spaced rounded times,
            t_i = round(i T / S), strictly increasing since T / S >= 1.
    """
    T = num_steps
    if steps is not None:
        if step_size != 1:
            raise ValueError("give either step_size or steps, not both")
        if not is_int(steps) or not 1 <= steps <= T:
            raise ValueError(f"steps must be an integer in 1..{T}, got {steps!r}")
        return [(2 * i * T + steps) // (2 * steps) for i in range(steps + 1)]
    if not is_int(step_size) or step_size < 1 or T % step_size != 0:
        raise ValueError(f"step_size must be a positive integer dividing T = {T}, "
                         f"got {step_size!r}")
    return list(range(0, T + 1, step_size))


def draw_times(
    num_steps: int,
    batch: int,
    device: torch.device,
    generator: torch.Generator | None = None,
    how: str = "uniform",
) -> Tensor:
    """t for each example of a training batch, LongTensor [batch] in 1..T.

    Args:
        num_steps: T.
        how: "uniform" (t ~ U{1..T} independently) or "stratified" (one low-discrepancy draw
            across the batch: a random shift of the evenly spaced grid, randomly assigned).
    """
    T = num_steps
    if how == "uniform":
        return torch.randint(1, T + 1, (batch,), device=device, generator=generator)
    if how != "stratified":
        raise ValueError(f"time_sampling must be one of {TIME_SAMPLING}, got {how!r}")
    u = torch.rand((), dtype=torch.float64, device=device, generator=generator)
    grid = (torch.arange(batch, dtype=torch.float64, device=device) + u) / batch
    t = (grid * T).long().clamp(max=T - 1) + 1
    return t[torch.randperm(batch, device=device, generator=generator)]
