"""`d3pm demo swissroll` end to end: a short training run writes a valid figure of the promised
size and the bound drops for every process; bad options are one-line errors."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from discrete_diffusion.cli.demo import demo_processes
from discrete_diffusion.cli.main import main
from discrete_diffusion.figures.swissroll import figure_size

BOUND = re.compile(r"^(.+): bound (before|after) training (\d+\.\d+) ± (\d+\.\d+) bits/point$")


def _bounds(stdout: str) -> dict[tuple[str, str], tuple[float, float]]:
    found = {}
    for line in stdout.splitlines():
        match = BOUND.match(line)
        if match:
            found[match[1], match[2]] = (float(match[3]), float(match[4]))
    return found


def test_demo_writes_the_figure_and_training_lowers_every_bound(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "swissroll", "--out", str(out), "--train-steps", "100",
                 "--points", "300", "--seed", "0"])
    assert code == 0
    stdout = capsys.readouterr().out
    bounds = _bounds(stdout)
    names = [p.name for p in demo_processes()]
    assert sorted(bounds) == sorted((n, w) for n in names for w in ("before", "after"))
    for name in names:
        before, after = bounds[name, "before"], bounds[name, "after"]
        # 100 steps take every bound down by more than a bit; demand a clear margin of
        # standard errors so that the drop is not noise.
        assert after[0] + 3 * (before[1] + after[1]) < before[0], (name, before, after)
        assert 0 < after[1] < 1 and 0 < before[1] < 1
    with Image.open(out / "swissroll.png") as image:
        image.verify()
    with Image.open(out / "swissroll.png") as image:
        assert image.format == "PNG"
        assert image.size == figure_size(3, 3, 5)
    saved = json.loads((out / "bounds.json").read_text())
    assert saved[names[0]]["before"][0] == pytest.approx(bounds[names[0], "before"][0], abs=1e-3)
    assert saved["absorbing"]["num_classes"] == 33  # the mask is an extra state


@pytest.mark.parametrize("args, message", [
    (["--train-steps", "-1"], "--train-steps"),
    (["--points", "1"], "--points"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, args, message):
    code = main(["demo", "swissroll", "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("d3pm: error:") and message in err and err.count("\n") == 1


def test_existing_figure_is_not_overwritten(tmp_path, capsys):
    (tmp_path / "swissroll.png").write_bytes(b"earlier work")
    code = main(["demo", "swissroll", "--out", str(tmp_path), "--train-steps", "0"])
    assert code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "swissroll.png").read_bytes() == b"earlier work"
