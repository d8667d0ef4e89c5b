"""CIFAR-10 python batches through the restricted unpickler; download checksum."""

import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from discrete_diffusion.data import cifar10


def _batch_bytes(n: int, seed: int) -> tuple[bytes, np.ndarray]:
    pixels = np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)
    return pickle.dumps({b"data": pixels, b"labels": list(range(n))}, protocol=4), pixels


def _tarball(path, n=4):
    expected = {}
    with tarfile.open(path, "w:gz") as tar:
        for i, name in enumerate([*cifar10.TRAIN_BATCHES, *cifar10.TEST_BATCHES]):
            data, pixels = _batch_bytes(n, i)
            expected[name] = pixels
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return expected


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_code():
    with pytest.raises(ValueError, match="refused to load"):
        cifar10.load_batch(pickle.dumps({b"data": _Evil()}), "evil")
    with pytest.raises(ValueError, match="refused"):
        cifar10.load_batch(pickle.dumps(print), "builtin")


def test_load_batch_layout():
    data, pixels = _batch_bytes(3, 0)
    images = cifar10.load_batch(data)
    assert images.shape == (3, 3, 32, 32) and images.dtype == np.uint8
    # CIFAR rows are 1024 red, then green, then blue values, each row-major 32x32.
    assert images[1, 2, 4, 5] == pixels[1, 2 * 1024 + 4 * 32 + 5]
    with pytest.raises(ValueError, match="corrupt"):
        cifar10.load_batch(data[:20], "short")


def test_tarball_source(tmp_path):
    expected = _tarball(tmp_path / "cifar-10-python.tar.gz")
    source = cifar10.build(cifar10.Config(cache_dir=str(tmp_path / "cache")),
                           str(tmp_path / "cifar-10-python.tar.gz"))
    assert source.num_examples("train") == 20 and source.example_shape == (3, 32, 32)
    test = next(iter(source.eval_batches("test", 10))).numpy()
    np.testing.assert_array_equal(test.reshape(4, -1), expected["test_batch"])
    info = source.info()
    assert info.num_classes == 256 and info.mask_index == 128 and info.unit == "dim"


def test_download_checks_md5(tmp_path):
    src = tmp_path / "src.tar.gz"
    src.write_bytes(b"not cifar")
    url = src.as_uri()
    with pytest.raises(ValueError, match="checksum mismatch"):
        cifar10.download(tmp_path / "dl", url=url)
    assert not any((tmp_path / "dl").iterdir())
    good = cifar10.md5_of(src)
    assert cifar10.download(tmp_path / "dl", url=url, md5=good).read_bytes() == b"not cifar"
    assert cifar10.URL.endswith("cifar-10-python.tar.gz")
    assert cifar10.MD5 == "c58f30108f718f92721af3b95e74349a"


