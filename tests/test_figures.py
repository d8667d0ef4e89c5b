"""Figures: grid layout and level scaling, the progressive strip, the corruption figure."""

import numpy as np
import pytest
import torch
from PIL import Image

from discrete_diffusion.cli.main import main
from discrete_diffusion.figures import corruption, grid, progressive


def test_grid_layout_and_levels(tmp_path):
    x = np.zeros((5, 1, 2, 3), dtype=np.int64)
    x[4] = 16
    out = grid.save_grid(x, 17, tmp_path / "g.png", columns=3)
    image = np.asarray(Image.open(out))
    scale = grid.auto_scale(2)
    assert image.shape == ((2 * 3 + 1) * scale, (3 * 4 + 1) * scale)
    # Sample 4 sits at row 1, column 1 and is the top level: white.
    top, left = (1 + 1 * 3) * scale, (1 + 1 * 4) * scale
    assert (image[top:top + 2 * scale, left:left + 3 * scale] == 255).all()
    assert image[scale, scale] == 0
    assert grid.to_uint8(np.array([8]), 17)[0] == 128  # the absorbing grey stays mid grey
    with pytest.raises(ValueError, match="0..16"):
        grid.to_uint8(np.array([17]), 17)


def test_progressive_picks_times_and_rows(tmp_path):
    t_max = 20
    trajectory = [(t, torch.full((3, 3, 2, 2), t)) for t in range(t_max, -1, -1)]
    idx = progressive.pick_times([t for t, _ in trajectory])
    assert [trajectory[i][0] for i in idx] == [20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0]
    out = progressive.save_progressive(trajectory, 256, tmp_path / "p.png")
    image = np.asarray(Image.open(out))
    s = grid.auto_scale(2)
    assert image.shape == ((1 + 3 * 3) * s, (1 + 11 * 3) * s, 3)
    # Column c of every row holds t = 20 - 2c.
    assert image[s, (1 + 3 * 5) * s, 0] == 10


def test_corruption_endpoints():
    x_0 = torch.randint(0, 17, (2, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    times, frames = corruption.corruption_rows(
        x_0, corruption.build_process("absorbing", 17, 20), num_columns=5)
    assert times == [0, 5, 10, 15, 20]
    assert np.array_equal(frames[:, 0], x_0.numpy())
    assert (frames[:, -1] == 8).all()  # absorbing reaches the grey mask exactly at T
    with pytest.raises(ValueError, match="unknown process"):
        corruption.build_process("blur", 17, 20)


def test_cli_corruption_and_bad_data(tmp_path, capsys):
    out = tmp_path / "c.png"
    assert main(["figures", "corruption", "--data", "digits", "--out", str(out),
                 "--steps", "20", "--num", "2"]) == 0
    assert Image.open(out).size[0] > 11 * 8
    assert main(["figures", "corruption", "--data", str(tmp_path / "none"),
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("d3pm: error:") and "none" in err and "\n" not in err
