"""The discretized Gaussian process for ordinal data (paper section 3.1, appendix A.2.3).

With v_k = 2k/(K - 1) (the gap between states i and i + k on a [-1, 1] grid) and a band width b,

    Q_t[i, i +- k] = exp(-v_k^2 / beta_t) / sum_{n=-b..b} exp(-v_n^2 / beta_t),  k = 1..b,
    Q_t[i, i] = 1 - sum_{j != i} Q_t[i, j],

zero beyond the band. Q_t is symmetric, hence doubly stochastic, and the stationary distribution
is uniform. Rows near the edges keep the mass their missing neighbours would have taken.

Storage (K = 256, T = 1000, full width; see `table_bytes`):
    * one-step Q_t as its profile: off-diagonal values [T, b+1] and diagonals [T, K], float64
      (2 MB); a column of Q_t is an O(K) gather;
    * Qbar_t = Q_1 ... Q_t, built by sequential float64 products Qbar_t = Qbar_{t-1} Q_t,
      of which every m-th is kept (checkpoints Qbar_0, Qbar_m, Qbar_2m, ..., float64
      [floor(T/m) + 1, K, K]). Any other Qbar_t is rebuilt on demand from the checkpoint
      c = m floor(t/m) below it by the same sequence of products, Qbar_c Q_{c+1} ... Q_t, so it
      equals the full table's entry to rounding (bit for bit where the matrix product is
      deterministic); the last `cumulative_cache_size` rebuilt ones are kept (least recently
      used dropped). float64 because the rows feed q(x_t | x_0) and every posterior: float32
      would flush entries below 1e-38 to zero and bias log q. m defaults to the smallest value
      whose checkpoints fit in `CHECKPOINT_BUDGET_BYTES` (256 MiB): m = 1 (the whole table)
      for small K, m = 2 at K = 256, T = 1000, where the full table would be 525 MB and the
      checkpoints are 263 MB (+ at most 8 MB of cache); the reference implementation holds
      ~1 GB in two [T, K, K] tables. A rebuilt Qbar_t costs (t mod m) dense [K, K] products
      (~3 ms each at K = 256 on one CPU core), paid once per distinct t of a batch;
    * spans Q_{s->t} (t - s > 1) for strided evaluation: built on demand and cached (at most
      `span_cache_size` of them, float64 [K, K] each).
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from discrete_diffusion.categorical import log_matmul_exp
from discrete_diffusion.transitions._common import (
    check_betas,
    check_int,
    check_num_classes,
    per_example,
)
from discrete_diffusion.transitions.base import Transition

__all__ = ["CHECKPOINT_BUDGET_BYTES", "DiscretizedGaussian", "default_checkpoint_every",
           "gaussian_profile"]

CHECKPOINT_BUDGET_BYTES = 256 * 2**20


def default_checkpoint_every(num_classes: int, num_steps: int,
                             budget: int = CHECKPOINT_BUDGET_BYTES) -> int:
    """The smallest m in 1..T whose float64 checkpoints Qbar_0, Qbar_m, Qbar_2m, ...
    ([floor(T/m) + 1, K, K]) fit in `budget` bytes; T if none does."""
    per_matrix = num_classes * num_classes * 8
    for m in range(1, num_steps + 1):
        if (num_steps // m + 1) * per_matrix <= budget:
            return m
    return max(num_steps, 1)


def gaussian_profile(betas: Tensor, num_classes: int, bands: int) -> Tensor:
    """Off-diagonal values of every Q_t: profile[t-1, k] = Q_t[i, i +- k], k = 1..b.

    Args:
        betas: float64 [T], beta_t > 0.
        num_classes: K.
        bands: b in 1..K-1.
    Returns:
        float64 [T, b+1]; column 0 is 0 (the diagonal depends on the row).
    """
    offsets = torch.arange(-bands, bands + 1, dtype=torch.float64)
    v2 = (2.0 * offsets / (num_classes - 1)) ** 2
    # log-space normaliser: exp(-v^2/beta) underflows for small beta at large offsets.
    logits = -v2 / betas.unsqueeze(-1)  # [T, 2b+1]
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    profile = log_probs[:, bands:].exp()  # offsets 0..b
    profile[:, 0] = 0.0
    return profile


def diagonals(profile: Tensor, num_classes: int) -> Tensor:
    """Q_t[i, i] = 1 - (mass to the neighbours that exist), float64 [T, K]."""
    bands = profile.shape[1] - 1
    cum = profile.cumsum(-1)  # cum[:, m] = sum_{k=1..m} profile[:, k]
    i = torch.arange(num_classes)
    left = cum[:, i.clamp(max=bands)]
    right = cum[:, (num_classes - 1 - i).clamp(max=bands)]
    return (1.0 - left - right).clamp(min=0.0)


class DiscretizedGaussian(Transition):
    """Discretized, truncated Gaussian transitions between ordinal states.

    Args:
        num_classes: K >= 2.
        bands: b in 1..K-1, the largest jump |i - j| with non-zero probability; None means the
            full width K - 1.
        span_cache_size: how many multi-step spans Q_{s->t} to keep.
        checkpoint_every: m, keep every m-th cumulative matrix (1 = the whole table); None
            chooses it at `setup` with `default_checkpoint_every` (memory budget 256 MiB).
        cumulative_cache_size: how many rebuilt Qbar_t (t not a multiple of m) to keep.
    """

    def __init__(
        self,
        num_classes: int,
        bands: int | None = None,
        span_cache_size: int = 256,
        checkpoint_every: int | None = None,
        cumulative_cache_size: int = 16,
    ) -> None:
        check_num_classes(num_classes)
        if bands is None:
            bands = num_classes - 1
        if not isinstance(bands, int) or not 1 <= bands <= num_classes - 1:
            raise ValueError(f"bands must be an integer in 1..{num_classes - 1}, got {bands!r}")
        if checkpoint_every is not None and (
            not isinstance(checkpoint_every, int) or checkpoint_every < 1
        ):
            raise ValueError(f"checkpoint_every must be a positive integer or None, "
                             f"got {checkpoint_every!r}")
        if not isinstance(cumulative_cache_size, int) or cumulative_cache_size < 0:
            raise ValueError(f"cumulative_cache_size must be an integer >= 0, "
                             f"got {cumulative_cache_size!r}")
        self.num_classes = num_classes
        self.bands = bands
        self.span_cache_size = span_cache_size
        self.requested_checkpoint_every = checkpoint_every
        self.checkpoint_every = checkpoint_every or 1
        self.cumulative_cache_size = cumulative_cache_size
        self.betas: Tensor | None = None
        self.profile: Tensor | None = None  # float64 [T, b+1]
        self.diag: Tensor | None = None  # float64 [T, K]
        self.checkpoints: Tensor | None = None  # float64 [T // m + 1, K, K]: Qbar_{m i}
        self.cumulative_cache: OrderedDict[int, Tensor] = OrderedDict()
        self.spans: OrderedDict[tuple[int, int], Tensor] = OrderedDict()

    # ----- binding --------------------------------------------------------------------------
    def setup(self, betas: Tensor) -> None:
        betas = check_betas(betas, "variance").cpu()  # any value > 0, above 1 too
        self.betas = betas
        self.profile = gaussian_profile(betas, self.num_classes, self.bands)
        self.diag = diagonals(self.profile, self.num_classes)
        steps = betas.shape[0]
        self.checkpoint_every = min(
            self.requested_checkpoint_every or default_checkpoint_every(self.num_classes, steps),
            steps,
        )
        self.checkpoints = None
        self.cumulative_cache = OrderedDict()
        self.spans = OrderedDict()
        self.checkpoints = self._checkpoint_products()

    def _checkpoint_products(self) -> Tensor:
        """Qbar_0, Qbar_m, Qbar_2m, ... by the sequential products Qbar_t = Qbar_{t-1} Q_t."""
        k, steps, m = self.num_classes, self.betas.shape[0], self.checkpoint_every
        out = torch.empty(steps // m + 1, k, k, dtype=torch.float64)
        current = torch.eye(k, dtype=torch.float64)
        out[0] = current
        for t in range(1, steps + 1):
            current = current @ self._dense_step(t)
            if t % m == 0:
                out[t // m] = current
        return out

    @property
    def num_steps(self) -> int:
        if self.betas is None:
            raise RuntimeError("DiscretizedGaussian is not set up: call setup(betas) first")
        return self.betas.shape[0]

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "bands": self.bands}

    # ----- dense views ----------------------------------------------------------------------
    def _dense_step(self, t: int) -> Tensor:
        """Q_t from its profile, float64 [K, K] on the device of the tables."""
        return _banded(self.profile[t - 1], self.diag[t - 1], self.bands)

    def step_matrix(self, beta: float) -> Tensor:
        """The one-step matrix Q of a variance beta > 0, float64 [K, K] on the CPU, whether
        or not beta is in the schedule (the mutual-information schedule searches over it)."""
        betas = check_betas(torch.tensor([float(beta)], dtype=torch.float64), "variance")
        profile = gaussian_profile(betas, self.num_classes, self.bands)
        return _banded(profile[0], diagonals(profile, self.num_classes)[0], self.bands)

    def transition_matrix(self, t: int) -> Tensor:
        check_int(t, 1, self.num_steps)
        return self._dense_step(t).cpu()

    def cumulative_matrix(self, t: int) -> Tensor:
        check_int(t, 0, self.num_steps)
        return self.cumulative_at(t).cpu().clone()

    def cumulative_at(self, t: int) -> Tensor:
        """Qbar_t, float64 [K, K] on the device of the tables: a checkpoint when m divides t,
        else Qbar_c Q_{c+1} ... Q_t from the checkpoint c = m floor(t/m) (cached). Read-only:
        the returned tensor may be shared with the tables."""
        m = self.checkpoint_every
        if t % m == 0:
            return self.checkpoints[t // m]
        if t in self.cumulative_cache:
            self.cumulative_cache.move_to_end(t)
            return self.cumulative_cache[t]
        mat = self.checkpoints[t // m]
        for u in range(m * (t // m) + 1, t + 1):
            mat = mat @ self._dense_step(u)
        if self.cumulative_cache_size > 0:
            self.cumulative_cache[t] = mat
            while len(self.cumulative_cache) > self.cumulative_cache_size:
                self.cumulative_cache.popitem(last=False)
        return mat

    def cumulative_matrices(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """The distinct Qbar_t of a batch and which one each example uses.

        Args:
            t: LongTensor [B], values in 0..T.
        Returns:
            (mats, index): float64 [U, K, K] (U distinct times, on the device of the tables)
            and LongTensor [B] on that device with Qbar_{t[b]} = mats[index[b]].
        """
        self.num_steps  # noqa: B018 (clear error when not set up)
        dev = self.checkpoints.device
        times, index = torch.unique(t.to(dev), return_inverse=True)
        if self.checkpoint_every == 1:
            return self.checkpoints[times], index
        mats = torch.stack([self.cumulative_at(u) for u in times.tolist()])
        return mats, index

    def stationary(self) -> Tensor:
        return torch.full((self.num_classes,), 1.0 / self.num_classes, dtype=torch.float64)

    # ----- structured operations ------------------------------------------------------------
    def log_cumulative(self, x_0: Tensor, t: Tensor) -> Tensor:
        """Rows Qbar_t[x_0, :], gathered and logged in float64, float32 [B, ..., K]."""
        mats, index = self.cumulative_matrices(t)
        which = per_example(index, x_0.dim()).expand(x_0.shape)
        rows = mats[which, x_0.to(which.device)]
        return rows.log().to(torch.float32).to(x_0.device)

    def log_cumulative_soft(self, log_x0: Tensor, t: Tensor) -> Tensor:
        """log(p Qbar_t), one [N, K] x [K, K] product per example."""
        batch = log_x0.shape[0]
        flat = log_x0.reshape(batch, -1, self.num_classes)
        mats, index = self.cumulative_matrices(t)
        mats = mats[index].to(log_x0.device)
        return log_matmul_exp(flat, mats).reshape(log_x0.shape)

    def log_transition_column(self, x_t: Tensor, s: Tensor, t: Tensor) -> Tensor:
        """log Q_{s->t}[j, x_t] for every j.

        One-step spans gather from the symmetric profile in O(K) per token; longer spans use
        cached dense products (a product of the Q_u is not symmetric: they do not commute).
        """
        self.num_steps  # noqa: B018
        if bool((t - s == 1).all()):
            return self._log_step_column(x_t, t)
        out = torch.empty(*x_t.shape, self.num_classes, dtype=torch.float32, device=x_t.device)
        pairs = torch.stack([s, t], dim=-1).cpu()
        for pair in torch.unique(pairs, dim=0).tolist():
            pick = ((s.cpu() == pair[0]) & (t.cpu() == pair[1])).to(x_t.device)
            span = self._span(pair[0], pair[1]).T  # rows of the transpose are columns
            out[pick] = span[x_t[pick].to(span.device)].log().to(torch.float32).to(x_t.device)
        return out

    def _log_step_column(self, x_t: Tensor, t: Tensor) -> Tensor:
        dev = self.profile.device
        k = self.num_classes
        tt = per_example(t.to(dev), x_t.dim()).expand(x_t.shape).unsqueeze(-1)  # [B, ..., 1]
        xt = x_t.to(dev).unsqueeze(-1)
        gap = (torch.arange(k, device=dev) - xt).abs()  # [B, ..., K]
        padded = torch.cat([self.profile, self.profile.new_zeros(self.num_steps, 1)], dim=1)
        values = padded[tt - 1, gap.clamp(max=self.bands + 1)]
        values = torch.where(gap == 0, self.diag[tt - 1, xt], values)
        return values.log().to(torch.float32).to(x_t.device)

    def _span(self, s: int, t: int) -> Tensor:
        """Q_{s->t} = Q_{s+1} ... Q_t, float64 [K, K], cached (least recently used dropped)."""
        key = (s, t)
        if key in self.spans:
            self.spans.move_to_end(key)
            return self.spans[key]
        span = self._dense_step(s + 1)
        for u in range(s + 2, t + 1):
            span = span @ self._dense_step(u)
        self.spans[key] = span
        while len(self.spans) > self.span_cache_size:
            self.spans.popitem(last=False)
        return span


def _banded(profile: Tensor, diag: Tensor, bands: int) -> Tensor:
    """The dense Q of one step from its off-diagonal profile [b+1] and diagonal [K]: the
    symmetric Toeplitz matrix of the profile (0 beyond the band), diagonal replaced."""
    k = diag.shape[0]
    column = np.zeros(k)
    column[1 : bands + 1] = profile[1:].cpu().numpy()
    mat = torch.from_numpy(scipy.linalg.toeplitz(column)).to(profile.device)
    mat.diagonal().copy_(diag)
    return mat
