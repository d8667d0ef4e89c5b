"""The progressive-sampling strip of the paper's Figure 3: x_t at t = T, 0.9T, ..., 0.

One row per sample, one column per chosen time; absorbing-state pixels are drawn as the grey
they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from discrete_diffusion.figures.grid import auto_scale, save_png, tile, to_uint8


def pick_times(times: list[int], num_columns: int = 11) -> list[int]:
    """Indices into `times` (descending t, ending at 0) closest to T, 0.9T, ..., 0."""
    t_max = max(times)
    wanted = [round(t_max * (1 - i / (num_columns - 1))) for i in range(num_columns)]
    chosen: list[int] = []
    for w in wanted:
        best = min(range(len(times)), key=lambda i: abs(times[i] - w))
        if best not in chosen:
            chosen.append(best)
    return chosen


def save_progressive(
    trajectory: list[tuple[int, Tensor | np.ndarray]],
    num_classes: int,
    out: str | Path,
    num_columns: int = 11,
    max_rows: int = 8,
) -> Path:
    """trajectory [(t, x_t [N, C, H, W]), ...] from t = T down to 0 -> PNG strip at `out`.

    Rows are samples (at most `max_rows`), columns the states nearest t = T, 0.9T, ..., 0.
    """
    if not trajectory:
        raise ValueError("progressive figure needs a non-empty trajectory [(t, x_t), ...]")
    times = [int(t) for t, _ in trajectory]
    columns = pick_times(times, num_columns)
    states = [np.asarray(trajectory[i][1])[:max_rows] for i in columns]
    if states[0].ndim != 4:
        raise ValueError(f"progressive figure needs x_t [N, C, H, W], got {states[0].shape}")
    stacked = np.stack(states, axis=1)  # [N, columns, C, H, W]
    n, k = stacked.shape[:2]
    frames = to_uint8(stacked.reshape(n * k, *stacked.shape[2:]), num_classes)
    return save_png(tile(frames, k), out, auto_scale(stacked.shape[-2]))
