"""Causal transformer language model: the paper's autoregressive baseline (Tables 1 and 2).

The same embeddings, blocks and head as `transformer.py` with a causal attention mask and no
timestep input: logits at position i depend on inputs 0..i only. With the autoregressive
method, input position 0 holds BOS and position i holds x_{i-1}, so output i predicts x_i.
"""

from __future__ import annotations

from torch import Tensor, nn

from discrete_diffusion.networks.transformer import Config, TransformerTrunk, sequence_length

__all__ = ["CausalTransformer", "Config", "build"]


class CausalTransformer(nn.Module):
    """forward(x LongTensor [B, L], t ignored) -> logits float [B, L, K]."""

    def __init__(self, cfg: Config, num_classes: int, max_len: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.trunk = TransformerTrunk(cfg, num_classes, max_len, causal=True)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        return self.trunk.decode(self.trunk.embed(x))


def build(cfg: Config, info, num_classes: int, num_steps: int) -> CausalTransformer:
    """The causal LM over `num_classes` (data vocabulary + BOS); `num_steps` is unused."""
    return CausalTransformer(cfg, num_classes, sequence_length(cfg, info))
