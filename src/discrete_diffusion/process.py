"""The D3PM process: forward corruption, posteriors, losses, bounds and sampling.

Austin et al. (2021), section 3. Notation: K states, x_0 data, t in 1..T, Q_t row-stochastic
one-step matrices, Qbar_t = Q_1...Q_t, Q_{s->t} = Q_{s+1}...Q_t. The denoiser is a callable
`denoiser(x_t, t) -> logits [B, ..., K]` of p~(x_0 | x_t), with t a LongTensor [B] in 1..T.

Choices, stated once:
    * x0-parameterisation, eq. (4), at every t, t = 1 included: p(x_{s} | x_t) is proportional
      to q(x_t | x_s) (p~ Qbar_s)(x_s); at s = 0 it is p(x_0 | x_t) ~ q(x_t | x_0) p~(x_0 | x_t).
      (The authors' text code does the same; their image code used raw p~ at t = 1.)
    * Every loss is in nats, per example, summed over all positions of the example.
    * All categorical maths is in log space; zero probabilities are -inf, never NaN.
    * Random draws (times, x_t, samples) take an optional torch.Generator; sampling uses
      Gumbel-max with float64 noise.

Optional fused operations. A transition may define any of these methods; each must equal the
generic path, which `D3PM` composes from the `Transition` operations (tests compare the two on
tiny processes through `D3PM(..., fused=True)` and `fused=False`):
    sample_cumulative(x_0, t, generator) -> LongTensor        x_t ~ q(x_t | x_0)
    log_q_posterior(x_0, x_t, s, t) -> [B, ..., K]           normalised eq. (3), integer x_0
    log_p_posterior(log_x0, x_t, s, t) -> [B, ..., K]        normalised eq. (4) from log p~
    posterior_kl(x_0, x_t, log_x0, s, t) -> [B, ...]         KL(q || p) per position
`Uniform`, `Absorbing` and `MaskUniform` define all four, each in O(K) per token with one
K-wide pass (two for MaskUniform's KL) besides the denoiser's log-softmax. Range checks that
depend only on the schedule are made at setup: the fused loss term of Uniform and Absorbing has
no device sync (MaskUniform's has one, for tokens where p~ is nearly sure of the mask).
Which are used is decided once, at construction, by the `fused` argument of `D3PM`: by default
the transition's `preferred_fused_operations` (MaskUniform leaves its posteriors to the generic
path below 64 classes, where that is faster); `proc.fused_operations` tells which were chosen.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from discrete_diffusion.categorical import categorical_kl, cross_entropy, gumbel_max
from discrete_diffusion.transitions._common import check_betas, per_example
from discrete_diffusion.transitions.base import Transition

Denoiser = Callable[[Tensor, Tensor], Tensor]
Progress = Callable[[int, int], None]
LOSSES = ("hybrid", "vb", "ce")
TIME_SAMPLING = ("uniform", "stratified")


class D3PM:
    """A discrete diffusion process: a transition family bound to a noise schedule.

    Args:
        transition: a `Transition` (Uniform, Absorbing, Dense, ...); it is set up here.
        betas: float [T], beta_1..beta_T in [0, 1] (see `schedules`).
        fused: which of the transition's optional fused operations to use (see the module
            docstring): None, those it prefers at its K (`preferred_fused_operations`); True,
            all it defines (an error if it defines none); False, none: the generic path.

    Attributes:
        fused_operations: frozenset of the names of the fused operations in use (empty on the
            generic path).
    """

    def __init__(self, transition: Transition, betas: Tensor, fused: bool | None = None) -> None:
        if not isinstance(transition, Transition):
            raise ValueError(f"transition must be a Transition, got {type(transition).__name__}")
        self._betas = check_betas(betas)
        self.transition = transition
        transition.setup(self._betas)
        self.fused_operations = transition.select_fused(fused)

        def fused_op(name: str) -> Callable | None:  # None: the generic path (`_q_sample`, ...)
            return getattr(transition, name) if name in self.fused_operations else None

        self._sample_cumulative = fused_op("sample_cumulative")
        self._log_q_posterior = fused_op("log_q_posterior")
        self._log_p_posterior = fused_op("log_p_posterior")
        self._posterior_kl = fused_op("posterior_kl")
        self._prior: Tensor | None = None  # L_T per state of x_0, built on first use

    # ----- basic views ----------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        """T."""
        return self._betas.shape[0]

    @property
    def num_classes(self) -> int:
        """K."""
        return self.transition.num_classes

    @property
    def betas(self) -> Tensor:
        """float64 [T], beta_1..beta_T."""
        return self._betas

    def transition_matrix(self, t: int) -> Tensor:
        """Dense Q_t, float64 [K, K], t in 1..T."""
        return self.transition.transition_matrix(t)

    def cumulative_matrix(self, t: int) -> Tensor:
        """Dense Qbar_t, float64 [K, K], t in 0..T."""
        return self.transition.cumulative_matrix(t)

    def to(self, device: torch.device | str) -> D3PM:
        """Move the transition's tables to `device`; computations follow the device of x_0."""
        self.transition.to(device)
        if self._prior is not None:
            self._prior = self._prior.to(device)
        return self

    def timestep_grid(self, step_size: int = 1, steps: int | None = None) -> list[int]:
        """The times visited by `nll_bound` and `sample`: 0 = t_0 < t_1 < ... < t_S = T.

        Args:
            step_size: k, dividing T: the grid 0, k, 2k, ..., T.
            steps: S in 1..T (instead of step_size): S evenly spaced rounded times,
                t_i = round(i T / S), strictly increasing since T / S >= 1.
        """
        T = self.num_steps
        if steps is not None:
            if step_size != 1:
                raise ValueError("give either step_size or steps, not both")
            if not _is_int(steps) or not 1 <= steps <= T:
                raise ValueError(f"steps must be an integer in 1..{T}, got {steps!r}")
            return [(2 * i * T + steps) // (2 * steps) for i in range(steps + 1)]
        if not _is_int(step_size) or step_size < 1 or T % step_size != 0:
            raise ValueError(f"step_size must be a positive integer dividing T = {T}, "
                             f"got {step_size!r}")
        return list(range(0, T + 1, step_size))

    # ----- forward process ------------------------------------------------------------------
    def q_probs(self, x_0: Tensor, t: int | Tensor) -> Tensor:
        """q(x_t | x_0) = Cat(x_0 Qbar_t), float32 [B, ..., K]; t in 0..T."""
        x_0 = self._check_x(x_0, "x_0")
        t = self._times(t, x_0, low=0)
        return self.transition.log_cumulative(x_0, t).exp()

    def q_sample(
        self, x_0: Tensor, t: int | Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """x_t ~ q(x_t | x_0), LongTensor shaped like x_0; t in 0..T."""
        x_0 = self._check_x(x_0, "x_0")
        t = self._times(t, x_0, low=0)
        return self._q_sample(x_0, t, generator)

    def _q_sample(self, x_0: Tensor, t: Tensor, generator: torch.Generator | None) -> Tensor:
        if self._sample_cumulative is not None:
            return self._sample_cumulative(x_0, t, generator)
        return gumbel_max(self.transition.log_cumulative(x_0, t), generator)

    # ----- posteriors -----------------------------------------------------------------------
    def q_posterior_logits(
        self,
        x_0: Tensor,
        x_t: Tensor,
        t: int | Tensor,
        step_size: int = 1,
        s: int | Tensor | None = None,
    ) -> Tensor:
        """Normalised log q(x_s | x_t, x_0), eq. (3) with s = t - step_size (or `s`):
        proportional to q(x_t | x_s) q(x_s | x_0).

        Args:
            x_0: LongTensor [B, ...], or probabilities float [B, ..., K] (then q(x_s | x_0)
                is x_0 Qbar_s).
            x_t: LongTensor [B, ...].
            t: int or LongTensor [B], in 1..T.
            step_size: k >= 1 with t - k >= 0; ignored when `s` is given.
            s: int or LongTensor [B] with 0 <= s < t, an alternative to step_size.
        Returns:
            float [B, ..., K].
        """
        x_t = self._check_x(x_t, "x_t")
        s, t = self._span(x_t, t, step_size, s)
        if torch.is_floating_point(x_0):
            log_x0 = self._check_probs(x_0, x_t).log()
            log_cum = self.transition.log_cumulative_soft(log_x0, s)
        else:
            x_0 = self._check_x(x_0, "x_0", like=x_t)
            return self._q_logits(x_0, x_t, s, t)
        return self._posterior(log_cum, x_t, s, t)

    def _q_logits(self, x_0: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        if self._log_q_posterior is not None:
            return self._log_q_posterior(x_0, x_t, s, t)
        return self._posterior(self.transition.log_cumulative(x_0, s), x_t, s, t)

    def p_logits(
        self,
        x0_logits: Tensor,
        x_t: Tensor,
        t: int | Tensor,
        step_size: int = 1,
        s: int | Tensor | None = None,
    ) -> Tensor:
        """Normalised log p(x_s | x_t), eq. (4) with s = t - step_size (or `s`): proportional
        to q(x_t | x_s) (p~ Qbar_s)(x_s), at every t (s = 0 included).

        Args:
            x0_logits: float [B, ..., K], logits of p~(x_0 | x_t).
            x_t: LongTensor [B, ...].
            t, step_size, s: as in `q_posterior_logits`.
        Returns:
            float [B, ..., K].
        """
        x_t = self._check_x(x_t, "x_t")
        s, t = self._span(x_t, t, step_size, s)
        self._check_logits(x0_logits, x_t)
        return self._p_logits(x0_logits.log_softmax(-1), x_t, s, t)

    def _p_logits(self, log_x0: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        if self._log_p_posterior is not None:
            return self._log_p_posterior(log_x0, x_t, s, t)
        return self._posterior(self.transition.log_cumulative_soft(log_x0, s), x_t, s, t)

    def _posterior(self, log_cum_s: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """Normalise log q(x_t | x_s) + log_cum_s over x_s."""
        return (self.transition.log_transition_column(x_t, s, t) + log_cum_s).log_softmax(-1)

    # ----- losses ---------------------------------------------------------------------------
    def prior_kl(self, x_0: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) || p(x_T)) with p(x_T) the transition's stationary
        distribution, nats per example, float64 [B] (summed over positions; +inf if
        q(x_T | x_0) puts mass where the prior has none)."""
        x_0 = self._check_x(x_0, "x_0")
        return self._prior_kl(x_0)

    def _prior_kl(self, x_0: Tensor) -> Tensor:
        table = self._prior_table()
        return _sum_positions(table.to(x_0.device)[x_0])

    def _prior_table(self) -> Tensor:
        """KL(q(x_T | x_0 = k) || p(x_T)) for every state k, float64 [K], built once (in row
        chunks, O(K^2) work) so that L_T costs a gather per token."""
        if self._prior is None:
            k, T = self.num_classes, self.num_steps
            log_pi = self.transition.stationary().log().to(torch.float64)
            rows, chunk = [], max(1, (1 << 22) // k)
            with torch.no_grad():
                for start in range(0, k, chunk):
                    x = torch.arange(start, min(start + chunk, k))[None]
                    log_q = self.transition.log_cumulative(x, torch.tensor([T]))[0].double()
                    rows.append(categorical_kl(log_q, log_pi.to(log_q.device)).cpu())
            self._prior = torch.cat(rows)
        return self._prior

    def training_losses(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        loss: str = "hybrid",
        hybrid_lambda: float = 0.01,
        generator: torch.Generator | None = None,
        time_sampling: str = "uniform",
    ) -> dict[str, Tensor]:
        """One-timestep training losses (paper section 3.4), per example.

        t ~ U{1..T} per example ("stratified": one low-discrepancy draw across the batch,
        randomly assigned), x_t ~ q(x_t | x_0), then
            vb    = L_{t-1} = sum_positions KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),
                    and at t = 1 the decoder term -log p(x_0 | x_1) (eq. 4);
            ce    = sum_positions -log p~(x_0 | x_t);
            bound = L_T + T * vb, an unbiased one-sample estimate of the full bound;
            loss  = vb + hybrid_lambda * ce ("hybrid"), vb ("vb") or ce ("ce").

        Returns:
            dict of [B] tensors (nats): "loss", "vb", "ce", "bound", and "t" (LongTensor [B]).
        """
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if not isinstance(hybrid_lambda, (int, float)) or not hybrid_lambda >= 0:
            raise ValueError(f"hybrid_lambda must be a number >= 0, got {hybrid_lambda!r}")
        x_0 = self._check_x(x_0, "x_0")
        t = self._draw_times(x_0.shape[0], x_0.device, generator, time_sampling)
        x_t = self._q_sample(x_0, t, generator)
        log_x0 = self._denoise(denoiser, x_t, t).log_softmax(-1)
        vb = _sum_positions(self._vb_term(log_x0, x_0, x_t, t - 1, t))
        ce = _sum_positions(cross_entropy(log_x0, x_0))
        out = {"vb": vb, "ce": ce, "t": t}
        hybrid = vb if hybrid_lambda == 0 else vb + hybrid_lambda * ce  # exact at 0 (inf ce)
        out["loss"] = {"hybrid": hybrid, "vb": vb, "ce": ce}[loss]
        out["bound"] = self._prior_kl(x_0).to(vb.dtype) + self.num_steps * vb.detach()
        return out

    def vb_term(
        self,
        x0_logits: Tensor,
        x_0: Tensor,
        x_t: Tensor,
        t: int | Tensor,
        step_size: int = 1,
        s: int | Tensor | None = None,
    ) -> Tensor:
        """The term of the bound for the step t -> s, per position, float [B, ...]:
        KL(q(x_s | x_t, x_0) || p(x_s | x_t)), and -log p(x_0 | x_t) where s = 0; what
        `training_losses` ("vb") and `nll_bound` sum over positions, by the same path.

        Args:
            x0_logits: float [B, ..., K], logits of p~(x_0 | x_t).
            x_0, x_t: LongTensor [B, ...].
            t, step_size, s: as in `q_posterior_logits`.
        """
        x_t = self._check_x(x_t, "x_t")
        x_0 = self._check_x(x_0, "x_0", like=x_t)
        s, t = self._span(x_t, t, step_size, s)
        self._check_logits(x0_logits, x_t)
        return self._vb_term(x0_logits.log_softmax(-1), x_0, x_t, s, t)

    def _vb_term(self, log_x0: Tensor, x_0: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """Per position: KL(q(x_s | x_t, x_0) || p(x_s | x_t)), and -log p(x_0 | x_t) where
        s = 0 (the posterior is then a point mass on x_0 and the KL equals it anyway)."""
        if self._posterior_kl is not None:
            return self._posterior_kl(x_0, x_t, log_x0, s, t)
        log_p = self._p_logits(log_x0, x_t, s, t)
        decoder = cross_entropy(log_p, x_0)
        if bool((s == 0).all()):
            return decoder
        kl = categorical_kl(self._q_logits(x_0, x_t, s, t), log_p)
        return torch.where(per_example(s == 0, kl.dim()), decoder, kl)

    def _draw_times(
        self, batch: int, device: torch.device, generator: torch.Generator | None, how: str
    ) -> Tensor:
        T = self.num_steps
        if how == "uniform":
            return torch.randint(1, T + 1, (batch,), device=device, generator=generator)
        if how != "stratified":
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLING}, got {how!r}")
        u = torch.rand((), dtype=torch.float64, device=device, generator=generator)
        grid = (torch.arange(batch, dtype=torch.float64, device=device) + u) / batch
        t = (grid * T).long().clamp(max=T - 1) + 1
        return t[torch.randperm(batch, device=device, generator=generator)]

    # ----- the bound ------------------------------------------------------------------------
    @torch.no_grad()
    def nll_bound(
        self,
        denoiser: Denoiser,
        x_0: Tensor,
        step_size: int = 1,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        progress: Progress | None = None,
        return_terms: bool = False,
    ) -> Tensor | dict[str, Tensor]:
        """The variational bound on -log p(x_0) in nats per example [B] (eq. 1, no gradient):

            L_T + sum_{i = S..2} KL(q(x_{t_{i-1}} | x_{t_i}, x_0) || p(x_{t_{i-1}} | x_{t_i}))
                + L_0,  L_0 = -log p(x_0 | x_{t_1}),

        over the grid of `timestep_grid(step_size, steps)`, each term with a fresh
        x_t ~ q(x_t | x_0). One denoiser call per grid step, batched over examples; the terms
        are accumulated and returned in float64.

        Args:
            progress: optional callable(done, total) after each step.
            return_terms: return {"prior", "diffusion", "decoder", "total"} instead.
        """
        x_0 = self._check_x(x_0, "x_0")
        grid = self.timestep_grid(step_size, steps)
        prior = self._prior_kl(x_0)
        diffusion = torch.zeros_like(prior)
        decoder = torch.zeros_like(prior)
        pairs = list(zip(grid[:-1], grid[1:]))[::-1]
        for done, (s_int, t_int) in enumerate(pairs, start=1):
            s, t = (torch.full_like(prior, v, dtype=torch.long) for v in (s_int, t_int))
            x_t = self._q_sample(x_0, t, generator)
            log_x0 = self._denoise(denoiser, x_t, t).log_softmax(-1)
            term = _sum_positions(self._vb_term(log_x0, x_0, x_t, s, t)).double()
            if s_int == 0:
                decoder = term
            else:
                diffusion = diffusion + term
            if progress is not None:
                progress(done, len(pairs))
        total = prior + diffusion + decoder
        if return_terms:
            return {"prior": prior, "diffusion": diffusion, "decoder": decoder, "total": total}
        return total

    # ----- sampling -------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        denoiser: Denoiser,
        shape: tuple[int, ...] | torch.Size,
        step_size: int = 1,
        generator: torch.Generator | None = None,
        fixed: tuple[Tensor, Tensor] | None = None,
        return_trajectory: bool = False,
        progress: Progress | None = None,
        steps: int | None = None,
        argmax_last: bool = False,
        device: torch.device | str | None = None,
    ) -> Tensor | tuple[Tensor, list[tuple[int, Tensor]]]:
        """Ancestral sampling: x_T ~ p(x_T) (the stationary distribution), then
        x_s ~ p(x_s | x_t), eq. (4), down the grid of `timestep_grid(step_size, steps)`.

        The last step is a draw from p(x_0 | x_{t_1}) too (argmax with `argmax_last=True`).

        Args:
            shape: [B, ...], the shape of x_0.
            fixed: optional (mask, values), bool [*shape] and LongTensor [*shape]: positions
                where mask is True hold `values` throughout, and the denoiser sees them
                (infilling, reconstructing corrupted examples).
            return_trajectory: also return [(t, x_t)] for every visited t, T first, 0 last.
            progress: optional callable(done, total) after each step.
            device: where to sample (default: the device of `fixed`, else of `generator`,
                else CPU).
        Returns:
            LongTensor [*shape], or (x_0, trajectory).
        """
        shape = _check_shape(shape)
        grid = self.timestep_grid(step_size, steps)
        device = _sample_device(device, fixed, generator)
        hold = self._check_fixed(fixed, shape, device)
        log_pi = self.transition.stationary().to(device).log()
        x = self._hold(gumbel_max(log_pi.expand(*shape, -1), generator), hold)
        trajectory = [(grid[-1], x)]
        pairs = list(zip(grid[:-1], grid[1:]))[::-1]
        for done, (s_int, t_int) in enumerate(pairs, start=1):
            s, t = (torch.full((shape[0],), v, dtype=torch.long, device=device)
                    for v in (s_int, t_int))
            log_x0 = self._denoise(denoiser, x, t).log_softmax(-1)
            log_p = self._p_logits(log_x0, x, s, t)
            last_argmax = argmax_last and s_int == 0
            x = log_p.argmax(-1) if last_argmax else gumbel_max(log_p, generator)
            x = self._hold(x, hold)
            trajectory.append((s_int, x))
            if progress is not None:
                progress(done, len(pairs))
        return (x, trajectory) if return_trajectory else x

    @staticmethod
    def _hold(x: Tensor, hold: tuple[Tensor, Tensor] | None) -> Tensor:
        return x if hold is None else torch.where(hold[0], hold[1], x)

    # ----- validation -----------------------------------------------------------------------
    def _check_x(self, x: Tensor, name: str, like: Tensor | None = None) -> Tensor:
        if not isinstance(x, Tensor) or x.dtype in (torch.bool,) or x.is_floating_point() \
                or x.is_complex():
            raise ValueError(f"{name} must be an integer tensor [B, ...]")
        if x.dim() < 1:
            raise ValueError(f"{name} must have a batch dimension, got a scalar")
        if like is not None and x.shape != like.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(like.shape)}")
        low, high = _min_max(x)
        if low < 0 or high >= self.num_classes:
            raise ValueError(f"{name} values must lie in [0, {self.num_classes}), got "
                             f"[{low}, {high}]")
        return x.long()

    def _times(self, t: int | Tensor, x: Tensor, low: int = 1) -> Tensor:
        """t as a LongTensor [B] on the device of x, checked to lie in low..T."""
        T, batch = self.num_steps, x.shape[0]
        if _is_int(t):
            if not low <= t <= T:
                raise ValueError(f"t must lie in {low}..{T}, got {t}")
            return torch.full((batch,), int(t), dtype=torch.long, device=x.device)
        if not isinstance(t, Tensor) or t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"t must be an int or an integer tensor [B], got {type(t).__name__}")
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must have shape [{batch}], got {tuple(t.shape)}")
        t_min, t_max = _min_max(t)
        if t_min < low or t_max > T:
            raise ValueError(f"t must lie in {low}..{T}, got [{t_min}, {t_max}]")
        return t.long().to(x.device)

    def _span(
        self, x_t: Tensor, t: int | Tensor, step_size: int, s: int | Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """(s, t) as LongTensors [B] with 0 <= s < t <= T."""
        t = self._times(t, x_t, low=1)
        if s is None:
            if not _is_int(step_size) or step_size < 1:
                raise ValueError(f"step_size must be a positive integer, got {step_size!r}")
            s = t - step_size
        else:
            if step_size != 1:
                raise ValueError("give either step_size or s, not both")
            s = self._times(s, x_t, low=0)
        if bool(((s < 0) | (s >= t)).any()):
            raise ValueError("need 0 <= s < t (s = t - step_size) for every example")
        return s, t

    def _check_logits(self, logits: Tensor, x_t: Tensor) -> None:
        expected = (*x_t.shape, self.num_classes)
        if not isinstance(logits, Tensor) or not logits.is_floating_point():
            raise ValueError("denoiser output must be a float tensor of logits [B, ..., K]")
        if tuple(logits.shape) != expected:
            raise ValueError(f"denoiser output has shape {tuple(logits.shape)}, expected "
                             f"{expected} (x_t shape + K = {self.num_classes})")

    def _check_probs(self, probs: Tensor, x_t: Tensor) -> Tensor:
        self._check_logits(probs, x_t)
        if bool((probs < 0).any()) or float((probs.sum(-1) - 1).abs().max()) > 1e-4:
            raise ValueError("soft x_0 must hold probabilities [B, ..., K] summing to one")
        return probs

    def _denoise(self, denoiser: Denoiser, x_t: Tensor, t: Tensor) -> Tensor:
        logits = denoiser(x_t, t)
        self._check_logits(logits, x_t)
        return logits

    def _check_fixed(
        self, fixed: tuple[Tensor, Tensor] | None, shape: tuple[int, ...], device: torch.device
    ) -> tuple[Tensor, Tensor] | None:
        if fixed is None:
            return None
        if not isinstance(fixed, (tuple, list)) or len(fixed) != 2:
            raise ValueError("fixed must be a pair (bool mask, values)")
        mask, values = fixed
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != shape:
            raise ValueError(f"fixed mask must be a bool tensor of shape {shape}")
        if not isinstance(values, Tensor) or values.shape != shape:
            raise ValueError(f"fixed values must be a tensor of shape {shape}")
        values = torch.where(mask, values, torch.zeros_like(values))
        self._check_x(values, "fixed values")
        return mask.to(device), values.long().to(device)


def _min_max(x: Tensor) -> tuple[int, int]:
    """Smallest and largest value of a non-empty integer tensor, with one device sync."""
    if x.numel() == 0:
        return 0, 0
    low, high = torch.aminmax(x.reshape(-1))
    return tuple(int(v) for v in torch.stack([low, high]).tolist())


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _sum_positions(x: Tensor) -> Tensor:
    """Sum a per-position tensor [B, ...] to per-example [B]."""
    return x.reshape(x.shape[0], -1).sum(-1)


def _check_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) < 1 \
            or not all(_is_int(n) and n >= 1 for n in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive ints, got {shape!r}")
    return tuple(shape)


def _sample_device(
    device: torch.device | str | None,
    fixed: tuple[Tensor, Tensor] | None,
    generator: torch.Generator | None,
) -> torch.device:
    if device is not None:
        return torch.device(device)
    if fixed is not None and isinstance(fixed[0], Tensor):
        return fixed[0].device
    if generator is not None:
        return generator.device
    return torch.device("cpu")
