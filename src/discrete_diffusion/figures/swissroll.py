"""The swiss-roll figure (the paper's Figure 1): forward samples x_t ~ q(x_t | x_0), the
cumulative matrices Qbar_t, and samples along a learned reverse process, per forward process.

Points are quantized 2-D points, LongTensor [N, 2] with ids in 0..bins-1; the absorbing state
(id `bins` of a model with K = bins + 1) is drawn in a grey band beyond the grid, labelled "M".
Everything here draws with matplotlib's Agg backend into fixed-size PNGs (no tight bounding
box), so a figure's pixel size depends only on its layout.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from discrete_diffusion.extras import require

DPI = 100
PANEL_INCHES = 2.0
LABEL_INCHES = 1.5  # left margin for the row labels
HEADER_INCHES = 0.8  # room for the title above the first block
JITTER = 0.38  # spread of a dot inside its cell, so overlapping points show as density
FORWARD_COLOR = "#1f5fa8"
REVERSE_COLOR = "#c2571a"
MASK_COLOR = "#d0d0d0"
MASK_DOT = "#4d4d4d"
MASK_GAP = 1.5  # the mask id is drawn 1.5 cells beyond the last bin
MATRIX_GAMMA = 0.35  # power-law colour scale: small transition probabilities stay visible


@dataclass
class ProcessPanels:
    """What the figure shows for one forward process.

    Attributes:
        name: title of the block, e.g. "uniform".
        forward: x_t [N, 2] for each time of the figure, t ascending.
        matrices: Qbar_t float [K, K] for the same times.
        reverse: x_t [N, 2] of the learned reverse process at the same times, or None.
        note: a line under the name (e.g. the bound before and after training).
        mask: whether the process has the mask state (draw its band in every scatter).
    """

    name: str
    forward: Sequence[Tensor]
    matrices: Sequence[Tensor]
    reverse: Sequence[Tensor] | None = None
    note: str = ""
    mask: bool = False


def _pyplot():
    require("matplotlib", "images", "the swiss-roll figure").use("Agg")
    return require("matplotlib.pyplot", "images", "the swiss-roll figure")


def draw_points(ax, x: Tensor, bins: int, color: str, seed: int = 0,
                mask_band: bool = False) -> None:
    """Scatter the points `x` [N, 2] on the bins x bins grid of `ax`; a coordinate equal to the
    mask id `bins` is drawn in a band beyond the grid (always shown when `mask_band`), and the
    fraction of masked coordinates is written in the corner."""
    points = x.detach().cpu().numpy().astype(np.float64)
    masked_coord = points >= bins
    points[masked_coord] = bins + MASK_GAP
    points += np.random.default_rng(seed).uniform(-JITTER, JITTER, points.shape)
    masked = masked_coord.any(axis=1)
    ax.scatter(points[~masked, 0], points[~masked, 1], s=2.0, c=color, alpha=0.5, lw=0)
    if masked.any():
        ax.scatter(points[masked, 0], points[masked, 1], s=2.0, c=MASK_DOT, alpha=0.5, lw=0)
        ax.text(0.03, 0.97, f"masked: {masked_coord.mean():.0%}", transform=ax.transAxes,
                fontsize=7, va="top", ha="left", color=MASK_DOT)
    grid_axes(ax, bins, mask=mask_band or bool(masked.any()))


def grid_axes(ax, bins: int, mask: bool = False) -> None:
    """The same limits on every scatter: the grid, a gap, then room for the mask band."""
    if mask:
        ax.axvspan(bins + MASK_GAP - 0.5, bins + MASK_GAP + 0.5, color=MASK_COLOR, lw=0)
        ax.axhspan(bins + MASK_GAP - 0.5, bins + MASK_GAP + 0.5, color=MASK_COLOR, lw=0)
    ax.set_xlim(-1.0, bins + MASK_GAP + 0.7)
    ax.set_ylim(-1.0, bins + MASK_GAP + 0.7)
    ax.set_aspect("equal")
    ticks, labels = [0, bins // 2, bins + MASK_GAP], ["0", str(bins // 2), "M"]
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.tick_params(length=2, pad=1)


def draw_matrix(ax, matrix: Tensor):
    """Show a row-stochastic matrix [K, K] (row i = x_{t-1} or x_0, column j = x_t)."""
    PowerNorm = require("matplotlib.colors", "images", "the swiss-roll figure").PowerNorm
    image = ax.imshow(matrix.detach().cpu().double().numpy(), cmap="magma", interpolation="nearest",
                      norm=PowerNorm(MATRIX_GAMMA, vmin=0.0, vmax=1.0))
    k = matrix.shape[0]
    ax.set_xticks([0, k - 1], ["0", str(k - 1)], fontsize=7)
    ax.set_yticks([0, k - 1], ["0", str(k - 1)], fontsize=7)
    ax.tick_params(length=2, pad=1)
    return image


def _row_label(ax, text: str) -> None:
    ax.set_ylabel(text, fontsize=9, rotation=0, ha="right", va="center", labelpad=12)


def _draw_block(subfig, panels: ProcessPanels, times: Sequence[int], bins: int):
    rows = 3 if panels.reverse is not None else 2
    axes = subfig.subplots(rows, len(times), squeeze=False)
    title = panels.name + (f"\n{panels.note}" if panels.note else "")
    subfig.suptitle(title, fontsize=11, fontweight="bold", y=0.995)
    image = None
    for col, t in enumerate(times):
        axes[0, col].set_title(f"t = {t}", fontsize=9)
        draw_points(axes[0, col], panels.forward[col], bins, FORWARD_COLOR, seed=col,
                    mask_band=panels.mask)
        image = draw_matrix(axes[1, col], panels.matrices[col])
        if panels.reverse is not None:
            draw_points(axes[2, col], panels.reverse[col], bins, REVERSE_COLOR, seed=col,
                        mask_band=panels.mask)
    _row_label(axes[0, 0], "forward\n$x_t \\sim q(x_t|x_0)$")
    _row_label(axes[1, 0], "$\\bar Q_t$\n(row $x_0$,\ncolumn $x_t$)")
    if panels.reverse is not None:
        _row_label(axes[2, 0], "learned reverse\n$x_t \\sim p_\\theta$\n(read right\nto left)")
    return image


def figure_size(num_blocks: int, num_rows: int, num_times: int) -> tuple[int, int]:
    """Pixel size (width, height) of `forward_reverse_figure` for this layout."""
    width = LABEL_INCHES + PANEL_INCHES * num_times + 0.9
    height = HEADER_INCHES + num_blocks * (PANEL_INCHES * num_rows + 0.6)
    return round(width * DPI), round(height * DPI)


def forward_reverse_figure(blocks: Sequence[ProcessPanels], times: Sequence[int], bins: int,
                           out: str | os.PathLike, title: str = "") -> tuple[int, int]:
    """Write the Figure-1 PNG: per process, rows of x_t, Qbar_t and reverse samples over `times`.

    Returns:
        (width, height) of the PNG in pixels.
    """
    plt = _pyplot()
    rows = max(3 if b.reverse is not None else 2 for b in blocks)
    size = figure_size(len(blocks), rows, len(times))
    fig = plt.figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI)
    fig.suptitle(title, fontsize=13, y=1.0 - 0.2 * DPI / size[1], va="top")
    # Subfigures ignore a gridspec's margins, so the header is a row of its own.
    block_inches = (size[1] / DPI - HEADER_INCHES) / len(blocks)
    outer = fig.add_gridspec(len(blocks) + 1, 1, hspace=0.0, top=1.0, bottom=0.0,
                             height_ratios=[HEADER_INCHES] + [block_inches] * len(blocks))
    image = None
    for i, panels in enumerate(blocks):
        subfig = fig.add_subfigure(outer[i + 1])
        subfig.subplots_adjust(left=LABEL_INCHES / (size[0] / DPI), right=0.92, top=0.87,
                               bottom=0.04, wspace=0.25, hspace=0.3)
        image = _draw_block(subfig, panels, times, bins)
    if image is not None:
        bar = fig.add_axes((0.945, 0.3, 0.012, 0.4))
        fig.colorbar(image, cax=bar).set_label("probability (power scale)", fontsize=8)
        bar.tick_params(labelsize=7)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return size


def save_points(x: Tensor, bins: int, out: str | os.PathLike, title: str = "") -> None:
    """A single scatter PNG of the points `x` [N, 2] (the "points" codec's render)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4), dpi=DPI)
    draw_points(ax, x, bins, FORWARD_COLOR)
    ax.set_title(title or f"{len(x)} points", fontsize=10)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)


def save_strip(trajectory: Sequence[tuple[int, Tensor]], bins: int,
               out: str | os.PathLike) -> None:
    """A row of scatters [(t, x_t [N, 2]), ...] in the given order (a progressive strip)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(trajectory), squeeze=False,
                             figsize=(PANEL_INCHES * len(trajectory), PANEL_INCHES + 0.4), dpi=DPI)
    for ax, (t, x_t) in zip(axes[0], trajectory):
        draw_points(ax, x_t, bins, REVERSE_COLOR)
        ax.set_title(f"t = {t}", fontsize=9)
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
