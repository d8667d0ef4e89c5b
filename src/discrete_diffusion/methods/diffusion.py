"""Method kind "diffusion": a `D3PM` process (Austin et al., 2021) behind the `Method` interface.

The transition and schedule names are dispatched here, once, at build time. Masks: when the
transition needs an absorbing state and the data has none (`info.mask_index is None`), the model
predicts over K = K_data + 1 classes with the mask at id K_data; otherwise K = K_data and the
mask is `info.mask_index` (images: grey 128). An added mask token is never a value of x_0, so
p~(x_0 | x_t) gives it no mass (its logit is replaced by NO_MASS before the process sees it).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

import discrete_diffusion as dd
from discrete_diffusion.data.base import DataInfo

MASKED = ("absorbing", "mask_uniform")


@dataclass(frozen=True)
class UniformOptions:
    """`transition: uniform`: jump to any class with probability beta_t / K."""

    kind: Literal["uniform"] = "uniform"


@dataclass(frozen=True)
class AbsorbingOptions:
    """`transition: absorbing`: jump to the mask with probability beta_t."""

    kind: Literal["absorbing"] = "absorbing"


@dataclass(frozen=True)
class GaussianOptions:
    """`transition: {kind: gaussian, bands: b}`: the discretized Gaussian.

    Attributes:
        bands: the largest jump |i - j| with non-zero probability, in 1..K-1 (None = K - 1).
    """

    kind: Literal["gaussian"] = "gaussian"
    bands: int | None = None


@dataclass(frozen=True)
class MaskUniformOptions:
    """`transition: {kind: mask_uniform, uniform_schedule: ...}`: absorbing plus uniform jumps.

    Attributes:
        uniform_schedule: schedule of the uniform part (the absorbing part uses `schedule`).
    """

    kind: Literal["mask_uniform"] = "mask_uniform"
    uniform_schedule: Literal["linear", "cosine", "jsd", "constant"] = "cosine"


@dataclass(frozen=True)
class NearestNeighborOptions:
    """`transition: {kind: nearest_neighbor, knn: k}`: jumps to token-embedding neighbours.

    Attributes:
        knn: neighbours per token, in 1..K-1.
    """

    kind: Literal["nearest_neighbor"] = "nearest_neighbor"
    knn: int = 5


TransitionOptions = (UniformOptions | AbsorbingOptions | GaussianOptions | MaskUniformOptions
                     | NearestNeighborOptions)
# transition kind -> its options dataclass; the config reader checks a `transition` mapping
# against the class of its kind (the `kinds` metadata of `Config.transition`)
TRANSITIONS: dict[str, type] = {cls.kind: cls for cls in typing.get_args(TransitionOptions)}
# the keys that sat flat in the method section before the options were nested, and their kind
FLAT_KEYS = {"bands": "gaussian", "knn": "nearest_neighbor", "uniform_schedule": "mask_uniform"}


def transition_options(kind: str) -> TransitionOptions:
    """The default options of transition `kind` (a one-line error names the known kinds)."""
    if kind not in TRANSITIONS:
        raise ValueError(f"unknown transition {kind!r}; known: {', '.join(sorted(TRANSITIONS))}")
    return TRANSITIONS[kind]()


@dataclass
class Config:
    """The forward process, schedule and loss.

    Attributes:
        transition: the Q_t family (paper section 3.1-3.3) and its options, one of the
            `TRANSITIONS` dataclasses; a kind name alone (`"uniform"`) stands for its defaults.
        schedule: beta_1..beta_T: "linear" (beta_start -> beta_stop), "cosine", "jsd"
            (1/(T - t + 1)), "mutual_information" (needs the data marginal) or "constant"
            (beta_start at every step).
        num_steps: T.
        loss: "hybrid" (L_vb + hybrid_lambda * L_ce, eq. 5), "vb" or "ce".
        time_sampling: how t is drawn for the loss: "uniform" (t ~ U{1..T} per example) or
            "stratified" (one low-discrepancy draw across the batch).
    """

    transition: TransitionOptions = field(default_factory=AbsorbingOptions,
                                          metadata={"kinds": TRANSITIONS})
    schedule: Literal["linear", "cosine", "jsd", "mutual_information", "constant"] = "jsd"
    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_stop: float = 0.02
    loss: Literal["hybrid", "vb", "ce"] = "hybrid"
    hybrid_lambda: float = 0.01
    time_sampling: Literal["uniform", "stratified"] = "uniform"

    def __post_init__(self) -> None:
        if isinstance(self.transition, str):  # Config(transition="uniform")
            self.transition = transition_options(self.transition)

    @classmethod
    def upgrade(cls, values: dict) -> dict:
        """Method-section `values` written before the transition options were nested (flat
        `bands`, `knn`, `uniform_schedule`) in the nested form. A flat key moves into the
        `transition` mapping when it belongs to that kind and is dropped otherwise (it had no
        effect); one that contradicts the nested value is a one-line error."""
        flat = {key: values[key] for key in FLAT_KEYS if key in values}
        default = AbsorbingOptions.kind
        transition = values.get("transition", default)
        if not flat or not isinstance(transition, (str, dict)):
            return values
        nested = {"kind": transition} if isinstance(transition, str) else dict(transition)
        for key, value in flat.items():
            if FLAT_KEYS[key] != nested.get("kind", default):
                continue
            if key in nested and nested[key] != value:
                raise ValueError(f"method.{key} = {value!r} contradicts method.transition.{key} "
                                 f"= {nested[key]!r}; give only method.transition.{key}")
            nested[key] = value
        rest = {key: value for key, value in values.items() if key not in FLAT_KEYS}
        return {**rest, "transition": nested}


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
    opts = cfg.transition
    mask = None
    if opts.kind in MASKED:
        mask = k_data if info.mask_index is None else info.mask_index
    k = k_data + 1 if mask == k_data else k_data
    if opts.kind == "uniform":
        tr = _transition_class("Uniform")(num_classes=k)
    elif opts.kind == "absorbing":
        tr = _transition_class("Absorbing")(num_classes=k, mask_index=mask,
                                            added_mask=mask == k_data)
    elif opts.kind == "gaussian":
        tr = _transition_class("DiscretizedGaussian")(num_classes=k, bands=opts.bands)
    elif opts.kind == "mask_uniform":
        tr = _transition_class("MaskUniform")(
            num_classes=k, mask_index=mask, uniform_betas=_schedule(opts.uniform_schedule, cfg))
    elif opts.kind == "nearest_neighbor":
        if info.embeddings is None:
            raise ValueError(f"the nearest_neighbor transition needs token embeddings, which "
                             f"data {info.name or 'source'!r} does not provide")
        tr = _transition_class("NearestNeighbor")(embeddings=info.embeddings, k=opts.knn)
    else:
        raise ValueError(f"unknown transition {opts.kind!r}")
    marginal = None
    if info.marginal is not None:  # p(x_0), padded with 0 for an added mask token
        marginal = torch.cat([info.marginal, info.marginal.new_zeros(k - k_data)])
    betas = _schedule(cfg.schedule, cfg, tr, marginal)
    return dd.D3PM(tr, betas), mask


# The logit of an added mask token in p~(x_0 | x_t): x_0 is data, so the mask gets no mass.
# A large finite value rather than -inf keeps every gradient of the posterior finite.
NO_MASS = -1e9


def as_denoiser(
    model: nn.Module, excluded: int | None = None
) -> Callable[[Tensor, Tensor], Tensor]:
    """A network as the `denoiser(x_t, t) -> logits` that `D3PM` takes.

    The logits are cast to float32 (bf16 autocast gives bf16), and the logit of class
    `excluded` (an added mask token, never a value of x_0: `DiffusionMethod.excluded`) is set
    to NO_MASS: by the network itself when its forward takes `pinned=(class, value)` (the
    transformer's head then gives that class a zero weight row and the bias NO_MASS, the same
    logits without a copy of the K-wide output and of its gradient; under bf16 autocast the
    pinned value is NO_MASS rounded to bf16, no mass either way), else by a fill here.

    Args:
        model: `model(x_t, t) -> logits [B, ..., K]`, x_t LongTensor [B, ...], t LongTensor [B].
        excluded: a class that p~(x_0 | x_t) must not predict, or None.
    Returns:
        `denoiser(x_t, t) -> float32 [B, ..., K]`.
    """
    if excluded is not None and _takes_pinned(model):
        def pinned(x_t: Tensor, t: Tensor) -> Tensor:
            return model(x_t, t, pinned=(excluded, NO_MASS)).float()
        return pinned

    def denoiser(x_t: Tensor, t: Tensor) -> Tensor:
        logits = model(x_t, t).float()
        if excluded is not None:
            logits = logits.index_fill(-1, torch.tensor([excluded], device=logits.device),
                                       NO_MASS)
        return logits
    return denoiser


def _takes_pinned(model: nn.Module) -> bool:
    """Whether the network (inside a DistributedDataParallel or torch.compile wrapper) takes
    the keyword `pinned` in its forward."""
    inner = model
    for attr in ("_orig_mod", "module"):  # torch.compile, then DistributedDataParallel
        if isinstance(getattr(inner, attr, None), nn.Module):
            inner = getattr(inner, attr)
    try:
        return "pinned" in inspect.signature(getattr(inner, "forward", inner)).parameters
    except (TypeError, ValueError):  # a callable without a signature
        return False


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
        denoiser = as_denoiser(model, self.excluded)
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
        return self.process.nll_bound(as_denoiser(model, self.excluded), x_0,
                                      steps=steps, generator=generator)

    @torch.no_grad()
    def sample(self, model: nn.Module, num: int, steps: int | None = None,
               generator: torch.Generator | None = None,
               fixed: tuple[Tensor, Tensor] | None = None, trajectory: bool = False,
               start: tuple[int, Tensor] | None = None, sampler: str = "ancestral"):
        """Samples [num, *example_shape] (see `Method.sample`), by `D3PM.sample`.

        Args:
            sampler: a name of `sampling.STEP_RULES`, with options as "remdm:eta=0.05"
                (default "ancestral"; see `discrete_diffusion.sampling`).
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
        return self.process.sample(as_denoiser(model, self.excluded), shape,
                                   generator=generator, fixed=fixed, return_trajectory=trajectory,
                                   steps=steps, device=device, start=start, sampler=sampler)


def build(cfg: Config, info: DataInfo) -> DiffusionMethod:
    """The diffusion method of `cfg` for data `info`."""
    return DiffusionMethod(cfg, info)
