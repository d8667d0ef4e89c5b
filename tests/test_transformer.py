"""Transformer denoiser and causal baseline: shapes, attention direction, time conditioning."""

from __future__ import annotations

import pytest
import torch

from discrete_diffusion.data.base import DataInfo
from discrete_diffusion.networks import causal_transformer, transformer
from discrete_diffusion.networks.transformer import Config

L, K, T = 12, 7, 10
SMALL = Config(num_layers=2, d_model=32, num_heads=4, mlp_dim=64)
INFO = DataInfo(num_classes=K - 1, example_shape=(L,), unit="char")


def _x(seed: int = 0, batch: int = 3) -> torch.Tensor:
    return torch.randint(0, K, (batch, L), generator=torch.Generator().manual_seed(seed))


def test_denoiser_shapes_and_t_range() -> None:
    torch.manual_seed(0)
    model = transformer.build(SMALL, INFO, K, T).eval()
    x = _x()
    out = model(x, torch.tensor([1, 5, T]))
    assert out.shape == (3, L, K) and out.dtype == torch.float32
    assert model.time.num_embeddings == T + 1  # t = T has its own row
    a = model(x[:1], torch.tensor([T]))
    b = model(x[:1], torch.tensor([T - 1]))
    assert not torch.allclose(a, b)


def test_denoiser_is_bidirectional() -> None:
    torch.manual_seed(0)
    model = transformer.build(SMALL, INFO, K, T).eval()
    x = _x(batch=1)
    t = torch.tensor([3])
    base = model(x, t)
    y = x.clone()
    y[0, L - 1] = (y[0, L - 1] + 1) % K  # change the last position
    changed = (model(y, t) - base).abs().amax(-1)[0]
    assert (changed[: L - 1] > 1e-6).all()  # every earlier position sees it


def test_causal_model_ignores_later_positions() -> None:
    torch.manual_seed(0)
    model = causal_transformer.build(SMALL, INFO, K, 0).eval()
    x = _x(batch=2)
    base = model(x)
    for j in (0, 5, L - 1):
        y = x.clone()
        y[:, j] = (y[:, j] + 1) % K
        diff = (model(y) - base).abs().amax(-1)
        assert torch.all(diff[:, :j] <= 1e-6), j  # positions before j: unchanged
        assert torch.all(diff[:, j] > 1e-6)  # position j itself sees its input


def test_blocks_are_shared_not_copied() -> None:
    causal = causal_transformer.build(SMALL, INFO, K, 0)
    bidir = transformer.build(SMALL, INFO, K, T)
    assert type(causal.trunk) is type(bidir.trunk)
    assert causal.trunk.blocks[0].attn.causal and not bidir.trunk.blocks[0].attn.causal


def test_gradients_reach_every_parameter() -> None:
    model = transformer.build(SMALL, INFO, K, T)
    model(_x(), torch.tensor([1, 2, 3])).logsumexp(-1).sum().backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == ["time.weight"] or unused == []
    used_rows = model.time.weight.grad.abs().sum(-1).nonzero().flatten().tolist()
    assert used_rows == [1, 2, 3]


def test_config_and_length_errors() -> None:
    with pytest.raises(ValueError, match="divisible"):
        transformer.build(Config(d_model=30, num_heads=4), INFO, K, T)
    with pytest.raises(ValueError, match="dropout"):
        transformer.build(Config(num_layers=1, d_model=8, num_heads=2, mlp_dim=8, dropout=1.5),
                          INFO, K, T)
    image_info = DataInfo(num_classes=4, example_shape=(1, 2, 2), unit="dim")
    with pytest.raises(ValueError, match="sequences"):
        transformer.build(SMALL, image_info, K, T)
    model = transformer.build(SMALL, INFO, K, T)
    with pytest.raises(ValueError, match="exceeds"):
        model(torch.zeros(1, L + 1, dtype=torch.long), torch.tensor([1]))


def test_paper_size() -> None:
    cfg = Config()
    assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.mlp_dim, cfg.dropout) == \
        (12, 768, 12, 3072, 0.0)
    per_block = 4 * 768 * 768 + 4 * 768 + 2 * 768 * 3072 + 3072 + 768 + 4 * 768
    assert per_block == sum(p.numel() for p in transformer.Block(cfg).parameters())


def test_rotary_scores_depend_on_offsets_only() -> None:
    from discrete_diffusion.networks.transformer import rotary_tables, rotate

    g = torch.Generator().manual_seed(0)
    q0, k0 = torch.randn(8, generator=g), torch.randn(8, generator=g)
    cos, sin = rotary_tables(12, 8, torch.device("cpu"))
    q = rotate(q0.expand(1, 1, 12, 8), cos, sin)[0, 0]  # the same vector at every position
    k = rotate(k0.expand(1, 1, 12, 8), cos, sin)[0, 0]
    scores = q @ k.T
    assert torch.allclose(q.norm(dim=-1), q0.norm().expand(12), atol=1e-5)  # a rotation
    for offset in (0, 1, 5):
        diag = torch.diagonal(scores, offset)
        assert torch.allclose(diag, diag[0].expand_as(diag), atol=1e-4)
    assert not torch.allclose(scores[0, 1], scores[0, 5])  # but offsets do matter


def test_learned_positions_remain_available() -> None:
    from discrete_diffusion.networks.transformer import Config, TransformerDenoiser

    cfg = Config(num_layers=1, d_model=16, num_heads=2, mlp_dim=32, positions="learned")
    model = TransformerDenoiser(cfg, num_classes=5, num_steps=4, max_len=6)
    assert model.trunk.position is not None
    out = model(torch.zeros(2, 6, dtype=torch.long), torch.tensor([1, 4]))
    assert out.shape == (2, 6, 5)
    rotary = TransformerDenoiser(Config(num_layers=1, d_model=16, num_heads=2, mlp_dim=32),
                                 num_classes=5, num_steps=4, max_len=6)
    assert rotary.trunk.position is None
    # identical inputs at every position give position-dependent outputs only through rotary
    x = torch.full((1, 6), 2, dtype=torch.long)
    x[0, 0] = 1
    logits = rotary(x, torch.tensor([2]))
    assert not torch.allclose(logits[0, 2], logits[0, 4], atol=1e-6)
    with pytest.raises(ValueError, match="positions"):
        Config(positions="absolute").validate()
