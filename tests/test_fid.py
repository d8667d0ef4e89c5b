"""FID: Frechet distance against closed forms, FID of a set with itself, network loading."""

import numpy as np
import pytest
import torch

from discrete_diffusion.evaluation import fid


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu_1, mu_2 = rng.normal(size=5), rng.normal(size=5)
    s_1, s_2 = rng.uniform(0.1, 2.0, 5), rng.uniform(0.1, 2.0, 5)
    closed = ((mu_1 - mu_2) ** 2).sum() + ((np.sqrt(s_1) - np.sqrt(s_2)) ** 2).sum()
    got = fid.frechet_distance(mu_1, np.diag(s_1), mu_2, np.diag(s_2))
    assert got == pytest.approx(closed, rel=1e-10)


def test_frechet_distance_commuting_covariances():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    a, b = rng.uniform(0.2, 3.0, 4), rng.uniform(0.2, 3.0, 4)
    s_1, s_2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    closed = ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fid.frechet_distance(np.zeros(4), s_1, np.zeros(4), s_2) == pytest.approx(closed)


def test_statistics_float64_unbiased():
    feats = np.random.default_rng(2).normal(size=(50, 3)).astype(np.float32)
    mu, sigma = fid.statistics(feats)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64).T))
    with pytest.raises(ValueError, match="at least 2"):
        fid.statistics(feats[:1])


class _Features(torch.nn.Module):
    """A tiny 'network' in place of Inception: channel means and pooled patches."""

    def forward(self, x):
        assert x.shape[1:] == (3, 299, 299)
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)  # [B, 12]


def test_fid_of_a_set_with_itself_is_zero_and_shift_is_positive(tmp_path):
    torch.jit.script(_Features()).save(str(tmp_path / "net.pt"))
    net = fid.load_network(tmp_path / "net.pt")
    images = torch.randint(0, 17, (40, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    ref = fid.reference_statistics(
        "digits-test", tmp_path / "net.pt",
        lambda: fid.features(net, [images[:20], images[20:]], 17), tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("fid-digits_test-*.npz"))) == 1
    assert fid.fid([images], ref, net, 17) == pytest.approx(0.0, abs=1e-6)
    assert fid.fid([(images + 3).clamp(max=16)], ref, net, 17) > 0.01
    again = fid.reference_statistics("digits-test", tmp_path / "net.pt",
                                     lambda: pytest.fail("not cached"), tmp_path / "cache")
    np.testing.assert_array_equal(again[0], ref[0])


def test_preprocess_range_and_grey_repeat():
    x = torch.tensor([[[[0, 255]]]])
    y = fid.preprocess(x, 256, size=2)
    assert y.shape == (1, 3, 2, 2)
    assert torch.allclose(y[0, :, 0, 0], torch.full((3,), -1.0))
    assert torch.allclose(y[0, :, 0, 1], torch.full((3,), 127 / 128))
    assert torch.allclose(fid.preprocess(torch.tensor([[[[16]]]]), 17, size=1), y[..., :1, 1:])


def test_bad_network_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        fid.load_network(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a TorchScript module"):
        fid.load_network(tmp_path / "junk.pt")
