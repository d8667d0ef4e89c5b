"""The forward corruption q(x_t | x_0) of each process drawn on real images.

One block of rows per process (uniform with the cosine schedule, absorbing with 1/(T - t + 1)
into the grey mask value, discretized Gaussian with the paper's linear 1e-4 -> 0.02 at T = 1000,
both ends scaled by 1000/T for other T so the betas sum to the same total), one column per
t = 0, T/10, ..., T. Absorbed pixels are drawn as the grey they are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from discrete_diffusion.extras import require

PROCESSES = ("uniform", "absorbing", "gauss")


def build_process(name: str, num_classes: int, num_steps: int):
    """The D3PM of a named image process with the paper's schedule for it."""
    import discrete_diffusion as dd

    if name == "uniform":
        return dd.D3PM(dd.transitions.Uniform(num_classes=num_classes),
                       dd.schedules.cosine(num_steps))
    if name == "absorbing":
        return dd.D3PM(dd.transitions.Absorbing(num_classes=num_classes,
                                                mask_index=num_classes // 2),
                       dd.schedules.jsd(num_steps))
    if name == "gauss":
        scale = 1000.0 / num_steps
        return dd.D3PM(dd.transitions.DiscretizedGaussian(num_classes=num_classes),
                       dd.schedules.linear(num_steps, min(1e-4 * scale, 1.0),
                                           min(0.02 * scale, 1.0)))
    raise ValueError(f"unknown process {name!r} (choose from {', '.join(PROCESSES)})")


def corruption_rows(
    x_0: Tensor, process, num_columns: int = 11, seed: int = 0
) -> tuple[list[int], np.ndarray]:
    """x_t ~ q(x_t | x_0) (eq. 3) at t = 0, T/(columns-1), ..., T.

    Args:
        x_0: LongTensor [N, C, H, W].
    Returns:
        the times, and int64 [N, columns, C, H, W].
    """
    gen = torch.Generator().manual_seed(seed)
    t_max = process.num_steps
    times = [round(t_max * i / (num_columns - 1)) for i in range(num_columns)]
    frames = [x_0 if t == 0 else process.q_sample(x_0, t, generator=gen) for t in times]
    return times, torch.stack(frames, dim=1).numpy()


def save_corruption(
    x_0: Tensor,
    num_classes: int,
    out: str | Path,
    processes: tuple[str, ...] = PROCESSES,
    num_steps: int = 1000,
    seed: int = 0,
) -> Path:
    """Write the corruption figure of `x_0` [N, C, H, W] (ints 0..K-1) for each process."""
    from discrete_diffusion.figures.grid import auto_scale, save_png, tile, to_uint8

    blocks, times = [], []
    for name in processes:
        times, frames = corruption_rows(x_0, build_process(name, num_classes, num_steps),
                                        seed=seed)
        n, k = frames.shape[:2]
        blocks.append(tile(to_uint8(frames.reshape(n * k, *frames.shape[2:]), num_classes), k))
    canvas = np.concatenate(blocks, axis=1)
    scale = auto_scale(x_0.shape[-2])
    save_png(canvas, out, scale)
    _label(Path(out), processes, [b.shape[1] * scale for b in blocks], times)
    return Path(out)


def _label(path: Path, processes: tuple[str, ...], heights: list[int], times: list[int]) -> None:
    """Add a left margin naming each block's process and a top line listing the times."""
    Image = require("PIL.Image", "images", "the corruption figure")
    ImageDraw = require("PIL.ImageDraw", "images", "the corruption figure")
    image = Image.open(path)
    image.load()
    mode = image.mode
    margin, top = 80, 14
    labelled = Image.new(mode, (image.width + margin, image.height + top), 255 if mode == "L"
                         else (255, 255, 255))
    labelled.paste(image, (margin, top))
    draw = ImageDraw.Draw(labelled)
    ink = 0 if mode == "L" else (0, 0, 0)
    draw.text((margin, 1), "t = " + ", ".join(map(str, times)), fill=ink)
    y = top
    for name, h in zip(processes, heights):
        draw.text((4, y + h // 2 - 5), name, fill=ink)
        y += h
    labelled.save(path, format="PNG")
