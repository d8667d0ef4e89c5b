"""Process-group set-up for `torchrun --nproc_per_node N` (env RANK, WORLD_SIZE, LOCAL_RANK).

Without WORLD_SIZE > 1 everything here is a no-op and the trainer runs in one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: `rank` of `world_size`, `local_rank` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(preference: str, env: DistEnv) -> torch.device:
    """"auto" -> cuda when available, else cpu; cuda processes use cuda:LOCAL_RANK."""
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda", env.local_rank)
    if preference != "cpu":
        raise ValueError(f"unknown device {preference!r}; known: auto, cpu, cuda")
    return torch.device("cpu")


def setup(preference: str) -> tuple[DistEnv, torch.device]:
    """Read the torchrun environment, pick the device and join the process group (gloo on the
    CPU, nccl on CUDA) when WORLD_SIZE > 1."""
    env = DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                  int(os.environ.get("LOCAL_RANK", 0)))
    device = pick_device(preference, env)
    if env.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                rank=env.rank, world_size=env.world_size)
    return env, device


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def gather(env: DistEnv, obj: Any) -> list[Any]:
    """Every rank's `obj` (JSON-able), in rank order, on every rank."""
    if not env.enabled:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def max_over_ranks(env: DistEnv, value: int, device: torch.device) -> int:
    """The largest `value` of all ranks, on every rank (an all-reduce of one number)."""
    if not env.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def cleanup(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
