"""Optional dependencies: the mathematics imports and runs without any extra, and a missing
extra is one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from discrete_diffusion.cli.main import main
from discrete_diffusion.extras import MissingExtra, explain, require

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("tqdm", "yaml", "safetensors", "tensorboard", "sklearn", "matplotlib",
            "sentencepiece", "PIL", "gensim", "datasets")

# A meta-path finder that makes every optional package look uninstalled.
BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    BLOCKED = {OPTIONAL!r}
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    sys.meta_path.insert(0, Blocker())
""")


def run_blocked(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_the_mathematics_runs_without_any_optional_package_and_the_cli_says_so():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("```python") + len("```python")
    example = readme[start:readme.index("```", start)]
    result = run_blocked(example + textwrap.dedent("""
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("maths ok")
        from discrete_diffusion.cli.main import main  # needs the train extra: one line
        sys.exit(main(["eval", "--checkpoint", "nowhere"]))
    """))
    assert "maths ok" in result.stdout, result.stderr
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("d3pm: error: d3pm needs ")
    assert 'pip install "discrete-diffusion[train]"' in result.stderr
    assert result.stderr.count("\n") == 1


def test_require_names_the_package_and_the_extra(monkeypatch):
    assert require("numpy", "images") is np
    monkeypatch.setitem(sys.modules, "sklearn", None)  # an import of it fails
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(MissingExtra) as info:
        require("sklearn.datasets", "images", "the digits data")
    assert str(info.value) == ('the digits data needs scikit-learn: '
                               'pip install "discrete-diffusion[images]"')
    assert isinstance(info.value, ModuleNotFoundError) and info.value.name == "sklearn"
    plain = ModuleNotFoundError("No module named 'yaml'", name="yaml")
    assert "pyyaml" in str(explain(plain)) and "[train]" in str(explain(plain))
    assert explain(ModuleNotFoundError("x", name="not_optional")) is None


def test_a_missing_extra_through_the_cli_is_one_line(tmp_path, monkeypatch, capsys):
    for name in ("sklearn", "sklearn.datasets"):
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["train", "--config", str(ROOT / "configs/digits-uniform-cpu-small.yaml"), "--data",
                 "digits", "--out", str(tmp_path / "r"), "--steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == ('d3pm: error: the digits data needs scikit-learn: '
                   'pip install "discrete-diffusion[images]"\n')


def test_png_writing_without_pillow_names_the_images_extra(tmp_path, monkeypatch):
    from discrete_diffusion.figures.grid import save_png

    for name in ("PIL", "PIL.Image"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtra, match=r"pillow: pip install \"discrete-diffusion\[images\]"):
        save_png(np.zeros((1, 2, 2), np.uint8), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
