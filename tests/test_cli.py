"""`d3pm train / eval / sample` in process: the contract scripts rely on, and one-line errors."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch
import yaml

from discrete_diffusion.cli.main import main

torch.set_num_threads(1)

CONFIG = {
    "data": {"kind": "synthetic", "vocab_size": 4, "seq_len": 6, "num_train": 64, "num_eval": 24},
    "model": {"kind": "mlp", "hidden": 32, "layers": 1, "embed_dim": 8},
    "method": {"kind": "diffusion", "transition": "uniform", "schedule": "cosine",
               "num_steps": 10},
    "train": {"steps": 4, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "log_every": 2,
              "eval_every": 0, "ckpt_every": 2, "ema_decay": 0.9, "device": "cpu"},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained run folder (4 steps) and its config path."""
    root = tmp_path_factory.mktemp("cli")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    code = main(["train", "--config", str(config), "--out", str(root / "run"), "--no-progress",
                 "train.lr=2e-3"])
    assert code == 0
    return root / "run", config


def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("d3pm: error: ") and err.count("\n") == 1
    return err


def test_train_writes_the_run_folder(run):
    run_dir, _ = run
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["train"]["lr"] == 2e-3  # the override is part of the resolved config
    assert (run_dir / "checkpoints/step_000004.json").is_file()
    assert json.loads((run_dir / "data/codec.json").read_text())["kind"] == "synthetic"


def test_eval_json_fields(run, tmp_path, capsys):
    run_dir, _ = run
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run_dir), "--split", "test", "--steps", "10", "5",
                 "--max-examples", "20", "--batch-size", "8", "--json", str(out),
                 "--time-samples", "2", "--seed", "1"]) == 0
    record = json.loads(out.read_text())
    assert record["ema"] is True and record["step"] == 4 and record["split"] == "test"
    assert [r["steps"] for r in record["results"]] == [10, 5]
    for r in record["results"]:
        assert r["num_sequences"] == 20
        assert r["bits_per_token"] > 0 and r["stderr"] > 0
        assert r["perplexity"] == pytest.approx(2 ** r["bits_per_token"])
        assert r["sample_seconds_per_example"]["mean"] > 0
    assert "bits/token" in capsys.readouterr().out
    # the same seed gives the same numbers; a step file is accepted as checkpoint
    again = tmp_path / "again.json"
    assert main(["eval", "--checkpoint", str(run_dir / "checkpoints/step_000004.safetensors"),
                 "--steps", "10", "5", "--max-examples", "20", "--batch-size", "8",
                 "--seed", "1", "--json", str(again)]) == 0
    second = json.loads(again.read_text())["results"]
    assert [r["bits_per_token"] for r in second] == [r["bits_per_token"]
                                                     for r in record["results"]]


def test_sample_prints_infills_and_reconstructs(run, capsys):
    run_dir, _ = run
    assert main(["sample", "--checkpoint", str(run_dir), "--num", "3", "--steps", "5"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 3 and all(len(r.split()) == 6 for r in rows)
    assert main(["sample", "--checkpoint", str(run_dir), "--num", "2",
                 "--infill", "3 _ 1 _"]) == 0
    for row in capsys.readouterr().out.strip().splitlines():
        ids = row.split()
        assert len(ids) == 6 and ids[0] == "3" and ids[2] == "1"
    assert main(["sample", "--checkpoint", str(run_dir), "--num", "1", "--progressive"]) == 0
    blocks = [line for line in capsys.readouterr().out.splitlines() if line.startswith("t = ")]
    assert blocks[0] == "t = 10" and blocks[-1] == "t = 0" and len(blocks) == 11
    assert main(["sample", "--checkpoint", str(run_dir), "--num", "2",
                 "--corrupt", "0 1 2 3 0 1", "--noise-level", "0"]) == 0
    out = capsys.readouterr().out
    assert "original:\n0 1 2 3 0 1" in out and "corrupted (t = 0 of 10):" in out
    assert out.split("reconstructed:\n")[1].split() == "0 1 2 3 0 1 0 1 2 3 0 1".split()


def test_resume_through_the_cli(run, tmp_path):
    run_dir, config = run
    fork = tmp_path / "fork"
    import shutil

    shutil.copytree(run_dir, fork)
    assert main(["train", "--out", str(fork), "--resume", "--steps", "6", "--no-progress"]) == 0
    assert (fork / "checkpoints/step_000006.json").is_file()


def test_user_errors_are_one_line(run, tmp_path, capsys):
    run_dir, config = run
    err = error_of(capsys, ["train", "--config", str(config), "--out", str(run_dir),
                            "--no-progress"])
    assert "already holds checkpoints" in err
    err = error_of(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "x"),
                            "model.depth=3"])
    assert "unknown key 'depth' in section 'model'" in err
    err = error_of(capsys, ["eval", "--checkpoint", str(tmp_path / "missing")])
    assert "checkpoint not found" in err
    err = error_of(capsys, ["sample", "--checkpoint", str(run_dir), "--infill", "3 9 _"])
    assert "'9' is not an id" in err
    err = error_of(capsys, ["eval", "--checkpoint", str(run_dir), "--steps", "11"])
    assert "--steps 11" in err and "1..T = 10" in err
    err = error_of(capsys, ["sample", "--checkpoint", str(run_dir), "--corrupt", "1 2"])
    assert "--corrupt and --noise-level go together" in err
    err = error_of(capsys, ["eval", "--checkpoint", str(run_dir), "--split", "dev"])
    assert "unknown split 'dev'" in err


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, monkeypatch, capsys):
    from discrete_diffusion.training.trainer import Trainer

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    real_step = Trainer.train_step

    def interrupted(self):
        if self.step == 2:  # Ctrl-C during step 3: the step completes, then the run saves
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupted)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r"),
                 "--no-progress", "train.ckpt_every=0"]) == 130
    assert "interrupted: checkpoint saved at step 3" in capsys.readouterr().err
    assert json.loads((tmp_path / "r/checkpoints/latest.json").read_text())["step"] == 3


