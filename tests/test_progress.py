"""Progress in logs: plain lines at a low rate, no carriage returns; --no-progress is silent."""

from __future__ import annotations

import io
import sys

import pytest
import yaml

from discrete_diffusion import progress
from discrete_diffusion.cli.main import main
from discrete_diffusion.progress import PlainProgress, progress_bar

CONFIG = {
    "data": {"kind": "synthetic", "vocab_size": 4, "seq_len": 6, "num_train": 64, "num_eval": 24},
    "model": {"kind": "mlp", "hidden": 16, "layers": 1, "embed_dim": 8},
    "method": {"kind": "diffusion", "transition": "uniform", "schedule": "cosine",
               "num_steps": 10},
    "train": {"steps": 60, "batch_size": 4, "log_every": 1, "eval_every": 0, "ckpt_every": 0,
              "eval_examples": 8, "device": "cpu"},
}


@pytest.fixture(autouse=True)
def _reset():
    yield
    progress.configure(enabled=True)


def train_with_stderr_in_a_file(tmp_path, monkeypatch, *flags: str) -> str:
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        monkeypatch.setattr(sys, "stderr", f)
        code = main(["train", "--config", str(config), "--out", str(tmp_path / "run"), *flags])
        monkeypatch.undo()
    assert code == 0
    return log.read_text()


def test_a_log_gets_few_plain_lines(tmp_path, monkeypatch):
    """Even with a refresh allowed at every update ($TQDM_MININTERVAL=0), a log gets a line per
    tenth of the run (60 steps: ~11 lines, not 60 `\\r` updates)."""
    monkeypatch.setenv("TQDM_MININTERVAL", "0")
    text = train_with_stderr_in_a_file(tmp_path, monkeypatch)
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.startswith("train: ")]
    assert 5 <= len(lines) <= 12, text
    assert lines[-1].startswith("train: 60/60 step (100%)")
    assert len(text.splitlines()) <= 16


def test_no_progress_is_silent(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_MININTERVAL", "0")
    text = train_with_stderr_in_a_file(tmp_path, monkeypatch, "--no-progress")
    assert "train: " not in text and "\r" not in text


def test_plain_lines_need_both_the_interval_and_a_tenth():
    out = io.StringIO()
    bar = PlainProgress(1000, desc="x", unit="it", file=out, interval=3600.0)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    assert out.getvalue() == ""  # a job shorter than the interval prints nothing
    bar = PlainProgress(1000, desc="x", unit="it", file=out, interval=0.0)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    assert len(out.getvalue().splitlines()) == 10  # every tenth, the last one at 100%


def test_a_terminal_gets_tqdm_and_a_log_does_not():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    from tqdm import tqdm

    assert isinstance(progress_bar(10, file=Terminal()), tqdm)
    assert isinstance(progress_bar(10, file=io.StringIO()), PlainProgress)
    progress.configure(enabled=False)
    bar = progress_bar(10, file=Terminal())
    assert isinstance(bar, tqdm) and bar.disable


def test_no_progress_does_not_outlive_its_command(tmp_path):
    from discrete_diffusion import progress
    from discrete_diffusion.cli.main import main

    main(["data", "text8", "--input", str(tmp_path / "missing.txt"), "--output",
          str(tmp_path / "out.txt"), "--no-progress"])
    assert progress.enabled()
