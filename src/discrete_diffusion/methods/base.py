"""The `Method` interface: all the trainer and the evaluation code know about a generative
process. A method owns no parameters; the model is always an argument."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class Method(Protocol):
    """A generative process seen from the trainer.

    Attributes:
        num_classes: K the model predicts over (data vocabulary, plus a mask token if any).
        num_steps: T (the sequence length for the autoregressive baseline).
    """

    num_classes: int
    num_steps: int

    def losses(self, model: nn.Module, x_0: Tensor,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-example terms in nats summed over positions, each [B]: "loss" (minimised),
        "bound" (an unbiased estimate of -log p(x_0)), optionally "vb", "ce" and "t" (LongTensor
        [B], the sampled timesteps, for the per-quartile diagnostics)."""
        ...

    def nll(self, model: nn.Module, x_0: Tensor, steps: int | None = None,
            generator: torch.Generator | None = None) -> Tensor:
        """Per-example bound on -log p(x_0) in nats [B] with `steps` inference steps
        (None = all T)."""
        ...

    def sample(self, model: nn.Module, num: int, steps: int | None = None,
               generator: torch.Generator | None = None,
               fixed: tuple[Tensor, Tensor] | None = None,
               trajectory: bool = False,
               sampler: str = "ancestral") -> Tensor | tuple[Tensor, list[tuple[int, Tensor]]]:
        """`num` examples LongTensor [num, *example_shape]; `fixed` = (bool mask, values) holds
        positions; with `trajectory`, also [(t, x_t), ...] from t = T down to 0. `sampler`
        names the step rule ("ancestral", or one of `sampling.STEP_RULES` for diffusion)."""
        ...

    def to(self, device: torch.device | str) -> Method:
        """Move any tables to `device`; returns self."""
        ...