def test_sample_saves_an_npy_array(run, tmp_path, capsys):
    import numpy as np

    run_dir, _ = run
    out = tmp_path / "s" / "samples.npy"
    assert main(["sample", "--checkpoint", str(run_dir), "--num", "3", "--steps", "5",
                 "--save-npy", str(out)]) == 0
    arr = np.load(out)
    assert arr.shape == (3, 6) and arr.min() >= 0 and arr.max() < 4  # data ids, never the mask
    assert not list(out.parent.glob("*.tmp.npy"))
    assert error_of(capsys, ["sample", "--checkpoint", str(run_dir), "--save-npy",
                             str(tmp_path / "x.txt")]).count(".npy") == 1


# ----- file system errors: one line naming the path, before the work --------------------------
def blocked(tmp_path, *parts: str):
    """A path below a regular file: unwritable for every user, root included (chmod is not)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    return str(blocker.joinpath(*parts))


def forbid(monkeypatch, target: str, name: str) -> None:
    """Make `target.name` fail the test if called: the check must come before that work."""
    import importlib

    module = importlib.import_module(target)

    def too_late(*args, **kwargs):
        raise AssertionError(f"{name} ran before the output location was checked")

    monkeypatch.setattr(module, name, too_late)


def test_unwritable_train_out_fails_before_training(run, tmp_path, capsys, monkeypatch):
    _, config = run
    forbid(monkeypatch, "discrete_diffusion.cli.train", "build_data")
    out = blocked(tmp_path, "run")
    err = error_of(capsys, ["train", "--config", str(config), "--out", out, "--no-progress"])
    assert f"cannot write {out}" in err and "is not a folder" in err


def test_unwritable_cache_is_one_line(tmp_path, capsys):
    cache = blocked(tmp_path, "cache")
    src = tmp_path / "in.txt"
    src.write_text("some english text " * 10)
    err = error_of(capsys, ["--cache", cache, "data", "text8", "--input", str(src),
                            "--output", str(tmp_path / "out.txt")])
    assert f"cannot write {cache}" in err


def test_unwritable_eval_json_fails_before_the_evaluation(run, tmp_path, capsys, monkeypatch):
    run_dir, _ = run
    forbid(monkeypatch, "discrete_diffusion.evaluation.bound", "evaluate_bound")
    out = blocked(tmp_path, "sub", "eval.json")
    err = error_of(capsys, ["eval", "--checkpoint", str(run_dir), "--json", out])
    assert f"cannot write {out}" in err
    err = error_of(capsys, ["eval", "--checkpoint", str(run_dir), "--json", str(tmp_path)])
    assert "it is a folder" in err


def test_eval_json_and_sample_out_create_missing_folders(run, tmp_path):
    run_dir, _ = run
    out = tmp_path / "new" / "deeper" / "eval.json"
    assert main(["eval", "--checkpoint", str(run_dir), "--max-examples", "2", "--steps", "2",
                 "--json", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["results"][0]["steps"] == 2
    text = tmp_path / "new2" / "samples.txt"
    assert main(["sample", "--checkpoint", str(run_dir), "--num", "2", "--steps", "2",
                 "--out", str(text)]) == 0
    assert len(text.read_text().splitlines()) == 2


def test_unwritable_sample_outputs_fail_before_sampling(run, tmp_path, capsys, monkeypatch):
    run_dir, _ = run
    forbid(monkeypatch, "discrete_diffusion.training.builders", "load_trained")
    for flag, name in (("--out", "s.txt"), ("--save-npy", "s.npy")):
        out = blocked(tmp_path, "sub", name)
        err = error_of(capsys, ["sample", "--checkpoint", str(run_dir), flag, out])
        assert f"cannot write {out}" in err


def test_unwritable_data_outputs(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("some english text " * 10)
    out = blocked(tmp_path, "out.txt")
    err = error_of(capsys, ["data", "text8", "--input", str(src), "--output", out])
    assert f"cannot write {out}" in err
    folder = blocked(tmp_path, "dl")
    err = error_of(capsys, ["data", "download-text8", "--dir", folder])
    assert f"cannot write {folder}" in err


def test_unwritable_figure_outputs(tmp_path, capsys, monkeypatch):
    forbid(monkeypatch, "discrete_diffusion.cli.figures", "_load_images")
    out = blocked(tmp_path, "c.png")
    err = error_of(capsys, ["figures", "corruption", "--data", "digits", "--out", out])
    assert f"cannot write {out}" in err
    out = blocked(tmp_path, "fid.json")
    err = error_of(capsys, ["figures", "fid", "--samples", "x.npy", "--reference", "digits",
                            "--out", out])
    assert f"cannot write {out}" in err


def test_unwritable_demo_out_fails_before_training(tmp_path, capsys, monkeypatch):
    forbid(monkeypatch, "discrete_diffusion.cli.demo", "run_process")
    out = blocked(tmp_path, "roll")
    err = error_of(capsys, ["demo", "swissroll", "--out", out])
    assert f"cannot write {out}" in err


def test_os_errors_during_the_work_name_the_path(tmp_path, capsys, monkeypatch):
    """An OSError with a path (disk full, permission, read-only mount) is one line; one
    without a path is a fault of the program and keeps its traceback."""
    import errno

    from discrete_diffusion.cli import data

    src = tmp_path / "in.txt"
    src.write_text("some english text " * 10)
    argv = ["data", "text8", "--input", str(src), "--output", str(tmp_path / "o.txt")]

    def fail(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/ro/o.txt")

    monkeypatch.setattr("discrete_diffusion.data.text_convert.convert_file", fail)
    assert error_of(capsys, argv) == "d3pm: error: /mnt/ro/o.txt: Read-only file system\n"

    def bug(*args, **kwargs):
        raise OSError("no path here")

    monkeypatch.setattr(data, "_text8", bug)
    monkeypatch.setattr("discrete_diffusion.data.text_convert.convert_file", bug)
    with pytest.raises(OSError, match="no path here"):
        main(argv)


# ----- bad input ----------------------------------------------------------------------------
def test_binary_input_to_data_text8_is_refused(tmp_path, capsys):
    import numpy as np

    out = tmp_path / "out.txt"
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, np.uint8).tobytes())
    err = error_of(capsys, ["data", "text8", "--input", str(garbage), "--output", str(out)])
    assert "not text" in err and "not valid UTF-8" in err and not out.exists()
    utf16 = tmp_path / "utf16.txt"
    utf16.write_text("plain english words " * 50, encoding="utf-16")
    assert "NUL bytes" in error_of(capsys, ["data", "text8", "--input", str(utf16),
                                            "--output", str(out)])
    numbers = tmp_path / "numbers.csv"
    numbers.write_text("1.25,3.5,-7,42\n" * 100)
    assert "letters" in error_of(capsys, ["data", "text8", "--input", str(numbers),
                                          "--output", str(out)])
    assert not out.exists()


def test_bad_choices_list_the_allowed_values(run, tmp_path, capsys):
    _, config = run
    err = error_of(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "r"),
                            "method.transition=nosuch"])
    assert "nosuch" in err and "absorbing" in err and "uniform" in err and "Literal" not in err
    err = error_of(capsys, ["train", "--config", str(config), "--out", str(tmp_path / "r"),
                            "train.precision=fp8"])
    assert "fp8" in err and "fp32" in err and "bf16" in err and "Literal" not in err
