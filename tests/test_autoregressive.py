"""Autoregressive-as-diffusion: the bound is the autoregressive cross-entropy."""

from __future__ import annotations

import pytest
import torch

from discrete_diffusion import D3PM, schedules
from discrete_diffusion.transitions import Autoregressive

K, MASK, N = 5, 4, 6


def _process() -> D3PM:
    return D3PM(Autoregressive(K, MASK, N), schedules.jsd(N))


def _denoiser(seed: int = 0):
    """A context-dependent denoiser: logits from a fixed random projection of x_t and t."""
    gen = torch.Generator().manual_seed(seed)
    proj = torch.randn(N * K + 1, N * K, generator=gen, dtype=torch.float64)

    def denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        feats = torch.cat([torch.nn.functional.one_hot(x_t, K).flatten(1).double(),
                           t.double().unsqueeze(1) / N], dim=1)
        return (feats @ proj).view(-1, N, K).float()

    return denoiser


def _brute_q(x_0: torch.Tensor, t: int) -> torch.Tensor:
    return torch.tensor([[v if i < N - t else MASK for i, v in enumerate(row)]
                         for row in x_0.tolist()])


def test_forward_marginals_mask_from_the_right() -> None:
    proc = _process()
    x_0 = torch.tensor([[0, 1, 2, 3, 0, 1], [3, 3, 2, 1, 0, 0]])
    for t in range(N + 1):
        probs = proc.q_probs(x_0, t)
        assert torch.equal(probs.argmax(-1), _brute_q(x_0, t))
        assert torch.equal(probs.max(-1).values, torch.ones(2, N))
        assert torch.equal(proc.q_sample(x_0, t), _brute_q(x_0, t))


def test_bound_is_the_autoregressive_cross_entropy() -> None:
    proc, denoiser = _process(), _denoiser()
    x_0 = torch.tensor([[0, 1, 2, 3, 0, 1], [3, 3, 2, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    terms = proc.nll_bound(denoiser, x_0, return_terms=True)
    assert torch.equal(terms["prior"], torch.zeros(3))
    expected = torch.zeros(3, dtype=torch.float64)
    for i in range(N):  # position i is predicted from x_0 with positions >= i masked
        context = _brute_q(x_0, N - i)
        log_p = denoiser(context, torch.full((3,), N - i)).double().log_softmax(-1)
        expected -= log_p[torch.arange(3), i, x_0[:, i]]
    torch.testing.assert_close(terms["total"].double(), expected, rtol=1e-5, atol=1e-5)


def test_strided_bound_predicts_blocks_in_parallel() -> None:
    proc, denoiser = _process(), _denoiser(1)
    x_0 = torch.tensor([[0, 1, 2, 3, 0, 1], [2, 0, 2, 1, 3, 0]])
    got = proc.nll_bound(denoiser, x_0, step_size=2)
    expected = torch.zeros(2, dtype=torch.float64)
    for t in (6, 4, 2):  # positions N - t, N - t + 1 revealed from x_t
        log_p = denoiser(_brute_q(x_0, t), torch.full((2,), t)).double().log_softmax(-1)
        for i in (N - t, N - t + 1):
            expected -= log_p[torch.arange(2), i, x_0[:, i]]
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_posterior_is_a_delta_and_p_copies_x_t_off_the_current_position() -> None:
    proc, denoiser = _process(), _denoiser(2)
    x_0 = torch.tensor([[0, 1, 2, 3, 0, 1]])
    for t in range(1, N + 1):
        x_t = _brute_q(x_0, t)
        post = proc.q_posterior_logits(x_0, x_t, t).exp()
        assert torch.equal(post.argmax(-1), _brute_q(x_0, t - 1))
        assert torch.equal(post.max(-1).values, torch.ones(1, N))
        logits = denoiser(x_t, torch.tensor([t]))
        p = proc.p_logits(logits, x_t, t).exp()
        current = N - t
        for i in range(N):
            if i == current:
                torch.testing.assert_close(p[0, i], logits[0, i].softmax(-1))
            else:
                assert p[0, i, x_t[0, i]].item() == 1.0


def test_sampling_fills_left_to_right_with_the_denoiser() -> None:
    proc = _process()

    def copy_two(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # always predicts 2
        out = torch.full((*x_t.shape, K), -30.0)
        out[..., 2] = 0.0
        return out

    x, trajectory = proc.sample(copy_two, (2, N), return_trajectory=True,
                                generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, torch.full((2, N), 2))
    for t, x_t in trajectory:
        assert int((x_t == MASK).sum(-1).max()) == t


def test_dense_views_raise_and_bad_input_is_rejected() -> None:
    tr = Autoregressive(K, MASK, N)
    with pytest.raises(ValueError, match="seq_len"):
        D3PM(tr, schedules.jsd(N + 1))
    proc = _process()
    with pytest.raises(NotImplementedError, match="position"):
        proc.transition_matrix(1)
    with pytest.raises(NotImplementedError, match="position"):
        proc.cumulative_matrix(1)
    with pytest.raises(ValueError, match="length 6"):
        proc.q_probs(torch.zeros(1, N - 1, dtype=torch.long), 1)
    everything_masked = proc.q_probs(torch.arange(K)[None], N)  # at t = T, any length
    assert torch.equal(everything_masked.argmax(-1), torch.full((1, K), MASK))
    with pytest.raises(ValueError, match="mask_index"):
        Autoregressive(K, K, N)
