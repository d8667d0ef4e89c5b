"""Statistics of a token stream for DataInfo: unigram marginal and token embeddings.

* `unigram_marginal`: frequencies of each id in the training split, float64 [K]; the data
  marginal p(x_0) of the mutual-information schedule (paper section 3.4, appendix A.2.4).
* `ppmi_embeddings`: the embeddings of the nearest-neighbour process (paper section 3.2,
  appendix A.2.3). The paper used pretrained word2vec-style embeddings; we derive them from the
  data so that any corpus works offline: symmetric co-occurrence counts within `window` tokens
  over (at most `max_tokens` of) the training split, positive pointwise mutual information
  PPMI(i, j) = max(0, log(c_ij * N / (c_i * c_j))), then a truncated SVD with embeddings
  U * sqrt(S) (Levy & Goldberg's recipe). The result is deterministic: the SVD signs are fixed
  so that each column's largest-magnitude entry is positive, and tokens that never occur get
  a fixed pseudo-random direction of tiny norm (so normalising them stays finite).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla


def unigram_marginal(ids: np.ndarray, num_classes: int) -> np.ndarray:
    """Unigram frequencies float64 [K] of a 1-D id array (sums to 1)."""
    counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=num_classes)
    if counts.shape[0] != num_classes:
        raise ValueError(f"token id {counts.shape[0] - 1} is outside a vocabulary of {num_classes}")
    total = counts.sum()
    if total == 0:
        raise ValueError("cannot compute a unigram marginal of an empty training split")
    return counts.astype(np.float64) / total


def cooccurrence(ids: np.ndarray, num_classes: int, window: int) -> sp.csr_matrix:
    """Symmetric co-occurrence counts [K, K] of ids at distance 1..window."""
    ids = np.asarray(ids, dtype=np.int64)
    rows, cols = [], []
    for d in range(1, window + 1):
        rows += [ids[:-d], ids[d:]]
        cols += [ids[d:], ids[:-d]]
    r, c = np.concatenate(rows), np.concatenate(cols)
    data = np.ones_like(r, dtype=np.float64)
    return sp.coo_matrix((data, (r, c)), shape=(num_classes, num_classes)).tocsr()


def ppmi(counts: sp.csr_matrix) -> sp.csr_matrix:
    """Positive pointwise mutual information of a co-occurrence count matrix."""
    total = counts.sum()
    row = np.asarray(counts.sum(axis=1)).ravel()
    coo = counts.tocoo()
    pmi = np.log(coo.data * total / (row[coo.row] * row[coo.col]))
    keep = pmi > 0
    shape = counts.shape
    return sp.coo_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=shape).tocsr()


def _truncated_svd(m: sp.csr_matrix, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-`dim` left singular vectors and values, deterministically."""
    k = m.shape[0]
    if k <= 1024 or dim >= k - 1:
        u, s, _ = np.linalg.svd(m.toarray(), full_matrices=False)
        return u[:, :dim], s[:dim]
    v0 = np.full(k, 1.0 / np.sqrt(k))  # fixed start vector: ARPACK is otherwise random
    u, s, _ = spla.svds(m.astype(np.float64), k=dim, v0=v0)
    order = np.argsort(-s)
    return u[:, order], s[order]


def ppmi_embeddings(
    ids: np.ndarray,
    num_classes: int,
    dim: int = 32,
    window: int = 2,
    max_tokens: int = 20_000_000,
) -> np.ndarray:
    """Token embeddings float64 [K, min(dim, K - 1)] from the PPMI matrix of `ids`.

    Args:
        ids: 1-D array of token ids (the training split); only the first `max_tokens` are used.
        num_classes: vocabulary size K.
        dim: embedding width (capped at K - 1).
        window: co-occurrence window on each side.
        max_tokens: cap on the tokens counted, for speed on large corpora.
    """
    if num_classes < 2:
        raise ValueError(f"embeddings need at least 2 classes, got {num_classes}")
    dim = max(1, min(dim, num_classes - 1))
    ids = np.asarray(ids[:max_tokens])
    u, s = _truncated_svd(ppmi(cooccurrence(ids, num_classes, window)), dim)
    emb = u * np.sqrt(s)[None, :]
    signs = np.sign(emb[np.abs(emb).argmax(axis=0), np.arange(emb.shape[1])])
    emb = emb * np.where(signs == 0, 1.0, signs)[None, :]
    dead = np.linalg.norm(emb, axis=1) == 0
    if dead.any():
        rng = np.random.default_rng(0)
        emb[dead] = 1e-6 * rng.standard_normal((int(dead.sum()), emb.shape[1]))
    return emb


def add_statistics(arrays: dict[str, np.ndarray], num_classes: int, dim: int,
                   window: int) -> dict[str, np.ndarray]:
    """Add the DataInfo statistics of the "train" split to `arrays` (in place, returned):
    "marginal" (`unigram_marginal`) and "embeddings" (`ppmi_embeddings`)."""
    train = arrays["train"].reshape(-1)
    arrays["marginal"] = unigram_marginal(train, num_classes)
    arrays["embeddings"] = ppmi_embeddings(train, num_classes, dim=dim, window=window)
    return arrays
