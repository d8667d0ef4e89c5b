"""Image folders and zips: reading, caching, flips, codec, and one-line errors on bad input."""

import io
import os
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from discrete_diffusion.data import image_folder, images
from discrete_diffusion.data.base import codec_from_dir
from discrete_diffusion.data.image_arrays import ImageCodec
from discrete_diffusion.figures.samples import write_samples


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _make_folder(root, n=3, size=4, rgb=True, seed=0):
    rng = np.random.default_rng(seed)
    stored = {}
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                shape = (size, size, 3) if rgb else (size, size)
                a = rng.integers(0, 256, shape, dtype=np.uint8)
                (root / split / cls / f"{i:02d}.png").write_bytes(_png(a))
                stored[f"{split}/{cls}/{i:02d}"] = a
    return stored


def _chw(a):
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def test_folder_reader_sorted_and_exact(tmp_path):
    stored = _make_folder(tmp_path / "data")
    train = image_folder.read_split(tmp_path / "data", "train")
    assert train.shape == (6, 3, 4, 4) and train.dtype == np.uint8
    np.testing.assert_array_equal(train[4], _chw(stored["train/dog/01"]))  # cat 0..2, dog 0..2


def test_zip_layouts_match_folder(tmp_path):
    stored = _make_folder(tmp_path / "data", rgb=False)
    with zipfile.ZipFile(tmp_path / "all.zip", "w") as z:
        for key, a in stored.items():
            z.writestr(f"top/{key}.png", _png(a))
    (tmp_path / "split").mkdir()
    with zipfile.ZipFile(tmp_path / "split" / "test.zip", "w") as z:
        for key, a in stored.items():
            if key.startswith("test/"):
                z.writestr(f"{key}.png", _png(a))
    folder = image_folder.read_split(tmp_path / "data", "test")
    assert folder.shape == (6, 1, 4, 4)
    np.testing.assert_array_equal(image_folder.read_split(tmp_path / "all.zip", "test"), folder)
    np.testing.assert_array_equal(image_folder.read_split(tmp_path / "split", "test"), folder)


def test_source_cache_is_keyed_by_files(tmp_path):
    _make_folder(tmp_path / "data")
    cfg = images.Config(cache_dir=str(tmp_path / "cache"))
    first = images.build(cfg, str(tmp_path / "data"))
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2
    assert isinstance(first.splits["train"], np.memmap)
    # Rewriting a file (new size or mtime) gives a new key: never a stale array.
    new = np.zeros((4, 4, 3), np.uint8)
    target = tmp_path / "data" / "test" / "cat" / "00.png"
    target.write_bytes(_png(new))
    os.utime(target, ns=(1, 1))
    second = images.build(cfg, str(tmp_path / "data"))
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
    np.testing.assert_array_equal(second.splits["test"][0], _chw(new))
    info = second.info()
    assert info.num_classes == 256 and info.mask_index == 128 and info.unit == "dim"


def test_flips_are_seeded_and_mirror_width(tmp_path):
    _make_folder(tmp_path / "data", n=8)
    source = images.build(images.Config(cache_dir=str(tmp_path / "c")), str(tmp_path / "data"))
    plain = images.build(images.Config(flip=False, cache_dir=str(tmp_path / "c")),
                         str(tmp_path / "data"))
    a = next(source.train_batches(16, seed=5))
    b = next(source.train_batches(16, seed=5))
    p = next(plain.train_batches(16, seed=5))
    assert torch.equal(a, b)
    flipped = [not torch.equal(a[i], p[i]) for i in range(16)]
    assert 0 < sum(flipped) < 16
    for i in range(16):
        assert torch.equal(a[i], p[i].flip(-1) if flipped[i] else p[i])


@pytest.mark.parametrize("problem", ["corrupt", "size", "channels", "empty", "missing"])
def test_bad_input_names_the_problem(tmp_path, problem):
    root = tmp_path / "data"
    _make_folder(root)
    bad = root / "train" / "dog" / "zz.png"
    if problem == "corrupt":
        bad.write_bytes(b"\x89PNG garbage")
        pattern = "cannot read image .*zz.png"
    elif problem == "size":
        bad.write_bytes(_png(np.zeros((5, 4, 3), np.uint8)))
        pattern = "mismatched image size: .*zz.png"
    elif problem == "channels":
        bad.write_bytes(_png(np.zeros((4, 4), np.uint8)))
        pattern = "mismatched image channels: .*zz.png"
    elif problem == "empty":
        root = tmp_path / "empty"
        (root / "train" / "cat").mkdir(parents=True)
        pattern = "no images found"
    else:
        root = tmp_path / "nowhere"
        pattern = "no such image folder"
    with pytest.raises((ValueError, FileNotFoundError), match=pattern) as err:
        images.build(images.Config(cache_dir=str(tmp_path / "c")), str(root))
    assert "\n" not in str(err.value)


def test_codec_round_trip_and_render(tmp_path):
    codec = ImageCodec(17, (1, 8, 8))
    codec.save(tmp_path / "run")
    loaded = codec_from_dir(tmp_path / "run")
    assert isinstance(loaded, ImageCodec)
    assert loaded.num_classes == 17 and loaded.example_shape == (1, 8, 8)
    x = torch.randint(0, 17, (5, 1, 8, 8))
    x[0] = 16
    assert write_samples(loaded, x, tmp_path / "grid.png") is None
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.max() == 255 and grid.ndim == 2
    with pytest.raises(ValueError, match="expects samples"):
        write_samples(loaded, torch.zeros(2, 3, 8, 8, dtype=torch.long), tmp_path / "bad.png")
