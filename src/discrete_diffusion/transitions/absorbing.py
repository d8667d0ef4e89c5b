"""The absorbing ("mask") process: Q_t = (1 - beta_t) I + beta_t 1 e_m^T (paper section 3.1).

A token is kept with probability 1 - beta_t and otherwise jumps to the mask state m, which it
never leaves. Spans have the same form, Q_{s->t} = r I + (1 - r) 1 e_m^T with
r = prod_{u=s+1..t} (1 - beta_u), and Qbar_t = Q_{0->t}. The mask is one of the K states: an
extra token K-1 added by the caller for text, the grey value 128 for images.

With an added mask (never a value of x_0, and given no mass by p~(x_0 | x_t)) the loss term
of eq. (4) is a weighted masked cross-entropy (MD4's discrete-time loss): for s < t,

    L_{t->s} = [x_t = m] (alphabar_s - alphabar_t) / (1 - alphabar_t) (-log p~(x_0 | x_t)).

Proof: for x_t != m both posteriors are a point mass on x_t. For x_t = m, q(x_s | x_t, x_0)
puts (alphabar_s - alphabar_t) / Z on x_0 and (1 - alphabar_s) / Z on m, Z = 1 - alphabar_t;
p(x_s | x_t) puts (alphabar_s - alphabar_t) p~_j / Z' on each j != m and
(alphabar_s p~_m + 1 - alphabar_s) / Z' on m, Z' = Z + alphabar_t p~_m. With p~_m = 0,
Z' = Z, the two agree at m and differ at x_0 by the factor p~_{x_0}: the KL is
q(x_0) (-log p~_{x_0}). At s = 0 (alphabar_0 = 1) the weight is 1 and the term is the decoder
-log p(x_0 | x_t) = -log p~(x_0 | x_t), as the posterior is then a point mass on x_0; a step
with beta = 1 only makes alphabar_t = 0 (weight alphabar_s); where alphabar_t = 1 no token is
masked and the weight is set to 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from discrete_diffusion.categorical import cross_entropy, log1mexp, uniform_noise
from discrete_diffusion.transitions._common import (
    NEG_INF,
    check_mask_index,
    per_example,
    plogp_ratio,
)
from discrete_diffusion.transitions.keep import KeepTransition

__all__ = ["Absorbing"]


class Absorbing(KeepTransition):
    """Absorbing transitions into `mask_index`; the stationary distribution is a point mass on
    the mask (reached exactly when alphabar_T = 0, e.g. with the jsd schedule).

    Args:
        num_classes: K >= 2, the mask included.
        mask_index: the absorbing state m, 0 <= m < K.
        added_mask: the mask is a token added to the data vocabulary: never a value of x_0,
            and p~(x_0 | x_t) gives it no mass (the caller pins its logit far below the
            others). `posterior_kl` is then the weighted masked cross-entropy of the module
            docstring, which holds only under that promise. False for a mask that is a data
            value (images: grey 128).
    """

    def __init__(self, num_classes: int, mask_index: int, added_mask: bool = False) -> None:
        super().__init__(num_classes)
        check_mask_index(mask_index, num_classes)
        if not isinstance(added_mask, bool):
            raise ValueError(f"added_mask must be a bool, got {added_mask!r}")
        self.mask_index = mask_index
        self.added_mask = added_mask

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "mask_index": self.mask_index,
                "added_mask": self.added_mask}

    # ----- dense views ----------------------------------------------------------------------
    def _dense(self, keep: float) -> Tensor:
        k, m = self.num_classes, self.mask_index
        mat = keep * torch.eye(k, dtype=torch.float64)
        mat[:, m] += 1.0 - keep
        mat[m, m] = 1.0
        return mat

    def stationary(self) -> Tensor:
        out = torch.zeros(self.num_classes, dtype=torch.float64)
        out[self.mask_index] = 1.0
        return out

    # ----- structured operations ------------------------------------------------------------
    def log_cumulative(self, x_0: Tensor, t: Tensor) -> Tensor:
        """Row x_0 of Qbar_t: alphabar_t at x_0, 1 - alphabar_t at m (1 at m if x_0 = m)."""
        log_r, log_1mr = self._log_span(None, t)
        m, ndim = self.mask_index, x_0.dim() + 1
        out = torch.full((*x_0.shape, self.num_classes), NEG_INF, device=x_0.device)
        out[..., m] = per_example(log_1mr, x_0.dim(), torch.float32)
        at_x0 = torch.where(x_0 == m, 0.0, per_example(log_r, ndim - 1, torch.float32))
        return out.scatter_(-1, x_0.unsqueeze(-1), at_x0.unsqueeze(-1))

    def log_cumulative_soft(self, log_x0: Tensor, t: Tensor) -> Tensor:
        """p Qbar_t = alphabar_t p + (1 - alphabar_t) e_m for a normalised p."""
        log_r, log_1mr = self._log_span(None, t)
        m, ndim = self.mask_index, log_x0.dim()
        log_r = per_example(log_r, ndim, log_x0.dtype)
        out = log_x0 + log_r
        # from log_x0, not from a view of `out`: autograd keeps logaddexp's inputs, and the
        # write below would modify a saved view
        at_m = torch.logaddexp(log_x0[..., m] + log_r.squeeze(-1),
                               per_example(log_1mr, ndim - 1, log_x0.dtype))
        out[..., m] = at_m
        return out

    def log_transition_column(self, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """Column x_t of Q_{s->t}: r at j = x_t if x_t != m; if x_t = m, 1 - r off the mask and
        1 at the mask."""
        log_r, log_1mr = self._log_span(s, t)
        m, ndim = self.mask_index, x_t.dim()
        is_mask = x_t == m
        base = torch.where(is_mask, per_example(log_1mr, ndim, torch.float32), NEG_INF)
        out = base.unsqueeze(-1).expand(*x_t.shape, self.num_classes).clone()
        at_xt = torch.where(is_mask, 0.0, per_example(log_r, ndim, torch.float32))
        return out.scatter_(-1, x_t.unsqueeze(-1), at_xt.unsqueeze(-1))

    # ----- fused posteriors (optional hooks used by D3PM; one K-wide write each) ----------
    def log_q_posterior(self, x_0: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """Normalised log q(x_s | x_t, x_0), eq. (3), for integer x_0, float32 [B, ..., K].

        An unmasked x_t is x_s for sure; a masked x_t came from x_0 (kept until s, masked in
        (s, t]: (1 - r) alphabar_s) or from the mask (1 - alphabar_s).
        """
        log_r, log_1mr = self._log_span(s, t)
        log_a, log_1ma = self._log_span(None, s)
        m, n = self.mask_index, x_t.dim()
        log_1mr, log_a, log_1ma = (per_example(c, n, torch.float32)
                                   for c in (log_1mr, log_a, log_1ma))
        masked = x_t == m
        from_x0 = log_1mr + log_a
        log_z = torch.logaddexp(from_x0, log_1ma)
        out = torch.full((*x_t.shape, self.num_classes), NEG_INF, device=x_t.device)
        first = torch.where(masked, x_0, x_t)
        out.scatter_(-1, first.unsqueeze(-1), torch.where(masked, from_x0 - log_z, 0.0)[..., None])
        at_m = torch.where(x_0 == m, 0.0, log_1ma - log_z)
        second = torch.where(masked, m, x_t)
        return out.scatter_(-1, second.unsqueeze(-1), torch.where(masked, at_m, 0.0)[..., None])

    def log_p_posterior(self, log_x0: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """Normalised log p(x_s | x_t), eq. (4), from normalised log p~(x_0 | x_t).

        An unmasked x_t is kept: a point mass. For a masked x_t, p(x_s = j) is proportional
        to (1 - r) alphabar_s p~_j off the mask and alphabar_s p~_m + 1 - alphabar_s at it, so
        the output is log p~ plus a per-token shift, with one entry rewritten.
        """
        log_r, log_1mr = self._log_span(s, t)
        log_a, log_1ma = self._log_span(None, s)
        m, n, dtype = self.mask_index, x_t.dim(), log_x0.dtype
        log_1mr, log_a, log_1ma = (per_example(c, n, dtype) for c in (log_1mr, log_a, log_1ma))
        masked = x_t == m
        lp_m = log_x0[..., m]
        at_m = torch.logaddexp(log_a + lp_m, log_1ma)
        off = log_1mr + log_a  # weight of p~_j, j != m
        log_z = torch.logaddexp(at_m, off + _log1m_prob(lp_m))
        shift = torch.where(masked, off - log_z, NEG_INF)
        out = log_x0 + shift.unsqueeze(-1)  # a fresh tensor: the scatter may be in place
        idx = torch.where(masked, m, x_t).unsqueeze(-1)
        return out.scatter_(-1, idx, torch.where(masked, at_m - log_z, 0.0).unsqueeze(-1))

    def masked_ce_weight(self, s: Tensor, t: Tensor) -> Tensor:
        """(alphabar_s - alphabar_t) / (1 - alphabar_t) per example, float64 [B]: the weight
        of -log p~(x_0 | x_t) at masked positions in the loss term of an added mask (module
        docstring); 0 where alphabar_t = 1 (nothing is masked there)."""
        log_1mr, log_a, log_1ma = self._log_span(s, t)[1], *self._log_span(None, s)
        from_x0 = log_1mr + log_a  # log(alphabar_s - alphabar_t)
        log_z = torch.logaddexp(from_x0, log_1ma)  # log(1 - alphabar_t)
        return torch.where(torch.isneginf(log_z), NEG_INF, from_x0 - log_z).exp()

    def posterior_kl(
        self, x_0: Tensor, x_t: Tensor, log_x0: Tensor, s: Tensor, t: Tensor,
        nll: Tensor | None = None,
    ) -> Tensor:
        """KL(q(x_s | x_t, x_0) || p(x_s | x_t)) per position, float [B, ...], in O(1) per
        token once log p~ is known (both distributions live on {x_0, m}).

        At s = 0 the posterior is a point mass on x_0 and this is -log p(x_0 | x_t). With an
        added mask it is the weighted masked cross-entropy of the module docstring, which
        reads no entry of log p~ but x_0's (none at all when `nll` is given).

        Args:
            x_0, x_t: LongTensor [B, ...].
            log_x0: float [B, ..., K], normalised log p~(x_0 | x_t).
            s, t: LongTensor [B], 0 <= s < t.
            nll: optional float [B, ...], the caller's -log p~(x_0 | x_t) (`cross_entropy`
                of log_x0): reusing it saves a gather and its K-wide gradient.
        """
        if self.added_mask:
            if nll is None:
                nll = cross_entropy(log_x0, x_0)
            weight = per_example(self.masked_ce_weight(s, t), x_t.dim(), nll.dtype)
            return torch.where(x_t == self.mask_index, weight * nll,
                               torch.zeros((), dtype=nll.dtype, device=nll.device))
        log_r, log_1mr = self._log_span(s, t)
        log_a, log_1ma = self._log_span(None, s)
        m, n, dtype = self.mask_index, x_t.dim(), log_x0.dtype
        log_1mr, log_a, log_1ma = (per_example(c, n, dtype) for c in (log_1mr, log_a, log_1ma))
        from_x0 = log_1mr + log_a  # x_0 kept until s, masked in (s, t]
        log_zq = torch.logaddexp(from_x0, log_1ma)
        lp_m = log_x0[..., m]
        at_m = torch.logaddexp(log_a + lp_m, log_1ma)
        log_zp = torch.logaddexp(at_m, from_x0 + _log1m_prob(lp_m))
        lp_x0 = log_x0.gather(-1, x_0.unsqueeze(-1)).squeeze(-1)
        kl = (plogp_ratio(from_x0 - log_zq, from_x0 + lp_x0 - log_zp)
              + plogp_ratio(log_1ma - log_zq, at_m - log_zp))
        kl = torch.where(x_0 == m, log_zp - at_m, kl)  # the posterior is a point mass on m
        return torch.where(x_t == m, kl, torch.zeros((), dtype=dtype, device=kl.device))

    def sample_cumulative(
        self, x_0: Tensor, t: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """x_t ~ q(x_t | x_0) in O(1) per token: keep x_0 with probability alphabar_t, else m."""
        log_r, _ = self._log_span(None, t)
        u = uniform_noise(x_0.shape, x_0.device, generator)
        keep = u < per_example(log_r.exp(), x_0.dim(), torch.float64)
        return torch.where(keep, x_0, torch.full_like(x_0, self.mask_index))


def _log1m_prob(log_p: Tensor) -> Tensor:
    """log(1 - p) from log p; p = 1 is nudged to 1 - 1e-30 so gradients stay finite."""
    return log1mexp(log_p.clamp(max=-1e-30))

