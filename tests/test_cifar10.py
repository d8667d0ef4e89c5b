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
