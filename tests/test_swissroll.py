"""The swiss-roll data source, its points codec and the figure helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from discrete_diffusion.data import swissroll
from discrete_diffusion.data.base import DataSource, codec_from_dir
from discrete_diffusion.figures import swissroll as figures
from discrete_diffusion.figures.samples import write_samples, write_trajectory

SMALL = swissroll.Config(bins=8, num_train=64, num_test=16, noise=0.3, seed=3)


def test_quantize_maps_the_box_onto_equal_bins_and_clips_outside():
    low, high = swissroll.BOX
    width = (high - low) / 8
    centres = low + width * (np.arange(8) + 0.5)
    points = np.stack([centres, centres[::-1]], axis=1)
    got = swissroll.quantize(points, 8)
    assert got.dtype == torch.long
    assert got[:, 0].tolist() == list(range(8))
    assert got[:, 1].tolist() == list(range(7, -1, -1))
    outside = swissroll.quantize(np.array([[low - 5.0, high + 5.0]]), 8)
    assert outside.tolist() == [[0, 7]]


def test_roll_points_lie_on_the_roll_without_noise():
    points = swissroll.roll_points(200, 0.0, np.random.default_rng(0))
    radius = np.linalg.norm(points, axis=1)  # on the roll, the radius equals the angle
    assert radius.min() >= 1.5 * math.pi - 1e-9
    assert radius.max() <= 4.5 * math.pi + 1e-9
    low, high = swissroll.BOX
    assert points.min() > low and points.max() < high


def test_splits_are_deterministic_distinct_and_in_range():
    a = swissroll.make_split(SMALL, "train")
    assert a.shape == (64, 2) and a.dtype == torch.long
    assert torch.equal(a, swissroll.make_split(SMALL, "train"))
    assert a.min() >= 0 and a.max() < 8
    test, validation = (swissroll.make_split(SMALL, s) for s in ("test", "validation"))
    assert test.shape == validation.shape == (16, 2)
    assert not torch.equal(test, validation)
    other_seed = swissroll.Config(bins=8, num_train=64, num_test=16, noise=0.3, seed=4)
    assert not torch.equal(a, swissroll.make_split(other_seed, "train"))


def test_source_satisfies_the_data_contract():
    source = swissroll.build(SMALL, None)
    assert isinstance(source, DataSource)
    assert source.num_classes == 8 and source.example_shape == (2,)
    assert source.mask_index is None and source.unit == "dim"
    assert source.num_examples("train") == 64 and source.num_examples("test") == 16
    batches = list(source.eval_batches("test", 5))
    assert [len(b) for b in batches] == [5, 5, 5, 1]
    assert torch.equal(torch.cat(batches), source.split("test"))
    info = source.info()
    expected = torch.bincount(source.split("train").flatten(), minlength=8).double() / 128
    assert info.num_classes == 8 and info.example_shape == (2,)
    assert torch.allclose(info.marginal, expected)


def test_train_batches_resume_exactly_from_their_state():
    source = swissroll.build(SMALL, "swissroll")
    it = source.train_batches(16, seed=1)
    for _ in range(5):  # past the end of the first epoch
        next(it)
    state = it.state_dict()
    expected = [next(it) for _ in range(3)]
    resumed = source.train_batches(16, seed=1, state=state)
    assert all(torch.equal(e, next(resumed)) for e in expected)
    assert expected[0].shape == (16, 2)


@pytest.mark.parametrize("bad", [{"bins": 1}, {"num_train": 0}, {"num_test": -2},
                                 {"noise": -0.1}, {"noise": float("nan")}])
def test_bad_config_is_a_one_line_error(bad):
    with pytest.raises(ValueError, match="swissroll"):
        swissroll.build(swissroll.Config(**bad))


def test_build_rejects_a_data_path_and_unknown_splits():
    with pytest.raises(ValueError, match="takes no path"):
        swissroll.build(SMALL, "/some/file.txt")
    with pytest.raises(ValueError, match="unknown split"):
        swissroll.build(SMALL).split("dev")


def test_point_codec_round_trips_and_renders_a_png(tmp_path):
    codec = swissroll.build(SMALL).codec()
    codec.save(tmp_path)
    loaded = codec_from_dir(tmp_path)
    assert isinstance(loaded, swissroll.PointCodec) and loaded.bins == 8
    x = torch.tensor([[0, 1], [7, 7], [8, 3]])  # the last point has a masked coordinate
    summary = write_samples(loaded, x, tmp_path / "points.png")
    assert "3 points" in summary
    with Image.open(tmp_path / "points.png") as image:
        assert image.size == (400, 400)
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        write_samples(loaded, torch.zeros(3, 3, dtype=torch.long))
    write_trajectory(loaded, [(2, x), (0, x)], tmp_path / "strip.png")
    with Image.open(tmp_path / "strip.png") as image:
        assert image.size == (400, 240)


def test_figure_has_the_size_its_layout_promises(tmp_path):
    x = swissroll.make_split(SMALL, "test")
    eye = torch.eye(8, dtype=torch.float64)
    panels = [figures.ProcessPanels("a", [x, x], [eye, eye], [x, x], note="n"),
              figures.ProcessPanels("b", [x, x], [eye, eye], None, mask=True)]
    size = figures.forward_reverse_figure(panels, [0, 4], 8, tmp_path / "f.png", title="t")
    assert size == figures.figure_size(2, 3, 2)
    with Image.open(tmp_path / "f.png") as image:
        image.verify()
    with Image.open(tmp_path / "f.png") as image:
        assert image.size == size
