"""Non-finite values: refused hyper-parameters, updates that are undone, a run that stops
after too many, checkpoints with inf/NaN refused, strict-JSON metrics, and skip warnings."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from discrete_diffusion.cli.main import main
from discrete_diffusion.training.builders import build_data
from discrete_diffusion.training.checkpoint import list_checkpoints, load_checkpoint
from discrete_diffusion.training.config import config_from_dict
from discrete_diffusion.training.nonfinite import FiniteUpdate, all_finite, skip_warning
from discrete_diffusion.training.trainer import Trainer

torch.set_num_threads(1)

CONFIG = {
    "data": {"kind": "synthetic", "vocab_size": 4, "seq_len": 6, "num_train": 64, "num_eval": 24},
    "model": {"kind": "mlp", "hidden": 16, "layers": 1, "embed_dim": 8},
    "method": {"kind": "diffusion", "transition": "uniform", "schedule": "cosine",
               "num_steps": 10},
    "train": {"steps": 4, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "log_every": 2,
              "eval_every": 0, "ckpt_every": 2, "ema_decay": 0.9, "device": "cpu"},
}


def write_config(tmp_path) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return str(path)


def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("d3pm: error: ") and err.count("\n") == 1, err
    return err


def strict_lines(path) -> list[dict]:
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def trainer_of(tmp_path, name="run", **train) -> Trainer:
    raw = {**CONFIG, "train": {**CONFIG["train"], **train}}
    config = config_from_dict(raw)
    return Trainer(config, build_data(config, None), tmp_path / name, progress=False)


def poison(trainer: Trainer, bad_steps: set[int]) -> None:
    """Make the loss NaN (so the gradient is) on the updates numbered in `bad_steps`."""
    real = trainer.method.losses

    def losses(model, x_0, generator=None):
        out = real(model, x_0, generator)
        return {**out, "loss": out["loss"] * float("nan")} if trainer.step in bad_steps else out

    trainer.method.losses = losses


@pytest.mark.parametrize("value", [".inf", "1e999", "nan", "-.inf", ".nan"])
def test_non_finite_learning_rates_are_one_line_errors(tmp_path, capsys, value):
    err = error_of(capsys, ["train", "--config", write_config(tmp_path), "--out",
                            str(tmp_path / "r"), "--no-progress", f"train.lr={value}"])
    assert "train.lr" in err and "finite" in err
    assert not (tmp_path / "r").exists()


def test_a_step_to_non_finite_weights_is_undone_with_the_optimizer_state():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    update = FiniteUpdate(opt)
    for lr, expected in [(float("inf"), False), (1e-2, True), (float("inf"), False)]:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        state = {(i, k): v.clone() for i, s in enumerate(opt.state.values())
                 for k, v in s.items()}
        for group in opt.param_groups:
            group["lr"] = lr
        model(torch.randn(4, 3)).square().sum().backward()
        assert update.step() is expected
        opt.zero_grad()
        if not expected:  # everything as before the step, bit for bit
            assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
            after = {(i, k): v for i, s in enumerate(opt.state.values()) for k, v in s.items()}
            assert after.keys() == state.keys()
            assert all(torch.equal(state[k], v) for k, v in after.items())
        assert all_finite(model.parameters())
    assert not all_finite([torch.tensor([1.0, float("nan")])])
    assert all_finite([torch.tensor([3e38, -3e38]), torch.tensor([1, 2])])  # huge is finite


def test_an_infinite_rate_skips_every_update_and_keeps_the_weights(tmp_path):
    trainer = trainer_of(tmp_path, steps=3, max_consecutive_skips=0)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.tc.lr = float("inf")  # past the config check, as a diverging run would be
    assert trainer.fit()["skipped"] == 3
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.state["skipped"] == 3
    assert all(bool(torch.isfinite(v).all()) for v in [*ckpt.weights.values(),
                                                         *ckpt.ema.values()])


def test_a_huge_rate_stops_after_n_skips_and_writes_no_non_finite_checkpoint(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--config", write_config(tmp_path), "--out", str(out),
                 "--no-progress", "train.lr=1e30", "train.steps=50",
                 "train.max_consecutive_skips=3"]) == 2
    *warnings, err = capsys.readouterr().err.splitlines()  # skip warnings come first
    assert all(w.startswith("warning: ") for w in warnings)
    assert err.startswith("d3pm: error: training stopped at update ")
    assert "the last 3 updates were all non-finite" in err and "train.lr" in err
    found = list_checkpoints(out / "checkpoints")
    assert all(step < 50 for step, _ in found)
    for _, path in found:
        ckpt = load_checkpoint(path)
        assert all(bool(torch.isfinite(v).all()) for v in [*ckpt.weights.values(),
                                                             *ckpt.ema.values()])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("nonfinite")
    assert main(["train", "--config", write_config(root), "--out", str(root / "run"),
                 "--no-progress"]) == 0
    return root / "run"


@pytest.mark.parametrize("which", ["", ".ema"])
def test_eval_and_sample_refuse_a_checkpoint_with_a_nan(run, tmp_path, capsys, which):
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    path = bad / f"checkpoints/step_000004{which}.safetensors"
    weights = load_file(str(path))
    name = sorted(weights)[0]
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(path))
    for command in (["eval", "--max-examples", "4"], ["sample", "--num", "1"]):
        err = error_of(capsys, [command[0], "--checkpoint", str(bad), *command[1:]])
        assert "step_000004.json" in err and "non-finite" in err and repr(name) in err
    assert main(["sample", "--checkpoint", str(run), "--num", "1"]) == 0  # the good one loads


def test_metrics_stay_strict_json_and_skips_are_reported(tmp_path, capsys):
    trainer = trainer_of(tmp_path, steps=6, log_every=3, ckpt_every=0)
    poison(trainer, {0, 1})
    summary = trainer.fit()
    assert summary["skipped"] == 2
    lines = strict_lines(tmp_path / "run/metrics.jsonl")  # NaN would raise here
    assert lines[0]["train/loss"] is None and lines[0]["train/skipped"] == 2
    assert math.isfinite(lines[1]["train/loss"]) and lines[1]["train/skipped"] == 2
    err = capsys.readouterr().err
    assert "warning: 2 of 3 updates skipped as non-finite since step 0" in err
    assert err.count("warning:") == 1  # the second interval skipped nothing
    # eval reports the count, in its text and its JSON, with a warning
    record = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--max-examples", "4",
                 "--json", str(record)]) == 0
    out, err = capsys.readouterr()
    assert "step 6, 2 skipped updates" in out and "2 of the 6 training updates" in err
    assert json.loads(record.read_text())["skipped_updates"] == 2


def test_eval_of_a_clean_run_reports_zero_skips(run, tmp_path, capsys):
    record = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run), "--max-examples", "4", "--json",
                 str(record)]) == 0
    out, err = capsys.readouterr()
    assert "0 skipped updates" in out and "warning" not in err
    assert json.loads(record.read_text())["skipped_updates"] == 0


def test_skip_warning_threshold():
    assert skip_warning(100, 1, 0, 1, 100) is None  # 1% is not more than 1%
    assert skip_warning(100, 2, 200, 5, 300) == (
        "warning: 2 of 100 updates skipped as non-finite since step 200 (5 of 300 in all)")
    assert skip_warning(0, 0, 5, 0, 5) is None
