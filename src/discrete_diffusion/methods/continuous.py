"""Method kind "continuous": continuous-time masked (MD4, MDLM) or uniform (UDLM) diffusion,
a `continuous.ContinuousProcess` behind the `Method` interface.

The networks keep their integer time input 0..T (a learned embedding): the method feeds them
t_net = ceil(t T) in 1..T with T = `num_steps`. The reverse model is then a function of
(x_t, t), which is all the continuous-time ELBO asks of a denoiser, so the loss and the bound
are exact for this model, not an approximation of the objective. The exact discrete-time
S-step bound (`nll(..., steps=S)`) and the sampler use the D3PM of
`ContinuousProcess.discretise(S)`, whose step i (time i / S) calls the network at
ceil(i T / S): the same network the continuous model uses at time i / S.

Masks are handled as in methods/diffusion.py: absorbing noise adds a mask token K_data, to
which p~(x_0 | x_t) gives no mass (`as_denoiser`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from discrete_diffusion import alpha_schedules
from discrete_diffusion.checks import is_int
from discrete_diffusion.continuous import ContinuousProcess, draw_times, quantise_time
from discrete_diffusion.data.base import DataInfo
from discrete_diffusion.methods.diffusion import AbsorbingOptions, UniformOptions, as_denoiser
from discrete_diffusion.process import D3PM

CONTINUOUS = "continuous"  # the `steps` value of the continuous-time bound
TRANSITIONS: dict[str, type] = {"absorbing": AbsorbingOptions, "uniform": UniformOptions}


@dataclass
class Config:
    """The continuous-time process and its loss.

    Attributes:
        transition: "absorbing" (pi = an added mask token) or "uniform" (pi = uniform).
        schedule: alpha_t: "linear" (1 - t), "cosine" (cos(pi t / 2)), "polynomial"
            (1 - t^exponent) or "loglinear" (1 - (1 - eps) t, MDLM/SEDD).
        exponent: w of the polynomial schedule.
        eps: alpha_1 of the loglinear schedule.
        num_steps: T of the network's time embedding (t_net = ceil(t T)), and the default
            number of sampling steps.
        time_sampling: "uniform" (t ~ U(0, 1) per example) or "antithetic" (one random shift
            of an evenly spaced grid across the batch).
        eval_samples: draws of t per example averaged in the continuous-time bound (`nll`).
    """

    transition: AbsorbingOptions | UniformOptions = field(default_factory=AbsorbingOptions,
                                                          metadata={"kinds": TRANSITIONS})
    schedule: Literal["linear", "cosine", "polynomial", "loglinear"] = "linear"
    exponent: float = 1.0
    eps: float = 1e-3
    num_steps: int = 1000
    time_sampling: Literal["uniform", "antithetic"] = "antithetic"
    eval_samples: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.transition, str):  # Config(transition="uniform")
            if self.transition not in TRANSITIONS:
                raise ValueError(f"unknown transition {self.transition!r}; known: "
                                 f"{', '.join(sorted(TRANSITIONS))}")
            self.transition = TRANSITIONS[self.transition]()


def build_schedule(cfg: Config) -> alpha_schedules.AlphaSchedule:
    """The alpha schedule named by `cfg.schedule`."""
    if cfg.schedule == "polynomial":
        return alpha_schedules.Polynomial(cfg.exponent)
    if cfg.schedule == "loglinear":
        return alpha_schedules.LogLinear(cfg.eps)
    if cfg.schedule not in alpha_schedules.SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; known: "
                         f"{', '.join(alpha_schedules.SCHEDULES)}")
    return alpha_schedules.SCHEDULES[cfg.schedule]()


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class ContinuousMethod:
    """`Method` over a continuous-time keep-or-jump process; see `methods/base.py`.

    Attributes:
        continuous_time: True: `nll(steps="continuous")` is the continuous-time bound.
    """

    continuous_time = True

    def __init__(self, cfg: Config, info: DataInfo) -> None:
        if not is_int(cfg.num_steps) or cfg.num_steps < 1:
            raise ValueError(f"method.num_steps must be positive, got {cfg.num_steps}")
        if not is_int(cfg.eval_samples) or cfg.eval_samples < 1:
            raise ValueError(f"method.eval_samples must be positive, got {cfg.eval_samples}")
        kind, k_data = cfg.transition.kind, info.num_classes
        self.mask_index: int | None = None
        if kind == "absorbing":
            if info.mask_index is not None:
                raise ValueError("the continuous absorbing process needs a mask token outside "
                                 f"the data; data {info.name or 'source'!r} uses the data "
                                 f"value {info.mask_index} as its mask")
            self.mask_index = k_data
        self.cfg, self.info = cfg, info
        self.num_classes = k_data + (kind == "absorbing")
        self.num_steps = cfg.num_steps
        self.excluded = self.mask_index  # an added mask token is never a value of x_0
        self.process = ContinuousProcess(kind, self.num_classes, build_schedule(cfg),
                                         self.mask_index)
        self._device = torch.device("cpu")
        self._discrete: dict[int, D3PM] = {}

    def to(self, device: torch.device | str) -> ContinuousMethod:
        self._device = torch.device(device)
        for proc in self._discrete.values():
            proc.to(device)
        return self

    # ----- continuous time ------------------------------------------------------------------
    def denoiser(self, model: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
        """`model` as the continuous-time denoiser(x_t, t), t float64 [B] in (0, 1]."""
        net = as_denoiser(model, self.excluded)
        return lambda x_t, t: net(x_t, quantise_time(t, self.num_steps))

    def losses(self, model: nn.Module, x_0: Tensor,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The continuous-time ELBO at one t per example (`cfg.time_sampling`), per example in
        nats: "loss" (= the estimate, minimised), "bound" (detached), "ce", and "t" (t_net,
        LongTensor [B] in 1..T, for the per-quartile diagnostics)."""
        t = draw_times(x_0.shape[0], x_0.device, generator, self.cfg.time_sampling)
        terms = self.process.elbo_terms(self.denoiser(model), x_0, t, generator)
        loss = terms["diffusion"] + terms["prior"].to(terms["diffusion"].dtype)
        return {"loss": loss, "bound": loss.detach(), "ce": terms["ce"],
                "t": quantise_time(t, self.num_steps)}

    @torch.no_grad()
    def continuous_bound(self, model: nn.Module, x_0: Tensor,
                         generator: torch.Generator | None = None) -> Tensor:
        """Monte-Carlo estimate of the continuous-time bound, float64 [B]: the mean over
        `cfg.eval_samples` draws, each with a fresh t ~ U(0, 1) per example."""
        denoiser, total = self.denoiser(model), None
        for _ in range(self.cfg.eval_samples):
            t = draw_times(x_0.shape[0], x_0.device, generator, "uniform")
            terms = self.process.elbo_terms(denoiser, x_0, t, generator)
            draw = terms["diffusion"].double() + terms["prior"]
            total = draw if total is None else total + draw
        return total / self.cfg.eval_samples

    # ----- discrete time --------------------------------------------------------------------
    def discrete_process(self, steps: int) -> D3PM:
        """The S-step D3PM of `ContinuousProcess.discretise`, built once per S."""
        if steps not in self._discrete:
            self._discrete[steps] = self.process.discretise(steps).to(self._device)
        return self._discrete[steps]

    def network_times(self, steps: int) -> Tensor:
        """t_net of each step i = 0..S' of the S-step D3PM: ceil(i T / S) (i >= 1), and T for
        the final jump of absorbing noise with alpha_1 > 0; LongTensor [S' + 1]."""
        T = self.num_steps
        table = [0] + [max(1, (i * T + steps - 1) // steps) for i in range(1, steps + 1)]
        extra = self.discrete_process(steps).num_steps - steps
        return torch.tensor(table + [T] * extra, dtype=torch.long)

    def discrete_denoiser(self, model: nn.Module, steps: int) -> Callable[[Tensor, Tensor], Tensor]:
        """`model` as the denoiser(x_t, i) of the S-step D3PM (i its step index)."""
        net, table = as_denoiser(model, self.excluded), self.network_times(steps)
        return lambda x_t, i: net(x_t, table.to(i.device)[i])

    def _check_steps(self, steps: object) -> int:
        if steps is None:
            return self.num_steps
        if not is_int(steps) or steps < 1:
            raise ValueError(f"number of steps must be a positive integer or "
                             f"{CONTINUOUS!r}, got {steps!r}")
        return steps

    @torch.no_grad()
    def nll(self, model: nn.Module, x_0: Tensor, steps: int | str | None = None,
            generator: torch.Generator | None = None) -> Tensor:
        """Per-example bound in nats [B]: the continuous-time Monte-Carlo estimate for
        `steps` None or "continuous", else the exact S-step discrete-time bound (`D3PM.nll_bound`
        of `discrete_process(S)`, one x_t per step)."""
        if steps is None or steps == CONTINUOUS:
            return self.continuous_bound(model, x_0, generator)
        s = self._check_steps(steps)
        return self.discrete_process(s).nll_bound(self.discrete_denoiser(model, s), x_0,
                                                  generator=generator)

    @torch.no_grad()
    def sample(self, model: nn.Module, num: int, steps: int | None = None,
               generator: torch.Generator | None = None,
               fixed: tuple[Tensor, Tensor] | None = None, trajectory: bool = False,
               sampler: str = "ancestral"):
        """Samples [num, *example_shape] of the S-step D3PM (S = `steps`, default T) by
        `D3PM.sample` with step rule `sampler`; a trajectory's times are t_net (0..T)."""
        s = self._check_steps(steps)
        shape = (num, *self.info.example_shape)
        device = _device(model)
        if fixed is not None:
            fixed = (fixed[0].to(device).expand(shape), fixed[1].to(device).expand(shape))
        out = self.discrete_process(s).sample(
            self.discrete_denoiser(model, s), shape, generator=generator, fixed=fixed,
            return_trajectory=trajectory, device=device, sampler=sampler)
        if not trajectory:
            return out
        x, path = out
        table = self.network_times(s).tolist()
        return x, [(table[i], x_i) for i, x_i in path]


def build(cfg: Config, info: DataInfo) -> ContinuousMethod:
    """The continuous-time method of `cfg` for data `info`."""
    return ContinuousMethod(cfg, info)
