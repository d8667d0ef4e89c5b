"""NearestNeighbor: the kNN graph by brute force, expm by scipy, structured ops by dense ones."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
import scipy.linalg
import torch
from test_gaussian import check_against_dense, check_process_against_dense

from discrete_diffusion import D3PM
from discrete_diffusion.transitions import NearestNeighbor
from discrete_diffusion.transitions.nearest_neighbor import knn_graph


def _embeddings(num: int, dim: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(num, dim, generator=torch.Generator().manual_seed(seed))


def _brute_rate(emb: torch.Tensor, k: int) -> np.ndarray:
    """The rate matrix written out with explicit loops over pairs."""
    unit = (emb / emb.norm(dim=1, keepdim=True)).double().numpy()
    num = unit.shape[0]
    adj = np.zeros((num, num))
    for i in range(num):
        dists = [(float(np.sum((unit[i] - unit[j]) ** 2)), j) for j in range(num) if j != i]
        for _, j in sorted(dists)[:k]:
            adj[j, i] = 1.0
    sym = (adj + adj.T) / (2 * k)
    return sym - np.diag(sym.sum(1))


def test_rate_and_matrices_match_brute_force_and_scipy_expm() -> None:
    emb = _embeddings(12)
    tr = NearestNeighbor(emb, k=3, chunk_size=5)  # several chunks
    rate = _brute_rate(emb, 3)
    betas = torch.tensor([0.1, 0.4, 0.25], dtype=torch.float64)
    tr.setup(betas)
    c = 0.0
    for t, beta in enumerate(betas.tolist(), start=1):
        c += beta
        expected_q = torch.from_numpy(scipy.linalg.expm(beta * rate))
        torch.testing.assert_close(tr.transition_matrix(t), expected_q, rtol=1e-9, atol=1e-12)
        expected_qbar = torch.from_numpy(scipy.linalg.expm(c * rate))
        torch.testing.assert_close(tr.cumulative_matrix(t), expected_qbar, rtol=1e-9, atol=1e-12)
        q = tr.transition_matrix(t)
        torch.testing.assert_close(q, q.T)  # symmetric: doubly stochastic


def test_structured_operations_equal_dense() -> None:
    tr = NearestNeighbor(_embeddings(7), k=2)
    tr.setup(torch.tensor([0.3, 0.6, 1.0, 0.8], dtype=torch.float64))
    check_against_dense(tr)


def test_process_level_operations_equal_dense() -> None:
    tr = NearestNeighbor(_embeddings(6, seed=1), k=2)
    check_process_against_dense(D3PM(tr, torch.tensor([0.5, 1.0, 1.0], dtype=torch.float64)))


def test_reaches_uniform_and_cumulative_is_product() -> None:
    num = 10
    tr = NearestNeighbor(_embeddings(num, seed=2), k=3)
    assert tr.spectral_gap > 0  # connected graph
    proc = D3PM(tr, torch.full((200,), 1.0, dtype=torch.float64))
    uniform = torch.full((num, num), 1.0 / num, dtype=torch.float64)
    torch.testing.assert_close(proc.cumulative_matrix(200), uniform, rtol=0, atol=1e-8)
    torch.testing.assert_close(tr.stationary(), uniform[0])
    x_0 = torch.arange(num).view(2, 5)
    prior = proc.prior_kl(x_0)
    assert prior.abs().max() < 1e-6  # L_T = 0 up to float32 round-off


def test_ties_are_broken_by_index_and_self_is_excluded() -> None:
    # four copies of one point and one far point: every neighbour distance among the copies
    # ties at zero, so the lowest indices other than self win.
    emb = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]])
    tr = NearestNeighbor(emb, k=2)
    assert tr.neighbors.tolist() == [[1, 2], [0, 2], [0, 1], [0, 1], [0, 1]]
    again = NearestNeighbor(emb, k=2, chunk_size=1)
    assert torch.equal(tr.neighbors, again.neighbors)
    torch.testing.assert_close(tr.eigenvalues, again.eigenvalues)


def _lattice(values: range, dim: int, num: int, nonzero: int | None = None) -> torch.Tensor:
    """`num` distinct non-zero integer vectors (shuffled) with coordinates in `values`, and
    exactly `nonzero` non-zero coordinates when given: many distances tie."""
    points = [v for v in itertools.product(values, repeat=dim)
              if any(v) and (nonzero is None or sum(x != 0 for x in v) == nonzero)]
    order = torch.randperm(len(points), generator=torch.Generator().manual_seed(1))[:num]
    return torch.tensor(points, dtype=torch.float64)[order]


def _exact_ranking(points: torch.Tensor) -> list[list[int]]:
    """Every other row of each row sorted by (exact distance, index): for unit vectors the
    distance falls as the cosine a.b / (|a| |b|) rises, compared exactly as a signed square."""
    ints = points.long().tolist()
    num = len(ints)
    norms = [sum(x * x for x in a) for a in ints]

    def key(i: int, j: int) -> tuple[Fraction, int]:
        dot = sum(x * y for x, y in zip(ints[i], ints[j]))
        cos2 = Fraction(dot * dot, norms[i] * norms[j])
        return (-cos2 if dot >= 0 else cos2, j)

    return [sorted((j for j in range(num) if j != i), key=lambda j: key(i, j))
            for i in range(num)]


@pytest.mark.parametrize(("values", "dim", "nonzero"), [
    (range(-1, 2), 6, 4),  # norm 2: normalised exactly, so tied distances are equal floats
    (range(-3, 4), 3, None),  # mixed norms: round-off splits ties unless they are grouped
])
def test_ties_at_realistic_sizes_follow_distance_then_index(
    values: range, dim: int, nonzero: int | None
) -> None:
    points = _lattice(values, dim, 200, nonzero)
    ranking = _exact_ranking(points)
    unit = points / points.norm(dim=1, keepdim=True)
    for k in (5, 40):
        expected = torch.tensor([row[:k] for row in ranking])
        for chunk in (512, 7):
            assert torch.equal(knn_graph(unit, k, chunk), expected), (k, chunk)
    assert torch.equal(NearestNeighbor(points, k=5).neighbors, expected[:, :5])


def test_disconnected_graph_has_zero_spectral_gap() -> None:
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]])
    assert NearestNeighbor(emb, k=1).spectral_gap == pytest.approx(0.0, abs=1e-12)


def test_tables_hold_no_per_step_matrices() -> None:
    num, steps = 9, 50
    tr = NearestNeighbor(_embeddings(num), k=2)
    tr.setup(torch.full((steps,), 0.1, dtype=torch.float64))
    expected = 8 * (num * num + num + steps + (steps + 1) + num * 2)
    assert tr.table_bytes() == expected


@pytest.mark.parametrize(
    ("emb", "k", "match"),
    [
        (torch.ones(1, 3), 1, "K >= 2"),
        (torch.ones(4), 1, r"\[K, d\]"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 1, "finite"),
        (torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]), 1, "non-zero"),
        (torch.eye(3), 3, "k must be"),
        (torch.eye(3), 0, "k must be"),
    ],
)
def test_rejects_bad_input(emb: torch.Tensor, k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        NearestNeighbor(emb, k=k)


def test_rejects_negative_rates_and_use_before_setup() -> None:
    tr = NearestNeighbor(torch.eye(3), k=1)
    with pytest.raises(RuntimeError, match="setup"):
        tr.log_cumulative(torch.zeros(1, 2, dtype=torch.long), torch.tensor([1]))
    with pytest.raises(ValueError, match="rates"):
        tr.setup(torch.tensor([-0.1], dtype=torch.float64))
