"""The autoregressive baseline as a Method: exact next-token likelihood with a BOS token.

The model sees K = K_data + 1 classes, BOS = K_data. Input position 0 holds BOS and position
i > 0 holds x_{i-1}; the logits at position i give p(x_i | x_<i) over the K_data real tokens
(the BOS logit is excluded). -log p(x) = sum_i -log p(x_i | x_<i) is exact, so `loss`, `bound`
and `nll` coincide and `steps` is ignored; sampling takes L sequential forward passes. The
numbers are in nats per example, summed over positions, like the diffusion methods' bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from discrete_diffusion.categorical import gumbel_max


@dataclass(frozen=True)
class Config:
    """The autoregressive method has no settings; the section holds only `kind`."""


class AutoregressiveMethod:
    """Method for a causal LM `model(x [B, L]) -> logits [B, L, K_data + 1]`."""

    def __init__(self, num_data_classes: int, seq_len: int) -> None:
        if num_data_classes < 1 or seq_len < 1:
            raise ValueError(
                f"autoregressive method needs a vocabulary and a length, got K={num_data_classes}, "
                f"L={seq_len}"
            )
        self.num_data_classes = num_data_classes
        self.bos = num_data_classes
        self.num_classes = num_data_classes + 1
        self.num_steps = seq_len

    def to(self, device: torch.device | str) -> AutoregressiveMethod:
        """No tables to move; returns self."""
        return self

    def shift_right(self, x_0: Tensor) -> Tensor:
        """x_0 [B, L] -> model input [B, L]: BOS, x_0[:, :-1]."""
        bos = torch.full_like(x_0[:, :1], self.bos)
        return torch.cat([bos, x_0[:, :-1]], dim=1)

    def log_probs(self, model: nn.Module, inputs: Tensor) -> Tensor:
        """log p(x_i | x_<i) over the K_data real tokens, float32 [B, L, K_data]."""
        logits = model(inputs).float()[..., : self.num_data_classes]
        return torch.log_softmax(logits, dim=-1)

    @torch.no_grad()
    def nll(self, model: nn.Module, x_0: Tensor, steps: int | None = None,
            generator: torch.Generator | None = None) -> Tensor:
        """Exact -log p(x_0) in nats per example [B]; `steps` and `generator` are unused."""
        return self._nll(model, x_0)

    def _nll(self, model: nn.Module, x_0: Tensor) -> Tensor:
        self._check(x_0)
        logp = self.log_probs(model, self.shift_right(x_0))
        token_nll = -logp.gather(-1, x_0[..., None]).squeeze(-1)
        return token_nll.sum(dim=1)

    def losses(self, model: nn.Module, x_0: Tensor,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """{"loss", "bound"}: the exact NLL in nats [B] (no timestep, so no "t")."""
        nll = self._nll(model, x_0)
        return {"loss": nll, "bound": nll}

    @torch.no_grad()
    def sample(self, model: nn.Module, num: int, steps: int | None = None,
               generator: torch.Generator | None = None,
               fixed: tuple[Tensor, Tensor] | None = None,
               trajectory: bool = False,
               sampler: str = "ancestral") -> Tensor | tuple[Tensor, list]:
        """Ancestral sampling left to right: L forward passes.

        Args:
            num: number of sequences B.
            sampler: only "ancestral" (the diffusion samplers do not apply).
            fixed: optional (held BoolTensor [L] or [B, L], values LongTensor same shape):
                held positions take the given value instead of a sample (later positions
                condition on them; earlier ones cannot, the model being causal).
            trajectory: also return [(i, x after position i)] for every position.
        Returns:
            LongTensor [B, L] (and the trajectory list).
        """
        if sampler != "ancestral":
            raise ValueError(f"the autoregressive method samples only with sampler 'ancestral', "
                             f"got {sampler!r}")
        device = next(model.parameters()).device
        length = self.num_steps
        x = torch.full((num, length), self.bos, dtype=torch.long, device=device)
        held, values = _expand_fixed(fixed, num, length, device)
        traj = []
        for i in range(length):
            inputs = self.shift_right(x)[:, : i + 1]
            logp = self.log_probs(model, inputs)[:, i].double()
            x[:, i] = gumbel_max(logp, generator)
            if held is not None:
                x[:, i] = torch.where(held[:, i], values[:, i], x[:, i])
            if trajectory:
                traj.append((i, x.clone()))
        return (x, traj) if trajectory else x

    def _check(self, x_0: Tensor) -> None:
        if x_0.dim() != 2 or x_0.shape[1] > self.num_steps:
            raise ValueError(
                f"autoregressive method expects x_0 [B, L<={self.num_steps}], "
                f"got {tuple(x_0.shape)}"
            )


def _expand_fixed(fixed, num: int, length: int, device) -> tuple[Tensor | None, Tensor | None]:
    if fixed is None:
        return None, None
    held, values = fixed
    held = held.to(device=device, dtype=torch.bool).expand(num, length)
    values = values.to(device=device, dtype=torch.long).expand(num, length)
    return held, values


def build(cfg: Config, info) -> AutoregressiveMethod:
    """The method for data described by `info` (num_classes K_data, example_shape (L,))."""
    if len(info.example_shape) != 1:
        raise ValueError(
            f"the autoregressive method models sequences; example shape is {info.example_shape}"
        )
    return AutoregressiveMethod(int(info.num_classes), int(info.example_shape[0]))
