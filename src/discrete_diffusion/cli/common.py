"""Helpers shared by the `d3pm` sub-commands."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported on use: `d3pm --help` must stay instant
    import torch


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    """`--no-progress`: no bar on a terminal, no progress lines in a log (see `progress`)."""
    parser.add_argument("--no-progress", action="store_true",
                        help="show no progress (a bar on a terminal, else a line every 30 s "
                             "or 10%%, whichever is rarer)")


def device_of(name: str) -> torch.device:
    """The device for `--device auto|cpu|cuda` in a single (non-distributed) process."""
    from discrete_diffusion.training.distributed import DistEnv, pick_device

    return pick_device(name, DistEnv())
