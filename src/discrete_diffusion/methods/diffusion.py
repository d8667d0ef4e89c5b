"""Method kind "diffusion": a `D3PM` process (Austin et al., 2021) behind the `Method` interface.

The transition and schedule names are dispatched here, once, at build time. Masks: when the
transition needs an absorbing state and the data has none (`info.mask_index is None`), the model
predicts over K = K_data + 1 classes with the mask at id K_data; otherwise K = K_data and the
mask is `info.mask_index` (images: grey 128). An added mask token is never a value of x_0, so
p~(x_0 | x_t) gives it no mass (its logit is replaced by NO_MASS before the process sees it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

import discrete_diffusion as dd
from discrete_diffusion.data.base import DataInfo

MASKED = ("absorbing", "mask_uniform")


@dataclass
class Config:
    """The forward process, schedule and loss.

    Attributes:
        transition: the Q_t family (paper section 3.1-3.3).
        schedule: beta_1..beta_T: "linear" (beta_start -> beta_stop), "cosine", "jsd"
            (1/(T - t + 1)), "mutual_information" (needs the data marginal) or "constant"
            (beta_start at every step).
        num_steps: T.
        bands: width of the discretized Gaussian (None = the transition's default).
        knn: neighbours per token of the nearest-neighbour process.
        uniform_schedule: schedule of the uniform part of "mask_uniform".
        loss: "hybrid" (L_vb + hybrid_lambda * L_ce, eq. 5), "vb" or "ce".
        time_sampling: how t is drawn for the loss: "uniform" (t ~ U{1..T} per example) or
            "stratified" (one low-discrepancy draw across the batch).
    """

    transition: Literal["uniform", "absorbing", "gaussian", "mask_uniform",
                        "nearest_neighbor"] = "absorbing"
    schedule: Literal["linear", "cosine", "jsd", "mutual_information", "constant"] = "jsd"
    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_stop: float = 0.02
    bands: int | None = None
    knn: int = 5
    uniform_schedule: Literal["linear", "cosine", "jsd", "constant"] = "cosine"
    loss: Literal["hybrid", "vb", "ce"] = "hybrid"
    hybrid_lambda: float = 0.01
    time_sampling: Literal["uniform", "stratified"] = "uniform"


def _transition_class(name: str) -> type:
    cls = getattr(dd.transitions, name, None)
    if cls is None:
        raise ValueError(f"transition {name} is not available in discrete_diffusion.transitions")
    return cls


def _schedule(name: str, cfg: Config, transition=None, marginal: Tensor | None = None) -> Tensor:
    """beta_1..beta_T, float64 [T]."""
    t = cfg.num_steps
    if name == "linear":
        return dd.schedules.linear(t, cfg.beta_start, cfg.beta_stop)
    if name == "cosine":
        return dd.schedules.cosine(t)
    if name == "jsd":
        return dd.schedules.jsd(t)
    if name == "constant":
        return dd.schedules.constant(t, cfg.beta_start)
    if name == "mutual_information":
        if marginal is None:
            raise ValueError("the mutual_information schedule needs the data marginal "
                             "(DataInfo.marginal), which this data source does not provide")
        fn = getattr(dd.schedules, "mutual_information", None)
        if fn is None:
            raise ValueError("schedule mutual_information is not available in "
                             "discrete_diffusion.schedules")
        return fn(transition, t, marginal)
    raise ValueError(f"unknown schedule {name!r}")


def build_process(cfg: Config, info: DataInfo) -> tuple[dd.D3PM, int | None]:
    """The D3PM of `cfg` for data `info`, and its mask id (None without one)."""
    if cfg.num_steps < 1:
        raise ValueError(f"method.num_steps must be positive, got {cfg.num_steps}")
    k_data = info.num_classes
    mask = None
    if cfg.transition in MASKED:
        mask = k_data if info.mask_index is None else info.mask_index
    k = k_data + 1 if mask == k_data else k_data
    if cfg.transition == "uniform":
        tr = _transition_class("Uniform")(num_classes=k)
    elif cfg.transition == "absorbing":
        tr = _transition_class("Absorbing")(num_classes=k, mask_index=mask)
    elif cfg.transition == "gaussian":
        tr = _transition_class("DiscretizedGaussian")(num_classes=k, bands=cfg.bands)
    elif cfg.transition == "mask_uniform":
        tr = _transition_class("MaskUniform")(
            num_classes=k, mask_index=mask, uniform_betas=_schedule(cfg.uniform_schedule, cfg))
    elif cfg.transition == "nearest_neighbor":
        if info.embeddings is None:
            raise ValueError(f"the nearest_neighbor transition needs token embeddings, which "
                             f"data {info.name or 'source'!r} does not provide")
        tr = _transition_class("NearestNeighbor")(embeddings=info.embeddings, k=cfg.knn)
    else:
        raise ValueError(f"unknown transition {cfg.transition!r}")
    marginal = None
    if info.marginal is not None:  # p(x_0), padded with 0 for an added mask token
        marginal = torch.cat([info.marginal, info.marginal.new_zeros(k - k_data)])
    betas = _schedule(cfg.schedule, cfg, tr, marginal)
    return dd.D3PM(tr, betas), mask


# The logit of an added mask token in p~(x_0 | x_t): x_0 is data, so the mask gets no mass.
# A large finite value rather than -inf keeps every gradient of the posterior finite.
NO_MASS = -1e9


def _float_logits(model: nn.Module, excluded: int | None = None) -> Callable[[Tensor, Tensor],
                                                                             Tensor]:
    """The model as a denoiser returning float32 logits (bf16 autocast gives bf16), with the
    logit of class `excluded` (an added mask token) set to NO_MASS."""
    def denoiser(x_t: Tensor, t: Tensor) -> Tensor:
        logits = model(x_t, t).float()
        if excluded is not None:
            logits = logits.index_fill(-1, torch.tensor([excluded], device=logits.device),
                                       NO_MASS)
        return logits
    return denoiser


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class DiffusionMethod:
    """`Method` over a D3PM process; see `methods/base.py`."""

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        self.cfg, self.info = cfg, info
        self.process, self.mask_index = build_process(cfg, info)
        self.num_classes = self.process.num_classes
        self.num_steps = self.process.num_steps
        # an added mask token (id K_data) is never a value of x_0; a mask that is a data value
        # (images: grey 128) is
        self.excluded = self.mask_index if self.mask_index == info.num_classes else None

    def to(self, device: torch.device | str) -> DiffusionMethod:
        self.process.to(device)
        return self

    def losses(self, model: nn.Module, x_0: Tensor,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """`D3PM.training_losses` with the configured loss: "loss", "vb", "ce", "bound", "t"."""
        denoiser = _float_logits(model, self.excluded)
        return self.process.training_losses(denoiser, x_0, loss=self.cfg.loss,
                                            hybrid_lambda=self.cfg.hybrid_lambda,
                                            generator=generator,
                                            time_sampling=self.cfg.time_sampling)

    def corrupt(self, x_0: Tensor, t: int, generator: torch.Generator | None = None) -> Tensor:
        """x_t ~ q(x_t | x_0) (eq. 3) at step t in 0..T, LongTensor shaped like x_0."""
        if not 0 <= t <= self.num_steps:
            raise ValueError(f"corruption step {t} outside 0..{self.num_steps}")
        if t == 0:
            return x_0.clone()
        return self.process.q_sample(x_0, t, generator=generator)

    def _check_steps(self, steps: int | None) -> None:
        if steps is not None and not 1 <= steps <= self.num_steps:
            raise ValueError(f"number of inference steps must be in 1..T = {self.num_steps}, "
                             f"got {steps}")

    @torch.no_grad()
    def nll(self, model: nn.Module, x_0: Tensor, steps: int | None = None,
            generator: torch.Generator | None = None) -> Tensor:
        """Per-example bound in nats [B] over `D3PM.timestep_grid(steps=steps)` (None = all T
        steps): L_T + the KL terms between grid points + L_0."""
        self._check_steps(steps)
        return self.process.nll_bound(_float_logits(model, self.excluded), x_0,
                                      steps=steps, generator=generator)

    @torch.no_grad()
    def sample(self, model: nn.Module, num: int, steps: int | None = None,
               generator: torch.Generator | None = None,
               fixed: tuple[Tensor, Tensor] | None = None, trajectory: bool = False,
               start: tuple[int, Tensor] | None = None):
        """Ancestral samples [num, *example_shape] (see `Method.sample`), by `D3PM.sample`.

        Args:
            fixed: (bool mask, values), each [*example_shape] or [num, *example_shape]: held
                positions (infilling).
            start: (t, x_t [num, ...]) to denoise from step t instead of from x_T ~ p(x_T)
                (reconstruction of a corrupted input); the steps are the points of the
                `steps`-grid below t.
        """
        self._check_steps(steps)
        shape = (num, *self.info.example_shape)
        device = _device(model)
        if fixed is not None:
            fixed = (fixed[0].to(device).expand(shape), fixed[1].to(device).expand(shape))
        return self.process.sample(_float_logits(model, self.excluded), shape,
                                   generator=generator, fixed=fixed, return_trajectory=trajectory,
                                   steps=steps, device=device, start=start)


def build(cfg: Config, info: DataInfo) -> DiffusionMethod:
    """The diffusion method of `cfg` for data `info`."""
    return DiffusionMethod(cfg, info)
