"""Continuous-time keep-or-jump diffusion and its ELBO (MD4, MDLM; UDLM for uniform noise).

For t in [0, 1] and a keep schedule alpha_t (`alpha_schedules`),
    q(x_t | x_0) = alpha_t onehot(x_0) + (1 - alpha_t) pi,
independently per position, with pi the mask (kind "absorbing") or uniform over the K classes
(kind "uniform"). The denoiser is `denoiser(x_t, t) -> logits [B, ..., K]` of p~(x_0 | x_t, t)
with t float64 [B] in (0, 1]; the reverse model is D3PM's eq. (4) (x0-parameterisation) in the
limit of small steps. The ELBO on -log p(x_0), in nats per example, is

    L = prior + integral_0^1 E_{x_t ~ q(x_t | x_0)} sum_positions I(x_0, x_t, t) dt,

where I = lim_{dt -> 0} KL(q(x_{t-dt} | x_t, x_0) || p(x_{t-dt} | x_t)) / dt of D3PM's eqs. (3)
and (4) with alphabar = alpha (tests check this limit by finite differences):

* absorbing (MD4 eq. 10, MDLM eq. 10), with p~ giving the mask no mass:
      I = -alpha'_t / (1 - alpha_t) [x_t = m] (-log p~(x_0 | x_t));
* uniform (UDLM's closed form, derived here from the reverse jump rates): with
  mu = alpha p~ + (1 - alpha) / K (the model's marginal at t) and nu = q(. | x_0) at t,
      I = (lambda / K) [ (nu_x / mu_x - 1 - log(nu_x / mu_x)) + KL(nu || mu) ] / nu_x,
  lambda = -alpha'_t / alpha_t, x = x_t. Both reverse processes jump from x to y at rates
  (lambda / K) mu_y / mu_x (model) and (lambda / K) nu_y / nu_x (true), and I is the KL rate
  sum_y (r_p - r_q + r_q log(r_q / r_p)) between them.

The prior term is KL(q(x_1 | x_0) || pi) for uniform noise (0 when alpha_1 = 0). For absorbing
noise with alpha_1 > 0 (the log-linear schedule) q(x_1 | x_0) is not the all-mask prior, so the
process ends with one jump from alpha_1 to 0 at t = 1, whose term is
alpha_1 * sum_positions -log p~(x_0 | all masked, t = 1) (one denoiser call on the one
all-masked input).

`ContinuousProcess.discretise(S)` gives the D3PM on the grid t_i = i / S (alphabar_i =
alpha(i / S)), whose exact S-step bound is an upper bound of the continuous one for masking
with a time-independent Bayes denoiser, decreasing to it as S grows (tested by exact
expectations).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.functional import softplus

from discrete_diffusion import checks
from discrete_diffusion.alpha_schedules import AlphaSchedule
from discrete_diffusion.categorical import cross_entropy, log_normalise, uniform_noise
from discrete_diffusion.process import D3PM
from discrete_diffusion.transitions import Absorbing, Uniform
from discrete_diffusion.transitions._common import per_example

__all__ = ["KINDS", "TIME_SAMPLING", "ContinuousProcess", "draw_times", "quantise_time"]

KINDS = ("absorbing", "uniform")
TIME_SAMPLING = ("uniform", "antithetic")
T_MIN = 1e-30  # draws of t are clamped here: 1 - alpha_t stays > 0 (an event of prob. 1e-30)

ContinuousDenoiser = Callable[[Tensor, Tensor], Tensor]


def draw_times(batch: int, device: torch.device | str | None = None,
               generator: torch.Generator | None = None, how: str = "uniform") -> Tensor:
    """t for each example, float64 [batch] in [T_MIN, 1).

    Args:
        how: "uniform" (t ~ U(0, 1) independently) or "antithetic" (one uniform shift u of the
            evenly spaced grid: t_b = (b + u) / batch, a low-discrepancy draw; each t_b is
            still U(0, 1), so every per-example estimate stays unbiased).
    """
    if how == "uniform":
        t = uniform_noise((batch,), device, generator)
    elif how == "antithetic":
        u = uniform_noise((), device, generator)
        t = (torch.arange(batch, dtype=torch.float64, device=device) + u) / batch
    else:
        raise ValueError(f"time_sampling must be one of {TIME_SAMPLING}, got {how!r}")
    return t.clamp(min=T_MIN, max=1.0)


def quantise_time(t: Tensor, num_steps: int) -> Tensor:
    """The integer time of a network with `num_steps` = T time embeddings: ceil(t T) in 1..T,
    LongTensor like `t` (the network is a function of (x_t, t), so the ELBO stays exact)."""
    return torch.ceil(t * num_steps).long().clamp(1, num_steps)


class ContinuousProcess:
    """q(x_t | x_0) = alpha_t onehot(x_0) + (1 - alpha_t) pi in continuous time.

    Args:
        kind: "absorbing" (pi = the mask) or "uniform" (pi = uniform over K).
        num_classes: K (the mask included for absorbing).
        schedule: the keep schedule alpha_t.
        mask_index: the mask m (absorbing only).
    """

    def __init__(self, kind: str, num_classes: int, schedule: AlphaSchedule,
                 mask_index: int | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "absorbing" and (mask_index is None or not 0 <= mask_index < num_classes):
            raise ValueError(f"absorbing noise needs a mask index in 0..{num_classes - 1}, "
                             f"got {mask_index!r}")
        self.kind, self.num_classes, self.schedule = kind, num_classes, schedule
        self.mask_index = mask_index if kind == "absorbing" else None
        self.final_alpha = schedule.final_alpha()  # alpha_1

    # ----- forward process ------------------------------------------------------------------
    def q_sample(self, x_0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x_t ~ q(x_t | x_0): keep x_0 with probability alpha_t, else draw from pi.

        Args:
            x_0: LongTensor [B, ...]; t: float64 [B].
        """
        keep = uniform_noise(x_0.shape, x_0.device, generator) < per_example(
            self.schedule.alpha(t.double()), x_0.dim(), torch.float64)
        if self.kind == "absorbing":
            noise = torch.full_like(x_0, self.mask_index)
        else:
            noise = torch.randint(0, self.num_classes, x_0.shape, device=x_0.device,
                                  generator=generator)
        return torch.where(keep, x_0, noise)

    # ----- the ELBO -------------------------------------------------------------------------
    def integrand(self, log_x0: Tensor, x_0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """I(x_0, x_t, t) per position (nats per unit time; see the module docstring), in the
        dtype of `log_x0`.

        Args:
            log_x0: float [B, ..., K], normalised log p~(x_0 | x_t, t).
            x_0, x_t: LongTensor [B, ...].
            t: float64 [B] in (0, 1].
        """
        if self.kind == "absorbing":
            return self._absorbing_integrand(log_x0, x_0, x_t, t)
        return self._uniform_integrand(log_x0, x_0, x_t, t)

    def _absorbing_integrand(self, log_x0: Tensor, x_0: Tensor, x_t: Tensor,
                             t: Tensor) -> Tensor:
        s = self.schedule
        one_m_a = s.one_minus_alpha(t)
        # -alpha' / (1 - alpha); 0 where 1 - alpha = 0 (then nothing is masked), so that no
        # inf reaches a gradient through the masked-out branch
        weight = torch.where(one_m_a > 0, -s.alpha_prime(t) / one_m_a.clamp(min=1e-300), 0.0)
        ce = cross_entropy(log_x0, x_0)
        weight = per_example(weight, x_t.dim(), ce.dtype)
        return torch.where(x_t == self.mask_index, weight * ce, torch.zeros_like(ce))

    def _uniform_integrand(self, log_x0: Tensor, x_0: Tensor, x_t: Tensor,
                           t: Tensor) -> Tensor:
        s, k, n = self.schedule, self.num_classes, x_t.dim()
        a, one_m_a = s.alpha(t), s.one_minus_alpha(t)
        lam = -s.alpha_prime(t) / a
        log_c = one_m_a.log() - math.log(k)  # c = (1 - alpha) / K, the off-x_0 mass of nu
        offset = a.log() - log_c  # log(alpha / c)
        # w_j = log(mu_j / c) = softplus(log p~_j + log(alpha / c)) >= 0: the one K-wide pass
        w = softplus(log_x0 + per_example(offset, n + 1, log_x0.dtype))
        w_rest = (w.sum(-1) - w.gather(-1, x_0.unsqueeze(-1)).squeeze(-1)).double()
        a, one_m_a, lam, offset = (per_example(v, n, torch.float64)
                                   for v in (a, one_m_a, lam, offset))
        w_x0 = softplus(log_x0.gather(-1, x_0.unsqueeze(-1)).squeeze(-1).double() + offset)
        w_xt = softplus(log_x0.gather(-1, x_t.unsqueeze(-1)).squeeze(-1).double() + offset)
        v0 = softplus(offset)  # log(nu_{x_0} / c) = log(1 + alpha / c)
        same = x_t == x_0
        u = torch.where(same, v0, 0.0) - w_xt  # log(nu_x / mu_x)
        c_over_nu = torch.where(same, torch.exp(-v0), 1.0)  # c / nu_x
        # KL(nu || mu) / nu_x = (c / nu_x) [(1 + alpha / c)(v0 - w_x0) - sum_{j != x_0} w_j]
        kl_over_nu = c_over_nu * (torch.exp(v0) * (v0 - w_x0) - w_rest)
        inv_nu = torch.where(same, 1.0 / (a + one_m_a / k), k / one_m_a)
        value = lam / k * ((torch.expm1(u) - u) * inv_nu + kl_over_nu)
        return value.to(log_x0.dtype)

    def prior_term(self, denoiser: ContinuousDenoiser, x_0: Tensor) -> Tensor:
        """The prior term per example, float64 [B] (see the module docstring): KL(q(x_1 | x_0)
        || pi) for uniform noise; for absorbing noise alpha_1 * sum -log p~(x_0 | all masked,
        t = 1) when alpha_1 > 0 (one denoiser call on a single all-masked input), else 0."""
        a, positions = self.final_alpha, math.prod(x_0.shape[1:])
        zeros = torch.zeros(x_0.shape[0], dtype=torch.float64, device=x_0.device)
        if a == 0.0:
            return zeros
        if self.kind == "uniform":
            k = self.num_classes
            c = (1.0 - a) / k
            per_position = (a + c) * math.log(k * (a + c)) + (k - 1) * c * math.log(k * c)
            return zeros + positions * per_position
        masked = torch.full((1, *x_0.shape[1:]), self.mask_index, dtype=torch.long,
                            device=x_0.device)
        one = torch.ones(1, dtype=torch.float64, device=x_0.device)
        log_x0 = self._denoise(denoiser, masked, one).expand(*x_0.shape, self.num_classes)
        ce = cross_entropy(log_x0, x_0).reshape(x_0.shape[0], -1).sum(-1)
        return a * ce.double()

    def _denoise(self, denoiser: ContinuousDenoiser, x_t: Tensor, t: Tensor) -> Tensor:
        logits = denoiser(x_t, t)
        checks.check_logits(logits, x_t, self.num_classes)
        return log_normalise(logits)

    def elbo_terms(self, denoiser: ContinuousDenoiser, x_0: Tensor, t: Tensor,
                   generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """A one-sample estimate of the ELBO at times `t` float64 [B], per example:

            "diffusion": sum_positions I(x_0, x_t, t) with x_t ~ q(x_t | x_0), an unbiased
                estimate of the integral for t ~ U(0, 1);
            "prior": the prior term (float64);
            "ce": sum_positions -log p~(x_0 | x_t) (a diagnostic).
        """
        x_0 = checks.check_states(x_0, "x_0", self.num_classes)
        x_t = self.q_sample(x_0, t, generator)
        log_x0 = self._denoise(denoiser, x_t, t)
        b = x_0.shape[0]
        diffusion = self.integrand(log_x0, x_0, x_t, t).reshape(b, -1).sum(-1)
        ce = cross_entropy(log_x0, x_0).reshape(b, -1).sum(-1)
        return {"diffusion": diffusion, "prior": self.prior_term(denoiser, x_0), "ce": ce}

    # ----- the discrete-time process on a grid ----------------------------------------------
    def grid_alphas(self, steps: int) -> Tensor:
        """alpha at the grid t_i = i / S, i = 0..S, float64 [S + 1]; for absorbing noise with
        alpha_1 > 0, one more point at t = 1 with alpha = 0 (the final jump to the mask)."""
        if not checks.is_int(steps) or steps < 1:
            raise ValueError(f"number of steps must be a positive integer, got {steps!r}")
        grid = torch.arange(steps + 1, dtype=torch.float64) / steps
        alphas = self.schedule.alpha(grid)
        if self.kind == "absorbing" and self.final_alpha > 0:
            alphas = torch.cat([alphas, alphas.new_zeros(1)])
        return alphas

    def discretise(self, steps: int) -> D3PM:
        """The D3PM whose cumulative keep probability at step i is alpha(i / S):
        beta_i = 1 - alpha(i / S) / alpha((i - 1) / S) (plus a last beta = 1 for the final
        jump of `grid_alphas`), with Uniform or Absorbing transitions."""
        alphas = self.grid_alphas(steps)
        one_m = 1.0 - alphas
        grid = torch.arange(steps + 1, dtype=torch.float64) / steps
        one_m[: steps + 1] = self.schedule.one_minus_alpha(grid)  # no cancellation near 0
        drop = one_m[1:] - one_m[:-1]  # alpha_{i-1} - alpha_i >= 0
        betas = drop / alphas[:-1].clamp(min=1e-300)
        betas = torch.where(alphas[1:] == 0, 1.0, betas)  # reach alpha = 0 exactly (L_T finite)
        betas = betas.clamp(0.0, 1.0)
        if self.kind == "absorbing":
            transition = Absorbing(self.num_classes, self.mask_index)
        else:
            transition = Uniform(self.num_classes)
        return D3PM(transition, betas)
