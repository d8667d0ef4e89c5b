"""Step rules beyond the ancestral step, for the keep-or-jump processes (`sampling.STEP_RULES`).

Notation: alphabar_t = r(0, t), the keep probability of the forward process up to t; m the
mask; p~ = p~(x_0 | x_t) the denoiser's distribution; a step goes from t down to s < t.

For the absorbing process, eq. (4) at a masked x_t = m gives, with p~_m the mass p~ puts on
the mask (zero when the mask is an added token, as in `methods.diffusion`):

    p(x_s = j | x_t = m) = (alphabar_s - alphabar_t) p~_j / Z     (j != m)
    p(x_s = m | x_t = m) = (1 - alphabar_s + alphabar_s p~_m) / Z,
    Z = 1 - alphabar_t + alphabar_t p~_m,

and an unmasked x_t is kept. With p~_m = 0, Z = 1 - alphabar_t: a masked position unmasks
with probability (alphabar_s - alphabar_t) / (1 - alphabar_t), whatever the network says,
and only its value, drawn from p~ off the mask, needs the network. Where p~_m > 0 (the mask is
a data value, e.g. grey 128 for images) the same proposal, accepted with probability
1 - p~_m / Z (which is 1 at p~_m = 0), gives exactly the law above: a thinning.

Rules (all draws float64: `categorical.gumbel_max`, `categorical.uniform_noise`):
    first_hitting  exact (the ancestral law), absorbing only; the network is called only for
                   the sequences that hold a proposed unmasking at that step (a sub-batch).
    remdm          ReMDM remasking (Wang et al., 2025), absorbing only; exact in the sense
                   that the forward marginals are kept; equals first_hitting at eta = 0.
    tau_leaping    an approximation (Campbell et al., 2022; SEDD): reverse CTMC rates at t,
                   held over [s, t]; uniform and absorbing.
    confidence     MaskGIT-style ordered unmasking; not exact; absorbing only.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from discrete_diffusion.categorical import gumbel_max, log1mexp, log_normalise, uniform_noise
from discrete_diffusion.transitions._common import per_example
from discrete_diffusion.transitions.absorbing import Absorbing
from discrete_diffusion.transitions.uniform import Uniform

if TYPE_CHECKING:
    from discrete_diffusion.process import D3PM, Denoiser

REMDM_ETA = 0.02  # default eta of ReMDM's "rescale" schedule sigma_t = eta * sigma_max_t


# ----- helpers -------------------------------------------------------------------------------
def _absorbing(process: D3PM, rule: str) -> Absorbing:
    tr = process.transition
    if not isinstance(tr, Absorbing):
        raise ValueError(f"sampler {rule} needs an Absorbing transition, got {type(tr).__name__}")
    return tr


def _alphabars(process: D3PM, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """alphabar_s and alphabar_t, float64 [B]."""
    zero = torch.zeros_like(t)
    keep = process.transition.keep_probability
    return keep(zero, s), keep(zero, t)


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """num / den clamped to [0, 1], and 1 where den = 0 (a step certain to leave the mask)."""
    safe = torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, (num / safe).clamp(0.0, 1.0), torch.ones_like(den))


def unmask_proposed(
    process: D3PM,
    denoiser: Denoiser,
    x_t: Tensor,
    s: Tensor,
    t: Tensor,
    propose: Tensor,
    generator: torch.Generator | None = None,
    argmax: bool = False,
) -> Tensor:
    """Unmask the proposed masked positions of an absorbing x_t, as eq. (4) would.

    The denoiser sees only the rows (sequences) holding a proposal, with their own t. A
    proposal is accepted with probability 1 - p~_m / (1 - alphabar_t + alphabar_t p~_m) (1
    when p~ gives the mask no mass) and takes a value drawn from p~ off the mask; with
    `argmax` (the step to s = 0) it takes the most likely x_s of eq. (4) instead.

    Args:
        x_t: LongTensor [B, ...]; s, t: LongTensors [B].
        propose: bool [B, ...], True only at masked positions.
    Returns:
        LongTensor [B, ...].
    """
    rows = propose.reshape(propose.shape[0], -1).any(1).nonzero().squeeze(1)
    if rows.numel() == 0:
        return x_t
    m = process.transition.mask_index
    x_r, s_r, t_r, prop = x_t[rows], s[rows], t[rows], propose[rows]
    log_x0 = log_normalise(process.denoise(denoiser, x_r, t_r))
    out = x_r.clone()
    if argmax:
        out[prop] = process.log_p_posterior(log_x0, x_r, s_r, t_r).argmax(-1)[prop]
    else:
        p_m = log_x0[..., m].double().exp()
        a_t = per_example(_alphabars(process, s_r, t_r)[1], x_r.dim())
        reject = torch.where(p_m > 0, p_m / (1.0 - a_t + a_t * p_m).clamp(min=1e-300), 0.0)
        take = prop & (uniform_noise(x_r.shape, x_r.device, generator) >= reject)
        off_mask = log_x0[take].index_fill(-1, torch.tensor([m], device=x_r.device), -math.inf)
        out[take] = gumbel_max(off_mask, generator)
    x_s = x_t.clone()
    x_s[rows] = out
    return x_s


# ----- first hitting ---------------------------------------------------------------------------
def first_hitting_step(
    process: D3PM,
    denoiser: Denoiser,
    x_t: Tensor,
    s: Tensor,
    t: Tensor,
    generator: torch.Generator | None = None,
    argmax: bool = False,
) -> Tensor:
    """x_s with exactly the law of the ancestral step, eq. (4), for an absorbing process.

    Each masked position is proposed for unmasking with probability (alphabar_s -
    alphabar_t) / (1 - alphabar_t), drawn before any network call; the network then runs on
    the proposing sequences only (see `unmask_proposed`). Over a T-step jsd grid a sequence of
    L masked positions needs about T (1 - exp(-L/T)) passes instead of T.

    Args:
        x_t: LongTensor [B, ...]; s, t: LongTensors [B], 0 <= s < t.
    Returns:
        LongTensor [B, ...].
    """
    tr = _absorbing(process, "first_hitting")
    a_s, a_t = _alphabars(process, s, t)
    unmask = per_example(_ratio(a_s - a_t, 1.0 - a_t), x_t.dim())
    u = uniform_noise(x_t.shape, x_t.device, generator)
    propose = (x_t == tr.mask_index) & (u < unmask)
    return unmask_proposed(process, denoiser, x_t, s, t, propose, generator, argmax)


# ----- ReMDM ---------------------------------------------------------------------------------
def remdm_sigma(process: D3PM, s: Tensor, t: Tensor, eta: float) -> Tensor:
    """ReMDM's "rescale" remasking probability sigma_t = eta * sigma_max_t, float64 [B], with
    sigma_max_t = min(1, (1 - alphabar_s) / alphabar_t) (1 where alphabar_t = 0), the largest
    sigma for which the marginals of the forward process can be kept."""
    a_s, a_t = _alphabars(process, s, t)
    return eta * _ratio(1.0 - a_s, a_t)


def remdm_unmask_probability(process: D3PM, s: Tensor, t: Tensor, sigma: Tensor) -> Tensor:
    """Probability that a masked position is proposed for unmasking, float64 [B]:
    (alphabar_s - (1 - sigma_t) alphabar_t) / (1 - alphabar_t), so that a position unmasked
    at t with probability alphabar_t is unmasked at s with probability alphabar_s."""
    a_s, a_t = _alphabars(process, s, t)
    return _ratio(a_s - (1.0 - sigma) * a_t, 1.0 - a_t)


def remdm_step(
    process: D3PM,
    denoiser: Denoiser,
    x_t: Tensor,
    s: Tensor,
    t: Tensor,
    generator: torch.Generator | None = None,
    argmax: bool = False,
    eta: float = REMDM_ETA,
) -> Tensor:
    """ReMDM (Wang et al., 2025) for an absorbing process: every unmasked position is
    remasked with probability sigma_t (`remdm_sigma`), every masked one proposed for
    unmasking with probability `remdm_unmask_probability` and its value drawn as in
    `unmask_proposed`. With p~ giving the mask no mass, x_t ~ q(x_t | x_0) and p~ = x_0, x_s
    follows q(x_s | x_0); eta = 0 is the ancestral step. sigma_t = 0 at s = 0.

    Args:
        eta: in [0, 1], the share of sigma_max_t used.
    """
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not 0.0 <= eta <= 1.0:
        raise ValueError(f"remdm eta must be a number in [0, 1], got {eta!r}")
    tr = _absorbing(process, "remdm")
    sigma = remdm_sigma(process, s, t, float(eta))
    unmask = remdm_unmask_probability(process, s, t, sigma)
    masked = x_t == tr.mask_index
    u = uniform_noise(x_t.shape, x_t.device, generator)  # one draw: the two sets are disjoint
    remask = ~masked & (u < per_example(sigma, x_t.dim()))
    propose = masked & (u < per_example(unmask, x_t.dim()))
    x_s = unmask_proposed(process, denoiser, x_t, s, t, propose, generator, argmax)
    return x_s.masked_fill(remask, tr.mask_index)


def remdm_log_probs(process: D3PM, log_x0: Tensor, x_t: Tensor, s: Tensor, t: Tensor,
                    eta: float = REMDM_ETA) -> Tensor:
    """The law of one `remdm_step` per position, log p(x_s | x_t), float64 [B, ..., K], from
    normalised log p~ float [B, ..., K] (for tests and analysis; the step never builds it)."""
    m = _absorbing(process, "remdm").mask_index
    a_t = per_example(_alphabars(process, s, t)[1], x_t.dim())
    sigma = remdm_sigma(process, s, t, eta)
    c = per_example(remdm_unmask_probability(process, s, t, sigma), x_t.dim())
    p = log_x0.double().exp()
    p_m = p[..., m]
    accept = torch.where(p_m > 0, 1.0 - p_m / (1.0 - a_t + a_t * p_m).clamp(min=1e-300), 1.0)
    off = (c * accept / (1.0 - p_m).clamp(min=1e-300))[..., None] * p
    off[..., m] = 1.0 - c * accept  # stays masked
    sig = per_example(sigma, x_t.dim())[..., None]
    kept = torch.zeros_like(p).scatter(-1, x_t[..., None], 1.0) * (1.0 - sig)
    kept[..., m] += sig[..., 0]  # remasked
    return torch.where((x_t == m)[..., None], off, kept).log()


# ----- tau-leaping ---------------------------------------------------------------------------
def tau_leaping_log_probs(
    process: D3PM, log_x0: Tensor, x_t: Tensor, s: Tensor, t: Tensor
) -> Tensor:
    """One tau-leaping step's law per position, log p(x_s | x_t), float64 [B, ..., K].

    The forward process jumps at rate beta(u) to a draw from b (uniform: 1/K each; absorbing:
    the mask); over [s, t] its keep probability alphabar_t / alphabar_s fixes the integrated
    rate lambda = log(alphabar_s / alphabar_t). The reverse rate at t from x to y != x,
    x0-parameterised as in eq. (4), is beta b_x (p~ Qbar_t)(y) / (p~ Qbar_t)(x), the limit of
    eq. (4) as s -> t (Campbell et al., 2022 write sum_x0 p~(x0) q_t(y|x0) / q_t(x|x0), equal
    when p~ is the true posterior); held over the step, lambda times it is
        uniform:   lambda / K (alphabar_t p~_y + c) / (alphabar_t p~_x + c),
                   c = (1 - alphabar_t) / K;
        absorbing: lambda alphabar_t p~_y / (1 - alphabar_t + alphabar_t p~_m) at x = m,
                   0 from an unmasked x.
    A position leaves x with probability 1 - exp(-total rate), to y in proportion to its rate
    (at most one jump: a categorical state has no sum of jumps). Rows with s = 0 or
    alphabar_t in {0, 1}, where the rates at t vanish or blow up, take the exact step (eq. 4),
    the final denoising step of SEDD and MDLM: the rates at t never empty the mask.

    For absorbing, the values are exactly those of eq. (4) (p~ off the mask); only the
    probability of unmasking, 1 - (alphabar_t / alphabar_s)^(alphabar_t / (1 - alphabar_t))
    with p~_m = 0, replaces (alphabar_s - alphabar_t) / (1 - alphabar_t): equal to first
    order in t - s, so the one-step error is O((t - s)^2).
    """
    tr = process.transition
    if type(tr) not in (Uniform, Absorbing):
        raise ValueError(f"sampler tau_leaping needs a Uniform or Absorbing transition, got "
                         f"{type(tr).__name__}")
    a_s, a_t = _alphabars(process, s, t)
    exact = (s == 0) | (a_t <= 0) | (a_t >= 1)
    a_s, a_t = (torch.where(exact, 0.5, a) for a in (a_s, a_t))  # finite stand-ins
    lam = per_example((a_s.log() - a_t.log()).clamp(min=0.0), x_t.dim())[..., None]
    log_x0 = log_x0.double()
    # log (p~ Qbar_t), at the stand-in times where the step is exact (discarded there)
    t_rates = torch.where(exact, torch.ones_like(t), t)
    log_marg = tr.log_cumulative_soft(log_x0, t_rates)
    log_b = (torch.full_like(log_marg, -math.log(tr.num_classes)) if isinstance(tr, Uniform)
             else torch.where((x_t == tr.mask_index)[..., None], 0.0, -math.inf)
             .expand_as(log_marg))
    log_from = log_marg.gather(-1, x_t[..., None])
    # no rate out of an unmasked x (absorbing), whatever p~ says of it
    rate = torch.where(log_b > -math.inf, (lam.log() + log_b + log_marg - log_from).exp(), 0.0)
    rate = rate.scatter(-1, x_t[..., None], 0.0)
    total = rate.sum(-1, keepdim=True)
    safe = torch.where(total > 0, total, 1.0)
    log_move = torch.where(total > 0, log1mexp(-safe) + rate.log() - safe.log(), -math.inf)
    out = log_move.scatter(-1, x_t[..., None], -total)
    if bool(exact.any()):
        ancestral = process.log_p_posterior(log_x0, x_t, s, t).double()
        out = torch.where(per_example(exact, x_t.dim())[..., None], ancestral, out)
    return out


def tau_leaping_step(
    process: D3PM,
    denoiser: Denoiser,
    x_t: Tensor,
    s: Tensor,
    t: Tensor,
    generator: torch.Generator | None = None,
    argmax: bool = False,
) -> Tensor:
    """x_s drawn from `tau_leaping_log_probs` (an approximation of eq. 4, first order in
    t - s); one network call for the whole batch."""
    log_x0 = log_normalise(process.denoise(denoiser, x_t, t))
    log_p = tau_leaping_log_probs(process, log_x0, x_t, s, t)
    return log_p.argmax(-1) if argmax else gumbel_max(log_p, generator)


# ----- confidence ----------------------------------------------------------------------------
def confidence_step(
    process: D3PM,
    denoiser: Denoiser,
    x_t: Tensor,
    s: Tensor,
    t: Tensor,
    generator: torch.Generator | None = None,
    argmax: bool = False,
) -> Tensor:
    """MaskGIT-style unmasking (Chang et al., 2022) for an absorbing process. NOT exact: the
    positions unmasked depend on the network, so the samples do not follow eq. (4).

    With n masked positions in a sequence, k = n (alphabar_s - alphabar_t) / (1 - alphabar_t)
    (the expected number unmasking under the schedule) is rounded at random (up with
    probability its fractional part, so its mean is kept and a fine grid does not stall at
    k = 0); at s = 0, k = n. A value is drawn from p~ at every masked position (Gumbel-max,
    float64; the most likely value with `argmax`) and the k positions whose drawn value has the
    highest probability take it. Sequences with k = 0 skip the network. A drawn value equal
    to the mask (only where the mask is a data value) leaves the position masked.
    """
    tr = _absorbing(process, "confidence")
    a_s, a_t = _alphabars(process, s, t)
    masked = (x_t == tr.mask_index).reshape(x_t.shape[0], -1)
    n = masked.sum(1)
    noise = uniform_noise(n.shape, x_t.device, generator)
    k = torch.minimum((n * _ratio(a_s - a_t, 1.0 - a_t) + noise).floor().long(), n)
    rows = (k > 0).nonzero().squeeze(1)
    if rows.numel() == 0:
        return x_t
    x_r = x_t[rows]
    log_x0 = log_normalise(process.denoise(denoiser, x_r, t[rows]))
    values = log_x0.argmax(-1) if argmax else gumbel_max(log_x0, generator)
    conf = log_x0.gather(-1, values[..., None]).reshape(len(rows), -1).double()
    conf = conf.masked_fill(~masked[rows], -math.inf)
    order = conf.argsort(dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    chosen = (ranks < k[rows, None]) & masked[rows]
    x_s = x_t.clone()
    x_s[rows] = torch.where(chosen.view_as(x_r), values, x_r)
    return x_s
