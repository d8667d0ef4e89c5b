"""The DDPM-style UNet of the paper's image experiments (model kind "unet").

Denoiser p~(x_0 | x_t): x_t LongTensor [B, C, H, W] with values 0..K-1 and t LongTensor [B] in
1..T -> logits [B, C, H, W, K]. The CIFAR-10 preset (`cifar10()`) is the authors' network: ch
128, multipliers (1, 2, 2, 2), two residual blocks per level, attention at 16x16 with one head,
dropout 0.1, GroupNorm with 32 groups, swish, a sinusoidal time embedding of dimension ch
followed by Dense(4ch) -> swish -> Dense(4ch), zero-initialised conv2 / proj_out / conv_out,
stride-2 conv downsampling, nearest + conv upsampling, input x / (K - 1) * 2 - 1.

Time: the authors' code runs t in 0..T-1 scaled by 1000/T; with the paper's t in 1..T the
embedding is taken at (t - 1) * 1000 / T, so a time maps to the same angle as theirs.

Heads (Config.head):
    * "logits": a conv to C*K channels plus the one-hot input, h + one_hot(x_t) (the authors'
      residual head);
    * "logistic": (loc, log_scale) per channel, loc = tanh(loc_raw + x_t normalised), and
      logits of the truncated discretized logistic, `dd.logistic.logits(loc, log_scale, K)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEADS = ("logits", "logistic")


@dataclass(frozen=True)
class Config:
    """UNet hyper-parameters (defaults: the paper's CIFAR-10 network, about 36M parameters).

    Attributes:
        ch: base channels; the time embedding has dimension ch, its MLP 4*ch.
        ch_mult: channel multiplier per resolution level.
        num_res_blocks: residual blocks per level.
        attn_resolutions: feature-map sizes (height) with a self-attention block.
        dropout: dropout rate inside residual blocks.
        num_groups: GroupNorm groups; must divide every channel count.
        head: "logits" or "logistic".
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    num_groups: int = 32
    head: str = "logits"


def cifar10() -> Config:
    """The paper's CIFAR-10 UNet (notes section 9)."""
    return Config()


def cpu_small() -> Config:
    """A small network for 8x8 digits on a CPU: ch 32, levels 8 and 4, attention at 4x4."""
    return Config(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                  dropout=0.0, num_groups=8)


def timestep_embedding(t: Tensor, num_steps: int, dim: int) -> Tensor:
    """Sinusoidal embedding [B, dim] of t in 1..T at (t - 1) * 1000 / T (the authors' scale)."""
    angle_t = (t.to(torch.float32) - 1.0) * (1000.0 / num_steps)
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / (half - 1))
    args = angle_t[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN -> swish -> conv1 (+ Dense(swish(temb))) -> GN -> swish -> dropout -> conv2 (zero)."""

    def __init__(self, c_in: int, c_out: int, temb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.GroupNorm(groups, c_in), nn.GroupNorm(groups, c_out)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(temb_dim, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions, zero-initialised output projection."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        attn = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        out = torch.einsum("bij,bcj->bci", attn, v).reshape(b, c, h, w)
        return x + self.proj_out(out)


class UNet(nn.Module):
    """p~(x_0 | x_t) for images: forward(x_t [B, C, H, W], t [B]) -> logits [B, C, H, W, K]."""

    def __init__(self, cfg: Config, shape: tuple[int, ...], num_classes: int, num_steps: int):
        super().__init__()
        channels, self.height = shape[0], shape[1]
        if cfg.head not in HEADS:
            raise ValueError(f"unknown UNet head {cfg.head!r} (choose from {', '.join(HEADS)})")
        self.cfg, self.channels = cfg, channels
        self.num_classes, self.num_steps = num_classes, num_steps
        ch, g, temb_dim = cfg.ch, cfg.num_groups, 4 * cfg.ch
        self.temb = nn.Sequential(nn.Linear(ch, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.conv_in = nn.Conv2d(channels, ch, 3, padding=1)
        self.down, skips, c = self._build_down(cfg, temb_dim)
        self.mid = nn.ModuleList([ResBlock(c, c, temb_dim, g, cfg.dropout), AttnBlock(c, g),
                                  ResBlock(c, c, temb_dim, g, cfg.dropout)])
        self.up, c = self._build_up(cfg, temb_dim, skips, c)
        self.norm_out = nn.GroupNorm(g, c)
        out_channels = channels * (num_classes if cfg.head == "logits" else 2)
        self.conv_out = _zero(nn.Conv2d(c, out_channels, 3, padding=1))
        self._head = self._logits_head if cfg.head == "logits" else self._logistic_head

    def _build_down(self, cfg: Config, temb_dim: int) -> tuple[nn.ModuleList, list[int], int]:
        layers, skips, c = nn.ModuleList(), [cfg.ch], cfg.ch
        for level, mult in enumerate(cfg.ch_mult):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(c, cfg.ch * mult, temb_dim, cfg.num_groups, cfg.dropout))
                c = cfg.ch * mult
                layers.append(self._attn(level, c))
                skips.append(c)
            if level != len(cfg.ch_mult) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        return layers, skips, c

    def _attn(self, level: int, channels: int) -> nn.Module:
        """Attention where this level's feature map size is in `attn_resolutions`."""
        if self.height // 2**level in self.cfg.attn_resolutions:
            return AttnBlock(channels, self.cfg.num_groups)
        return nn.Identity()

    def _build_up(
        self, cfg: Config, temb_dim: int, skips: list[int], c: int
    ) -> tuple[nn.ModuleList, int]:
        layers = nn.ModuleList()
        for level in reversed(range(len(cfg.ch_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                c_out = cfg.ch * cfg.ch_mult[level]
                layers.append(ResBlock(c + skips.pop(), c_out, temb_dim, cfg.num_groups,
                                       cfg.dropout))
                c = c_out
                layers.append(self._attn(level, c))
            if level != 0:
                layers.append(_Upsample(c))
        return layers, c

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Logits of p~(x_0 | x_t).

        Args:
            x_t: LongTensor [B, C, H, W], values 0..K-1.
            t: LongTensor [B] (or one value), times in 1..T.
        Returns:
            float [B, C, H, W, K].
        """
        b = x_t.shape[0]
        x_norm = x_t.to(torch.float32) / (self.num_classes - 1) * 2.0 - 1.0
        temb = self.temb(timestep_embedding(t.reshape(-1).expand(b), self.num_steps, self.cfg.ch))
        h = self.conv_in(x_norm)
        hs = [h]
        for layer in self.down:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
            if not isinstance(layer, ResBlock):  # after each block's attention, and each down
                hs.append(h)
        for layer in self.mid:
            h = layer(h, temb) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), temb)
            else:
                h = layer(h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return self._head(h, x_t, x_norm)

    def _logits_head(self, h: Tensor, x_t: Tensor, x_norm: Tensor) -> Tensor:
        """h [B, C*K, H, W] -> h + one_hot(x_t) [B, C, H, W, K] (the authors' residual)."""
        b, c, height, width = x_t.shape
        h = h.reshape(b, c, self.num_classes, height, width).permute(0, 1, 3, 4, 2)
        return h + F.one_hot(x_t, self.num_classes).to(h.dtype)

    def _logistic_head(self, h: Tensor, x_t: Tensor, x_norm: Tensor) -> Tensor:
        """h [B, 2C, H, W] -> truncated discretized logistic log-probabilities [B, C, H, W, K],
        loc = tanh(loc_raw + x_t normalised) (appendix A.8)."""
        from discrete_diffusion import logistic

        b, c, height, width = x_t.shape
        loc_raw, log_scale = h.reshape(b, 2, c, height, width).unbind(1)
        loc = torch.tanh(loc_raw + x_norm)
        return logistic.logits(loc, log_scale, self.num_classes)


class _Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def build(cfg: Config, info, num_classes: int, num_steps: int) -> UNet:
    """A UNet for images of `info.example_shape` (C, H, W) predicting `num_classes` levels."""
    shape = tuple(info.example_shape)
    if len(shape) != 3:
        raise ValueError(f"the UNet needs images (C, H, W), got example_shape {shape}")
    cfg = Config(**{**vars(cfg), "ch_mult": tuple(cfg.ch_mult),
                    "attn_resolutions": tuple(cfg.attn_resolutions)})
    levels = len(cfg.ch_mult) - 1
    if shape[1] % (2**levels) or shape[2] % (2**levels):
        raise ValueError(f"image size {shape[1]}x{shape[2]} is not divisible by 2^{levels} "
                         f"for ch_mult {cfg.ch_mult}")
    for c in {cfg.ch * m for m in cfg.ch_mult}:
        if c % cfg.num_groups:
            raise ValueError(f"GroupNorm groups {cfg.num_groups} do not divide {c} channels")
    return UNet(cfg, shape, num_classes, num_steps)