# ----- reduced resolution (data.resolution) -------------------------------------------------
def _brute_block_mean(images: np.ndarray, f: int) -> np.ndarray:
    """Each output pixel: the exact mean of its f x f block, rounded half up (Fractions)."""
    from fractions import Fraction
    from math import floor

    n, c, h, w = images.shape
    out = np.zeros((n, c, h // f, w // f), np.uint8)
    for idx in np.ndindex(out.shape):
        b, ch, i, j = idx
        block = images[b, ch, i * f:(i + 1) * f, j * f:(j + 1) * f]
        out[idx] = floor(Fraction(int(block.astype(int).sum()), f * f) + Fraction(1, 2))
    return out


@pytest.mark.parametrize("factor", [1, 2, 4, 8])
def test_area_downsampling_is_the_rounded_block_mean(factor):
    from discrete_diffusion.data.image_resolution import area_downsample

    images = np.random.default_rng(factor).integers(0, 256, (3, 3, 8, 8), dtype=np.uint8)
    images[0, 0, :2, :2] = [[1, 1], [0, 0]]        # mean 0.5 -> 1 (halves round up)
    images[0, 1, :2, :2] = [[255, 254], [255, 254]]  # 254.5 -> 255 (stays a level)
    images[0, 2, :2, :2] = [[0, 0], [0, 1]]        # 0.25 -> 0
    got = area_downsample(images, factor)
    assert got.dtype == np.uint8 and got.shape == (3, 3, 8 // factor, 8 // factor)
    np.testing.assert_array_equal(got, _brute_block_mean(images, factor))
    if factor == 2:
        assert got[0, :, 0, 0].tolist() == [1, 255, 0]


def test_tarball_at_reduced_resolution_is_cached_per_resolution(tmp_path):
    from discrete_diffusion.data.image_resolution import area_downsample

    _tarball(tmp_path / "cifar-10-python.tar.gz")
    cache = tmp_path / "cache"
    tarball = str(tmp_path / "cifar-10-python.tar.gz")
    full = cifar10.build(cifar10.Config(cache_dir=str(cache)), tarball)
    for resolution in (16, 8):
        cfg = cifar10.Config(cache_dir=str(cache), resolution=resolution)
        small = cifar10.build(cfg, str(tmp_path / "cifar-10-python.tar.gz"))
        assert small.example_shape == (3, resolution, resolution)
        assert small.info().example_shape == (3, resolution, resolution)
        assert small.name == f"cifar10-{resolution}px" and small.num_classes == 256
        for split in ("train", "test"):
            np.testing.assert_array_equal(small.splits[split],
                                          area_downsample(full.splits[split], 32 // resolution))
        assert len(list(cache.glob(f"*-{resolution}px.npy"))) == 2  # train and test
    again = cifar10.build(cifar10.Config(cache_dir=str(cache), resolution=16),
                          str(tmp_path / "cifar-10-python.tar.gz"))
    assert isinstance(again.splits["train"], np.memmap)  # read back from the cache
    assert full.name == "cifar10" and full.example_shape == (3, 32, 32)


def _image_folder(root, size):
    from PIL import Image

    rng = np.random.default_rng(size)
    for split in ("train", "test"):
        for i in range(3):
            (root / split / "c").mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / "c" / f"{i}.png")


def test_image_folder_of_any_size_is_shrunk_by_the_same_factor(tmp_path):
    from discrete_diffusion.data.image_resolution import area_downsample

    _image_folder(tmp_path / "imgs", 8)
    cache = str(tmp_path / "cache")
    full = cifar10.build(cifar10.Config(cache_dir=cache), str(tmp_path / "imgs"))
    assert full.example_shape == (3, 8, 8) and full.name == "cifar10-jpeg"
    half = cifar10.build(cifar10.Config(cache_dir=cache, resolution=16), str(tmp_path / "imgs"))
    assert half.example_shape == (3, 4, 4) and half.name == "cifar10-jpeg-4px"
    np.testing.assert_array_equal(half.splits["test"], area_downsample(full.splits["test"], 2))
    with pytest.raises(ValueError, match="does not divide the 8x8 images") as err:
        cifar10.build(cifar10.Config(cache_dir=cache, resolution=2), str(tmp_path / "imgs"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad", [0, -16, 12, 64, 3])
def test_bad_resolution_is_a_one_line_error(bad):
    with pytest.raises(ValueError, match="data.resolution must divide 32") as err:
        cifar10.Config(resolution=bad)
    assert "\n" not in str(err.value)


def test_resolution_flows_from_the_config_to_the_data_info(tmp_path):
    from discrete_diffusion.training.builders import build_data
    from discrete_diffusion.training.config import config_from_dict, load_config

    _tarball(tmp_path / "cifar-10-python.tar.gz")
    raw = {"data": {"kind": "cifar10", "resolution": 8, "cache_dir": str(tmp_path / "c")},
           "model": {"kind": "unet"}, "method": {"kind": "diffusion"}}
    config = config_from_dict(raw)
    assert config.data.resolution == 8
    info = build_data(config, str(tmp_path / "cifar-10-python.tar.gz")).info()
    assert info.example_shape == (3, 8, 8) and info.num_classes == 256
    preset = load_config("configs/cifar10-gauss-cpu-small.yaml",
                         [f"data.cache_dir={tmp_path / 'c'}"])
    assert preset.data.resolution == 16 and preset.data.path == ""
    info = build_data(preset, str(tmp_path / "cifar-10-python.tar.gz")).info()
    assert info.example_shape == (3, 16, 16)
    with pytest.raises(ValueError, match="data.resolution must divide 32"):
        load_config("configs/cifar10-gauss-cpu-small.yaml", ["data.resolution=12"])


def test_cli_reports_a_bad_resolution_in_one_line(tmp_path, capsys):
    from discrete_diffusion.cli.main import main

    code = main(["train", "--config", "configs/cifar10-uniform-cpu-small.yaml", "--data",
                 str(tmp_path / "cifar-10-python.tar.gz"), "--out", str(tmp_path / "run"),
                 "data.resolution=12"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "data.resolution must divide 32" in err and "\n" not in err
