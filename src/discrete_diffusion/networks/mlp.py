"""Model kind "mlp": a small denoiser f(x_t, t) -> logits of p~(x_0 | x_t) for any example shape.

Each position's token gets an embedding; the embeddings of all positions are concatenated
(so the MLP sees the whole example), projected to `hidden`, a sinusoidal embedding of t is added,
and residual blocks (LayerNorm -> Linear -> SiLU -> Linear) lead to logits [B, ..., K]. Meant for
tiny problems: the swiss roll, tests and smoke runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from discrete_diffusion.data.base import DataInfo


@dataclass
class Config:
    """Sizes of the MLP denoiser."""

    hidden: int = 256
    layers: int = 3
    embed_dim: int = 32


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding float32 [B, dim] of integer times t [B]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return nn.functional.pad(emb, (0, dim - 2 * half))


class Block(nn.Module):
    """h + MLP(LayerNorm(h))."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden))

    def forward(self, h: Tensor) -> Tensor:
        return h + self.net(h)


class MLPDenoiser(nn.Module):
    """Logits [B, *example_shape, K] of p~(x_0 | x_t) from x_t [B, *example_shape] and t [B]."""

    def __init__(self, example_shape: tuple[int, ...], num_classes: int, hidden: int = 256,
                 layers: int = 3, embed_dim: int = 32) -> None:
        super().__init__()
        if min(hidden, layers, embed_dim) < 1:
            raise ValueError(f"mlp sizes must be positive: hidden={hidden}, layers={layers}, "
                             f"embed_dim={embed_dim}")
        self.example_shape, self.num_classes = tuple(example_shape), num_classes
        positions = math.prod(self.example_shape)
        self.embed = nn.Embedding(num_classes, embed_dim)
        self.proj_in = nn.Linear(positions * embed_dim, hidden)
        self.time = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.Sequential(*[Block(hidden) for _ in range(layers)])
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, positions * num_classes))
        self.hidden = hidden

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        batch = x_t.shape[0]
        h = self.proj_in(self.embed(x_t).reshape(batch, -1))
        h = h + self.time(timestep_embedding(t, self.hidden))
        logits = self.out(self.blocks(h))
        return logits.reshape(batch, *self.example_shape, self.num_classes)


def build(cfg: Config, info: DataInfo, num_classes: int, num_steps: int) -> MLPDenoiser:
    """The MLP for examples of `info.example_shape` over `num_classes` (mask included)."""
    del num_steps  # sinusoidal times need no table
    return MLPDenoiser(info.example_shape, num_classes, cfg.hidden, cfg.layers, cfg.embed_dim)
