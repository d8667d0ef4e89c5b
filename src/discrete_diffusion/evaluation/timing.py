"""Sampling time per example at batch size 1."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from discrete_diffusion.methods.base import Method


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_sampling(method: Method, model: nn.Module, runs: int, steps: int | None = None,
                  generator: torch.Generator | None = None) -> tuple[float, float]:
    """Seconds to draw one example: one warm-up run, then the mean and sample std over `runs`
    timed runs (time.perf_counter, CUDA synchronised before reading the clock)."""
    if runs < 1:
        raise ValueError(f"timing needs at least one run, got {runs}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    method.sample(model, 1, steps=steps, generator=generator)  # warm-up (allocations, kernels)
    times = []
    for _ in range(runs):
        _sync(device)
        start = time.perf_counter()
        method.sample(model, 1, steps=steps, generator=generator)
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.fmean(times), statistics.stdev(times) if runs > 1 else 0.0
