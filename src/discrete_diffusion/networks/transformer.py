"""Bidirectional transformer denoiser p~(x_0 | x_t) for text (paper section 5, appendix B.2).

x_t ids [B, L] -> token embedding (K rows, the mask included) + learned timestep embedding
(T + 1 rows so that t = 1..T all index their own row; the authors' JAX gather clamps t = T onto
row T - 1) -> pre-norm blocks (self-attention through
`scaled_dot_product_attention`, GELU MLP) -> final LayerNorm -> linear head to K logits.
The paper's model: 12 layers, d = 768, 12 heads, MLP 3072, dropout 0.

Positions: rotary embeddings of queries and keys by default (`positions: rotary`), so that
attention sees relative offsets from the first update, as the T5 relative bias of the authors'
model does; learned absolute embeddings (`positions: learned`) leave a small bidirectional
model predicting character frequencies for its first thousands of updates on text8, since
nothing tells a position which keys are its neighbours until those embeddings are learned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class Config:
    """Transformer size. `max_len` 0 means the data's sequence length; `positions` is
    "rotary" (relative, the default) or "learned" (absolute embeddings)."""

    num_layers: int = 12
    d_model: int = 768
    num_heads: int = 12
    mlp_dim: int = 3072
    dropout: float = 0.0
    max_len: int = 0
    positions: Literal["rotary", "learned"] = "rotary"

    def validate(self) -> None:
        if min(self.num_layers, self.d_model, self.num_heads, self.mlp_dim) < 1:
            raise ValueError(f"model sizes must be positive: {self}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"model.d_model={self.d_model} is not divisible by model.num_heads={self.num_heads}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.positions not in ("rotary", "learned"):
            raise ValueError(f"model.positions must be 'rotary' or 'learned', got "
                             f"{self.positions!r}")
        if self.positions == "rotary" and (self.d_model // self.num_heads) % 2:
            raise ValueError(f"rotary positions need an even head size, got "
                             f"d_model / num_heads = {self.d_model // self.num_heads}")


def rotary_tables(length: int, head_dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos and sin [L, head_dim / 2] of angles p * 10000^(-2i / head_dim) (float32)."""
    inv_freq = 10000.0 ** (-torch.arange(0, head_dim, 2, device=device) / head_dim)
    angles = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq
    return angles.cos(), angles.sin()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding of x [B, H, L, D]: each pair (x_i, x_{i + D/2}) turned by its angle,
    so that q . k depends on positions through their offset only."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class SelfAttention(nn.Module):
    """Multi-head self-attention; `causal` lets position i attend to positions <= i only."""

    def __init__(self, d_model: int, num_heads: int, dropout: float, causal: bool,
                 rotary: bool = False) -> None:
        super().__init__()
        self.num_heads, self.causal, self.dropout = num_heads, causal, dropout
        self.rotary = rotary
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, h: Tensor) -> Tensor:
        """h [B, L, d] -> [B, L, d]."""
        b, n, d = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.num_heads, d // self.num_heads).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.rotary:
            cos, sin = rotary_tables(n, d // self.num_heads, h.device)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=self.causal,
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: h + Attn(LN(h)), then h + MLP(LN(h))."""

    def __init__(self, cfg: Config, causal: bool = False) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg.d_model, cfg.num_heads, cfg.dropout, causal,
                                  rotary=cfg.positions == "rotary")
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, cfg.mlp_dim), nn.GELU(approximate="tanh"),
            nn.Linear(cfg.mlp_dim, cfg.d_model),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, h: Tensor) -> Tensor:
        h = h + self.drop(self.attn(self.norm1(h)))
        return h + self.drop(self.mlp(self.norm2(h)))


class TransformerTrunk(nn.Module):
    """Token + position embeddings, blocks, final norm and head: shared by the denoiser and
    the causal baseline (which differ in the attention mask and the timestep input)."""

    def __init__(self, cfg: Config, num_classes: int, max_len: int, causal: bool) -> None:
        super().__init__()
        cfg.validate()
        self.max_len = max_len
        self.token = nn.Embedding(num_classes, cfg.d_model)
        learned = cfg.positions == "learned"
        self.position = nn.Embedding(max_len, cfg.d_model) if learned else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, causal) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, num_classes)
        self._init_weights(cfg.num_layers)

    def _init_weights(self, num_layers: int) -> None:
        # GPT-2 style: N(0, 0.02), zero biases, residual projections shrunk by depth.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        for blk in self.blocks:
            for lin in (blk.attn.proj, blk.mlp[2]):
                nn.init.normal_(lin.weight, std=0.02 / math.sqrt(2 * num_layers))

    def embed(self, x: Tensor) -> Tensor:
        """ids [B, L] -> token (+ learned position) embeddings [B, L, d]."""
        n = x.shape[1]
        if n > self.max_len:
            raise ValueError(f"sequence length {n} exceeds the model's max_len {self.max_len}")
        if self.position is None:  # rotary: positions enter in the attention
            return self.token(x)
        return self.token(x) + self.position(torch.arange(n, device=x.device))[None]

    def decode(self, h: Tensor, pinned: tuple[int, float] | None = None) -> Tensor:
        """Hidden states [B, L, d] -> logits [B, L, K] through the blocks and head.

        pinned: optional (class c, value v): logit c is v at every position, by a zero weight
            row and bias v in the head (exactly v, and no gradient reaches the head's row c
            or the hidden states through it), which costs a copy of the [K, d] weight rather
            than of the [B, L, K] logits and their gradient.
        """
        h = self.drop(h)
        for blk in self.blocks:
            h = blk(h)
        h = self.norm(h)
        if pinned is None:
            return self.head(h)
        row = torch.tensor([pinned[0]], device=h.device)
        weight = self.head.weight.index_fill(0, row, 0.0)
        return F.linear(h, weight, self.head.bias.index_fill(0, row, pinned[1]))


class TransformerDenoiser(nn.Module):
    """p~(x_0 | x_t): bidirectional transformer with a learned timestep embedding.

    forward(x_t LongTensor [B, L], t LongTensor [B] in 1..T, pinned=None) -> logits float
    [B, L, K]; `pinned` = (class, value) fixes one logit (see `TransformerTrunk.decode`).
    """

    def __init__(self, cfg: Config, num_classes: int, num_steps: int, max_len: int) -> None:
        super().__init__()
        self.num_classes, self.num_steps = num_classes, num_steps
        self.trunk = TransformerTrunk(cfg, num_classes, max_len, causal=False)
        self.time = nn.Embedding(num_steps + 1, cfg.d_model)  # rows 0..T, t = T is its own row
        nn.init.normal_(self.time.weight, std=0.02)

    def forward(self, x_t: Tensor, t: Tensor, pinned: tuple[int, float] | None = None) -> Tensor:
        h = self.trunk.embed(x_t) + self.time(t)[:, None, :]
        return self.trunk.decode(h, pinned)


def sequence_length(cfg: Config, info) -> int:
    """cfg.max_len, or the data's sequence length (info.example_shape = (L,))."""
    if cfg.max_len:
        return cfg.max_len
    if len(info.example_shape) != 1:
        raise ValueError(
            f"the transformer models sequences; data example shape is {tuple(info.example_shape)}"
        )
    return int(info.example_shape[0])


def build(cfg: Config, info, num_classes: int, num_steps: int) -> TransformerDenoiser:
    """The denoiser over `num_classes` (K incl. any mask) for a process of `num_steps` (T)."""
    return TransformerDenoiser(cfg, num_classes, num_steps, sequence_length(cfg, info))
