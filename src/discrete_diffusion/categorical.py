"""Log-space helpers for categorical distributions.

Conventions: a distribution over K categories is a tensor [..., K] of normalised log
probabilities; zero probabilities are -inf and 0 * log 0 is taken as 0, never NaN.
Random draws use float64 uniform noise clipped away from 0 and 1, so Gumbel-max is exact for
probabilities down to ~1e-300 and a `torch.Generator` makes runs reproducible.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# Gumbel-max materialises float64 noise of the logits' size: draw it in row chunks of about this
# many elements so sampling a large vocabulary never doubles peak memory.
_GUMBEL_CHUNK = 1 << 22


# exp() of float32 inputs below log(FLT_MIN) ~ -87.3 (and of -inf) takes a slow path on CPU;
# probabilities below exp(-87) change a KL by less than 1e-33 nats per term, so they are clamped.
_LOG_TINY = -87.0


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype categorical maths on logits of `dtype` is done in: float32 for the 16-bit
    types (float16, bfloat16), whose 3-4 significant digits cannot hold a KL or a
    normaliser, otherwise `dtype` itself (float32, float64)."""
    return torch.float32 if torch.finfo(dtype).bits < 32 else dtype


def log_normalise(logits: Tensor) -> Tensor:
    """Normalised log probabilities log_softmax(logits) over the last dimension, in
    `compute_dtype(logits.dtype)` (gradients flow back to the logits in their own dtype)."""
    return logits.log_softmax(-1, dtype=compute_dtype(logits.dtype))


