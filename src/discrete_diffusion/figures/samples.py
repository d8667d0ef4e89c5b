"""Samples as people see them: PNG pictures for image and point codecs, text for the others.

Codecs only decode ids (`ImageCodec.pixels`, `PointCodec.points`, text codecs' `render`); the
drawing happens here, so data/ never imports figures/ (and figures/ never imports data/: the
codec is read through the protocols below). `d3pm sample` and the trainer's sample files both
come through `write_samples` / `write_trajectory`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol, cast

import numpy as np
from torch import Tensor

PICTURE_KINDS = ("image", "points")  # codec kinds drawn as PNG files


class Codec(Protocol):
    """What this module reads of any codec (`data.base.Codec` fits)."""

    kind: str

    def render(self, x: Tensor, out: str | os.PathLike | None = None) -> str: ...

    def render_progressive(self, trajectory: Sequence[tuple[int, Tensor]],
                           out: str | os.PathLike | None = None) -> str: ...


class ImageCodec(Codec, Protocol):
    """A codec of kind "image": K levels per channel, samples [N, C, H, W]."""

    num_classes: int

    def pixels(self, x: Tensor) -> np.ndarray: ...


class PointCodec(Codec, Protocol):
    """A codec of kind "points": quantized 2-D points [N, 2] on a bins x bins grid."""

    bins: int

    def points(self, x: Tensor) -> Tensor: ...


def is_picture(codec: Codec) -> bool:
    """Whether samples of `codec` are written as a PNG (else as text)."""
    return codec.kind in PICTURE_KINDS


def write_samples(codec: Codec, x: Tensor, out: str | os.PathLike | None = None) -> str | None:
    """Write samples `x` [N, *example_shape]: a PNG grid of images, a PNG scatter of points, or
    the text of a text codec (to `out` when given).

    Returns:
        the text to print: the samples' text, a summary for points, None for images.
    """
    if codec.kind == "image":
        from discrete_diffusion.figures.grid import save_grid

        image, out = cast(ImageCodec, codec), _required(out)
        save_grid(image.pixels(x), image.num_classes, out)
        return None
    if codec.kind == "points":
        summary = codec.render(x)
        if out is not None:
            from discrete_diffusion.figures.swissroll import save_points

            points = cast(PointCodec, codec)
            save_points(points.points(x), points.bins, out)
        return summary
    return codec.render(x, out=out)


def write_trajectory(codec: Codec, trajectory: Sequence[tuple[int, Tensor]],
                     out: str | os.PathLike | None = None) -> str | None:
    """Write [(t, x_t [N, *example_shape]), ...] (t = T down to 0): the Figure 3 strip for
    images, a row of scatters for points, one text block per t for text codecs.

    Returns:
        the text to print (None for images).
    """
    if codec.kind == "image":
        from discrete_diffusion.figures.progressive import save_progressive

        image, out = cast(ImageCodec, codec), _required(out)
        states = [(int(t), image.pixels(x_t)) for t, x_t in trajectory]
        save_progressive(states, image.num_classes, out)
        return None
    if codec.kind == "points":
        if out is not None:
            from discrete_diffusion.figures.swissroll import save_strip

            points = cast(PointCodec, codec)
            save_strip([(t, points.points(x_t)) for t, x_t in trajectory], points.bins, out)
        return " -> ".join(f"t = {t}" for t, _ in trajectory)
    return codec.render_progressive(trajectory, out=out)


def _required(out: str | os.PathLike | None) -> str | os.PathLike:
    if out is None:
        raise ValueError("rendering images needs an output path (--out FILE.png)")
    return out
