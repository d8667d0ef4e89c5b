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
