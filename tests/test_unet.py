"""UNet: shapes, both heads, zero-initialised residual output, time embedding, bad configs."""

import math

import pytest
import torch

from discrete_diffusion.data.base import DataInfo
from discrete_diffusion.networks import unet

INFO = DataInfo(num_classes=17, example_shape=(1, 8, 8), mask_index=8, unit="dim")


def _tiny(**changes) -> unet.Config:
    base = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                num_groups=4)
    return unet.Config(**{**base, **changes})


def test_logits_head_shape_and_residual_at_init():
    torch.manual_seed(0)
    model = unet.build(_tiny(), INFO, 17, 50)
    x_t = torch.randint(0, 17, (3, 1, 8, 8))
    logits = model(x_t, torch.tensor([1, 25, 50]))
    assert logits.shape == (3, 1, 8, 8, 17)
    # conv_out is zero-initialised, so the output is exactly the one-hot residual.
    assert torch.equal(logits, torch.nn.functional.one_hot(x_t, 17).float())


def test_logits_head_depends_on_input_and_time_after_update():
    torch.manual_seed(0)
    model = unet.build(_tiny(), INFO, 17, 50)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    x_t = torch.randint(0, 17, (2, 1, 8, 8))
    a = model(x_t, torch.tensor([1, 1]))
    b = model(x_t, torch.tensor([40, 40]))
    assert not torch.allclose(a, b)
    # Each example is processed independently (GroupNorm, not BatchNorm).
    assert torch.allclose(model(x_t[:1], torch.tensor([1])), a[:1], atol=1e-5)


def test_logistic_head_normalised_and_centred_at_init():
    model = unet.build(_tiny(head="logistic"), INFO, 17, 50)
    x_t = torch.randint(0, 17, (2, 1, 8, 8))
    log_p = model(x_t, torch.tensor([3, 7]))
    assert log_p.shape == (2, 1, 8, 8, 17)
    assert torch.allclose(log_p.logsumexp(-1), torch.zeros(2, 1, 8, 8), atol=1e-5)
    # Zero output layer: loc = tanh(x_t normalised), so the mode is the bin nearest that loc.
    loc = torch.tanh(x_t.float() / 16 * 2 - 1)
    assert torch.equal(log_p.argmax(-1), torch.round((loc + 1) / 2 * 16).long())


def test_colour_images_and_cifar_preset_size():
    info = DataInfo(num_classes=256, example_shape=(3, 16, 16), mask_index=128, unit="dim")
    model = unet.build(_tiny(attn_resolutions=(8,)), info, 256, 10)
    assert model(torch.randint(0, 256, (1, 3, 16, 16)), torch.tensor([5])).shape == (
        1, 3, 16, 16, 256)
    cfg = unet.cifar10()
    assert (cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.attn_resolutions) == (
        128, (1, 2, 2, 2), 2, (16,))
    assert cfg.dropout == 0.1 and cfg.num_groups == 32


def test_time_embedding_matches_authors_scale():
    emb = unet.timestep_embedding(torch.tensor([1, 11]), num_steps=100, dim=8)
    # t = 1 is the authors' 0: sin(0) = 0, cos(0) = 1.
    assert torch.allclose(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    # t = 11 with T = 100 is the authors' 10 * 1000 / 100 = 100 at the lowest frequency.
    assert math.isclose(emb[1, 0].item(), math.sin(100.0), abs_tol=1e-4)


@pytest.mark.parametrize("changes, pattern", [
    (dict(head="pixelcnn"), "unknown UNet head"),
    (dict(num_groups=3), "do not divide"),
    (dict(ch_mult=(1, 1, 1, 1, 1)), "not divisible"),
])
def test_bad_configs(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        unet.build(_tiny(**changes), INFO, 17, 10)
