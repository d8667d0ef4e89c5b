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
      Gumbel-max with float64 noise. The sampling loop and its step rules are in `sampling`.

Optional fused operations. A transition may define any of these methods; each must equal the
generic path, which `D3PM` composes from the `Transition` operations (tests compare the two on
tiny processes through `D3PM(..., fused=True)` and `fused=False`):
    sample_cumulative(x_0, t, generator) -> LongTensor        x_t ~ q(x_t | x_0)
    log_q_posterior(x_0, x_t, s, t) -> [B, ..., K]           normalised eq. (3), integer x_0
    log_p_posterior(log_x0, x_t, s, t) -> [B, ..., K]        normalised eq. (4) from log p~
    posterior_kl(x_0, x_t, log_x0, s, t, nll=None) -> [B, ...]  KL(q || p) per position
`Uniform`, `Absorbing` and `MaskUniform` define all four, each in O(K) per token with one
K-wide pass (two for MaskUniform's KL) besides the denoiser's log-softmax. Range checks that
depend only on the schedule are made at setup: the fused loss term of Uniform and Absorbing has
no device sync (MaskUniform's has one, for tokens where p~ is nearly sure of the mask).
Which are used is decided once, at construction, by the `fused` argument of `D3PM`: by default
the transition's `preferred_fused_operations` (MaskUniform leaves its posteriors to the generic
path below 64 classes, where that is faster); `proc.fused_operations` tells which were chosen.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from discrete_diffusion import checks, sampling, times
from discrete_diffusion.categorical import categorical_kl, cross_entropy, gumbel_max, log_normalise
from discrete_diffusion.transitions._common import check_betas, per_example
from discrete_diffusion.transitions.base import Transition

Denoiser = Callable[[Tensor, Tensor], Tensor]
Progress = Callable[[int, int], None]
LOSSES = ("hybrid", "vb", "ce")


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
        """The times visited by `nll_bound` and `sample`, 0 = t_0 < ... < t_S = T: multiples
        of `step_size` or `steps` evenly spaced times (see `times.timestep_grid`)."""
        return times.timestep_grid(self.num_steps, step_size, steps)

    # ----- forward process ------------------------------------------------------------------
    def q_probs(self, x_0: Tensor, t: int | Tensor) -> Tensor:
        """q(x_t | x_0) = Cat(x_0 Qbar_t), float32 [B, ..., K]; t in 0..T."""
        x_0 = checks.check_states(x_0, "x_0", self.num_classes)
        t = checks.check_times(t, x_0, self.num_steps, low=0)
        return self.transition.log_cumulative(x_0, t).exp()

    def q_sample(
        self, x_0: Tensor, t: int | Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """x_t ~ q(x_t | x_0), LongTensor shaped like x_0; t in 0..T."""
        x_0 = checks.check_states(x_0, "x_0", self.num_classes)
        t = checks.check_times(t, x_0, self.num_steps, low=0)
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
        x_t = checks.check_states(x_t, "x_t", self.num_classes)
        s, t = checks.check_span(x_t, t, step_size, s, self.num_steps)
        if torch.is_floating_point(x_0):
            log_x0 = checks.check_probs(x_0, x_t, self.num_classes).log()
            log_cum = self.transition.log_cumulative_soft(log_x0, s)
        else:
            x_0 = checks.check_states(x_0, "x_0", self.num_classes, like=x_t)
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
        x_t = checks.check_states(x_t, "x_t", self.num_classes)
        s, t = checks.check_span(x_t, t, step_size, s, self.num_steps)
        checks.check_logits(x0_logits, x_t, self.num_classes)
        return self.log_p_posterior(log_normalise(x0_logits), x_t, s, t)

    def log_p_posterior(self, log_x0: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """`p_logits` for step rules, unchecked and without a device sync: normalised
        log p~(x_0 | x_t) float [B, ..., K], x_t LongTensor [B, ...], s < t LongTensors [B]."""
        if self._log_p_posterior is not None:
            return self._log_p_posterior(log_x0, x_t, s, t)
        return self._posterior(self.transition.log_cumulative_soft(log_x0, s), x_t, s, t)

    def denoise(self, denoiser: Denoiser, x_t: Tensor, t: Tensor) -> Tensor:
        """Logits of p~(x_0 | x_t), float [B, ..., K], checked to be shaped x_t + K."""
        logits = denoiser(x_t, t)
        checks.check_logits(logits, x_t, self.num_classes)
        return logits

    def _posterior(self, log_cum_s: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """Normalise log q(x_t | x_s) + log_cum_s over x_s."""
        return (self.transition.log_transition_column(x_t, s, t) + log_cum_s).log_softmax(-1)

    # ----- losses ---------------------------------------------------------------------------
    def prior_kl(self, x_0: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) || p(x_T)) with p(x_T) the transition's stationary
        distribution, nats per example, float64 [B] (summed over positions; +inf if
        q(x_T | x_0) puts mass where the prior has none)."""
        x_0 = checks.check_states(x_0, "x_0", self.num_classes)
        return self._prior_kl(x_0)

    def _prior_kl(self, x_0: Tensor) -> Tensor:
        table = self._prior_table()
        return _sum_positions(table.to(x_0.device)[x_0])

    def _prior_table(self) -> Tensor:
        """KL(q(x_T | x_0 = k) || p(x_T)) for every state k, float64 [K], built once (L_T
        is then a gather per token). All float64: rows log Qbar_T[k, :] are
        `log_cumulative_soft` of float64 one-hot rows (float32 rounding of log q would swamp
        a KL of 1e-8 nats), in chunks of ~2^22 entries (O(K) memory a row); round-off below
        zero is clamped, a KL being >= 0."""
        if self._prior is None:
            k, T = self.num_classes, self.num_steps
            log_pi = self.transition.stationary().to(torch.float64).log()
            rows, chunk = [], max(1, (1 << 22) // k)
            with torch.no_grad():
                for start in range(0, k, chunk):
                    x = torch.arange(start, min(start + chunk, k))
                    one_hot = torch.full((1, x.numel(), k), -math.inf, dtype=torch.float64)
                    one_hot[0, torch.arange(x.numel()), x] = 0.0
                    log_q = self.transition.log_cumulative_soft(one_hot, torch.tensor([T]))[0]
                    rows.append(categorical_kl(log_q.double(), log_pi.to(log_q.device)).cpu())
            self._prior = torch.cat(rows).clamp(min=0.0)
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
        x_0 = checks.check_states(x_0, "x_0", self.num_classes)
        t = times.draw_times(self.num_steps, x_0.shape[0], x_0.device, generator, time_sampling)
        x_t = self._q_sample(x_0, t, generator)
        log_x0 = log_normalise(self.denoise(denoiser, x_t, t))
        nll = cross_entropy(log_x0, x_0)  # one gather (and one K-wide gradient) for both terms
        vb = _sum_positions(self._vb_term(log_x0, x_0, x_t, t - 1, t, nll))
        ce = _sum_positions(nll)
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
        x_t = checks.check_states(x_t, "x_t", self.num_classes)
        x_0 = checks.check_states(x_0, "x_0", self.num_classes, like=x_t)
        s, t = checks.check_span(x_t, t, step_size, s, self.num_steps)
        checks.check_logits(x0_logits, x_t, self.num_classes)
        return self._vb_term(log_normalise(x0_logits), x_0, x_t, s, t)

    def _vb_term(self, log_x0: Tensor, x_0: Tensor, x_t: Tensor, s: Tensor, t: Tensor,
                 nll: Tensor | None = None) -> Tensor:
        """Per position: KL(q(x_s | x_t, x_0) || p(x_s | x_t)), and -log p(x_0 | x_t) where
        s = 0 (the posterior is then a point mass on x_0 and the KL equals it anyway). `nll`,
        -log p~(x_0 | x_t) when the caller has it, is reused by the fused term."""
        if self._posterior_kl is not None:
            return self._posterior_kl(x_0, x_t, log_x0, s, t, nll=nll)
        log_p = self.log_p_posterior(log_x0, x_t, s, t)
        decoder = cross_entropy(log_p, x_0)
        if bool((s == 0).all()):
            return decoder
        kl = categorical_kl(self._q_logits(x_0, x_t, s, t), log_p)
        return torch.where(per_example(s == 0, kl.dim()), decoder, kl)

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
        x_0 = checks.check_states(x_0, "x_0", self.num_classes)
        grid = self.timestep_grid(step_size, steps)
        prior = self._prior_kl(x_0)
        diffusion = torch.zeros_like(prior)
        decoder = torch.zeros_like(prior)
        pairs = list(zip(grid[:-1], grid[1:]))[::-1]
        for done, (s_int, t_int) in enumerate(pairs, start=1):
            s, t = (torch.full_like(prior, v, dtype=torch.long) for v in (s_int, t_int))
            x_t = self._q_sample(x_0, t, generator)
            log_x0 = log_normalise(self.denoise(denoiser, x_t, t))
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
        shape: tuple[int, ...] | torch.Size | None = None,
        step_size: int = 1,
        generator: torch.Generator | None = None,
        fixed: tuple[Tensor, Tensor] | None = None,
        return_trajectory: bool = False,
        progress: Progress | None = None,
        steps: int | None = None,
        argmax_last: bool = False,
        device: torch.device | str | None = None,
        start: tuple[int, Tensor] | None = None,
        sampler: str = "ancestral",
    ) -> Tensor | tuple[Tensor, list[tuple[int, Tensor]]]:
        """Sample x_0 down the grid of `timestep_grid(step_size, steps)`, from x_T ~ p(x_T)
        (the stationary distribution) or from a given state `start` = (t, x_t) over the grid
        points below t. Each step is the rule `sampler` of `sampling.STEP_RULES`:
        "ancestral" draws x_s ~ p(x_s | x_t), eq. (4), the step to 0 included (argmax there
        with `argmax_last=True`). The loop is `sampling.run_chain`.

        Args:
            shape: [B, ...], the shape of x_0 (may be omitted with `start`).
            fixed: optional (mask, values), bool [*shape] and LongTensor [*shape]: positions
                where mask is True hold `values` throughout, and the denoiser sees them
                (infilling, reconstructing corrupted examples).
            return_trajectory: also return [(t, x_t)] for every visited t, first to 0.
            progress: optional callable(done, total) after each step.
            device: where to sample (default: the device of start's x_t, else of `fixed`,
                else of `generator`, else CPU).
            start: (t, x_t), t an int in 0..T and x_t LongTensor [*shape]: the initial state.
        Returns:
            LongTensor [*shape], or (x_0, trajectory).
        """
        step = sampling.step_rule(sampler)
        grid = self.timestep_grid(step_size, steps)
        device = sampling.sample_device(device, start, fixed, generator)
        if start is None:
            shape, x = checks.check_shape(shape), None
        else:
            t, x = sampling.check_start(self, start, shape, device)
            shape, grid = tuple(x.shape), [g for g in grid if g < t] + [t]
        hold = checks.check_fixed(fixed, shape, self.num_classes, device)
        if x is None:
            x = sampling.prior_sample(self, shape, generator, device)
        return sampling.run_chain(self, denoiser, x, grid, step, generator, hold, argmax_last,
                                  progress, return_trajectory)


def _sum_positions(x: Tensor) -> Tensor:
    """Sum a per-position tensor [B, ...] to per-example [B]."""
    return x.reshape(x.shape[0], -1).sum(-1)
