"""Helpers shared by the `d3pm` sub-commands."""

from __future__ import annotations

import torch


def device_of(name: str) -> torch.device:
    """The device for `--device auto|cpu|cuda` in a single (non-distributed) process."""
    from discrete_diffusion.training.distributed import DistEnv, pick_device

    return pick_device(name, DistEnv())
