"""Metrics: one JSON line per log step in RUN_DIR/metrics.jsonl, mirrored to TensorBoard
(RUN_DIR/tensorboard) when tensorboard is installed (extra `train`); and the per-quartile
statistics. The lines are strict JSON: a NaN or infinite value is written as null."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

NUM_QUARTILES = 4


class MetricsLog:
    """Appends metric records; a no-op when `enabled` is False (ranks other than 0)."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.path = run_dir / "metrics.jsonl"
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:  # TensorBoard is optional: the JSON lines hold everything
            self.writer = None

    def log(self, step: int, values: dict[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        record = {"step": step, **{f"{prefix}/{k}": finite_or_none(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record, allow_nan=False) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def finite_or_none(value):
    """`value`, with a NaN or infinite float replaced by None (JSON null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunningStats:
    """Sums of per-example values between two log steps, overall and per quartile of t/T."""

    def __init__(self, num_steps: int) -> None:
        self.num_steps = num_steps
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, values: Tensor, t: Tensor | None = None) -> None:
        """Add per-example `values` [B]; with `t` [B] in 1..T also to `name_q0..q3`."""
        values = values.detach().double().cpu()
        self._add(name, float(values.sum()), values.numel())
        if t is None:
            return
        quartile = quartile_of(t.cpu(), self.num_steps)
        for q in range(NUM_QUARTILES):
            sel = quartile == q
            if sel.any():
                self._add(f"{name}_q{q}", float(values[sel].sum()), int(sel.sum()))

    def _add(self, key: str, total: float, count: int) -> None:
        self.sums[key] = self.sums.get(key, 0.0) + total
        self.counts[key] = self.counts.get(key, 0) + count

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def quartile_of(t: Tensor, num_steps: int) -> Tensor:
    """Quartile 0..3 of t/T for t [B] in 1..T."""
    return ((t - 1) * NUM_QUARTILES // num_steps).clamp(0, NUM_QUARTILES - 1).to(torch.long)