def categorical_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) = sum_k p_k (log p_k - log q_k) over the last dimension.

    Terms with p_k = 0 are 0 (also where log q_k = -inf); a p_k > 0 with q_k = 0 gives +inf, the
    true value; a NaN anywhere in a row of either input gives NaN. Gradients stay finite
    wherever the value is. Terms with p_k < exp(-87) are evaluated at p_k = exp(-87) (an error
    below 1e-33 per term) to keep exp() on its fast path.

    Args:
        log_p, log_q: float [..., K], normalised log probabilities (may hold -inf); of
            different dtypes, both are promoted to the wider one.
    Returns:
        float [...] in that dtype.
    """
    if log_p.dtype != log_q.dtype:  # e.g. a float32 q posterior against float64 logits
        common = torch.promote_types(log_p.dtype, log_q.dtype)
        log_p, log_q = log_p.to(common), log_q.to(common)
    # -inf - -inf = NaN and -inf - x = -inf only occur where p = 0: those terms are 0. +inf
    # (q = 0 under p > 0) is kept. A NaN in log_q would be zeroed here, so it is put back below
    # through the row maximum (finite for a normalised row, NaN if the row holds a NaN).
    guard = 0.0 * log_q.detach().amax(-1)
    if torch.is_grad_enabled() and (log_p.requires_grad or log_q.requires_grad):
        p = log_p.clamp(min=_LOG_TINY).exp()
        diff = torch.nan_to_num(log_p - log_q, nan=0.0, neginf=0.0, posinf=math.inf)
        return (p * diff).sum(-1) + guard
    # Without autograd, work in place: large temporaries cost more than the arithmetic.
    p = log_p.clamp(min=_LOG_TINY).exp_()
    diff = torch.sub(log_p, log_q).nan_to_num_(nan=0.0, neginf=0.0, posinf=math.inf)
    return torch.linalg.vecdot(p, diff) + guard


def cross_entropy(log_q: Tensor, x: Tensor) -> Tensor:
    """-log q(x) for integer targets.

    Args:
        log_q: float [..., K], normalised log probabilities.
        x: LongTensor [...].
    Returns:
        float [...].
    """
    return -log_q.gather(-1, x.unsqueeze(-1)).squeeze(-1)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler, 2012); log1mexp(0) = -inf."""
    cut = x > -math.log(2.0)
    return torch.where(cut, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# Shifted products below this are zero or subnormal (float64 subnormals start at 2.2e-308): their
# log has lost precision and its gradient, 1 / product, overflows (0 / 0 = NaN where the product
# is 0). log_matmul_exp recomputes such results exactly instead of taking their log.
_PRODUCT_FLOOR = 1e-290


def log_matmul_exp(log_p: Tensor, matrix: Tensor) -> Tensor:
    """log(p @ M) for log probabilities p and a non-negative matrix M, without underflow.

    Each row of p is shifted by its maximum before exponentiation (float64), which is exact
    unless a result depends only on entries more than ~670 nats below the row maximum (a p
    that is near certain of a state that M maps elsewhere, e.g. logits of +-1e4 or a sharp
    discretized logistic, with zeros or tiny entries in M): such results, below 1e-290 after the
    shift while p and M give them support, are recomputed exactly as
    logsumexp_i(log p_i + log M_ij) for the rows concerned, and results without support are
    -inf. The gradient is finite wherever the value is (results of -inf get none).

    Args:
        log_p: float [..., K] (or [B, N, K] with `matrix` [B, K, K] for a batched product).
        matrix: float64 [K, K'] or [B, K, K'].
    Returns:
        [..., K'] in the dtype of `log_p`.
    """
    lp = log_p.to(torch.float64)
    # The shift is a constant for autograd: log(exp(lp - c) @ M) + c is log(exp(lp) @ M) for any c.
    shift = lp.detach().amax(-1, keepdim=True).clamp(min=-1e30)  # -inf rows stay -inf, not NaN
    product = torch.matmul((lp - shift).exp(), matrix)
    low = product < _PRODUCT_FLOOR
    # log of the product only where it is accurate: elsewhere log(1) stands in, so that neither
    # the value nor the gradient (1 / product) of a zero or subnormal product is ever used.
    safe = torch.where(low, torch.ones_like(product), product).log()
    out = torch.where(low, torch.full_like(product, -math.inf), safe) + shift
    if bool(low.any()):  # rare: only then pay for a second product, the support of p @ M
        support = torch.matmul((lp > -math.inf).to(torch.float64), (matrix > 0).to(torch.float64))
        lost = low & (support > 0)
        if bool(lost.any()):
            _recompute_rows(out, lp, matrix, lost.any(-1))
    return out.to(log_p.dtype)


def _recompute_rows(out: Tensor, lp: Tensor, matrix: Tensor, rows: Tensor) -> None:
    """Write logsumexp_i(lp_i + log M_ij) into the rows of `out` selected by `rows`."""
    log_m = matrix.log()
    if matrix.dim() == 2:
        flat_out, flat_lp = out.view(-1, out.shape[-1]), lp.reshape(-1, lp.shape[-1])
        idx = rows.reshape(-1).nonzero().squeeze(-1)
        flat_out[idx] = _logsumexp_or_neginf(flat_lp[idx, :, None] + log_m[None])
        return
    b, n = rows.nonzero(as_tuple=True)
    out[b, n] = _logsumexp_or_neginf(lp[b, n, :, None] + log_m[b])


def _logsumexp_or_neginf(terms: Tensor) -> Tensor:
    """logsumexp over dim 1, -inf where every term is -inf, with a finite gradient everywhere
    (torch.logsumexp gives such results the gradient exp(-inf - -inf) = NaN)."""
    top = terms.detach().amax(1, keepdim=True).clamp(min=-1e30)
    total = (terms - top).exp().sum(1)  # >= 1 wherever a term is finite
    some = total > 0
    safe = torch.where(some, total, torch.ones_like(total)).log()
    return torch.where(some, safe + top.squeeze(1), torch.full_like(total, -math.inf))


def uniform_noise(
    shape: tuple[int, ...] | torch.Size,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """float64 uniform noise in [tiny, 1 - eps], so log(u) and log(1 - u) are finite."""
    u = torch.rand(shape, dtype=torch.float64, device=device, generator=generator)
    info = torch.finfo(torch.float64)
    return u.clamp_(min=info.tiny, max=1.0 - info.eps)


def gumbel_noise(
    shape: tuple[int, ...] | torch.Size,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """float64 standard Gumbel noise -log(-log u)."""
    return -torch.log(-torch.log(uniform_noise(shape, device, generator)))


def gumbel_max(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw x ~ Cat(softmax(logits)) by the Gumbel-max trick with float64 noise.

    Args:
        logits: float [..., K], unnormalised log probabilities (-inf allowed, not everywhere).
        generator: optional torch.Generator on the device of `logits`.
    Returns:
        LongTensor [...].
    """
    k = logits.shape[-1]
    flat = logits.reshape(-1, k)
    rows = max(1, _GUMBEL_CHUNK // max(k, 1))
    out = torch.empty(flat.shape[0], dtype=torch.long, device=logits.device)
    for start in range(0, flat.shape[0], rows):
        chunk = flat[start : start + rows].to(torch.float64)
        noise = gumbel_noise(chunk.shape, chunk.device, generator)
        out[start : start + rows] = (chunk + noise).argmax(-1)
    return out.reshape(logits.shape[:-1])

