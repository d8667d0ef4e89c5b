"""Method kind "continuous": losses, both bounds, sampling, a tiny trainer run with per-quartile
diagnostics, `d3pm eval --steps continuous` and `d3pm sample`, and the text8 presets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from discrete_diffusion.cli.main import main
from discrete_diffusion.data.base import DataInfo
from discrete_diffusion.methods.continuous import Config, ContinuousMethod
from discrete_diffusion.networks.mlp import MLPDenoiser
from discrete_diffusion.training.config import load_config

torch.set_num_threads(1)
CONFIGS = Path(__file__).resolve().parent.parent / "configs"

CONFIG = {
    "data": {"kind": "synthetic", "vocab_size": 4, "seq_len": 6, "num_train": 64, "num_eval": 24},
    "model": {"kind": "mlp", "hidden": 32, "layers": 1, "embed_dim": 8},
    "method": {"kind": "continuous", "transition": "absorbing", "schedule": "loglinear",
               "eps": 0.01, "num_steps": 10},
    "train": {"steps": 4, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1, "log_every": 2,
              "eval_every": 4, "eval_examples": 8, "ckpt_every": 4, "device": "cpu"},
}


def method_and_model(transition: str, **options) -> tuple[ContinuousMethod, MLPDenoiser]:
    info = DataInfo(num_classes=4, example_shape=(6,), mask_index=None, unit="token")
    method = ContinuousMethod(Config(transition=transition, num_steps=10, **options), info)
    torch.manual_seed(0)
    model = MLPDenoiser((6,), method.num_classes, hidden=32, layers=1, embed_dim=8)
    return method, model


@pytest.mark.parametrize("transition,schedule", [("absorbing", "linear"),
                                                 ("absorbing", "loglinear"),
                                                 ("uniform", "cosine"), ("uniform", "loglinear")])
def test_losses_bounds_and_samples(transition, schedule):
    method, model = method_and_model(transition, schedule=schedule, eval_samples=3)
    gen = torch.Generator().manual_seed(0)
    x_0 = torch.randint(0, 4, (8, 6), generator=gen)
    out = method.losses(model, x_0, generator=gen)
    assert set(out) == {"loss", "bound", "ce", "t"}
    assert out["t"].dtype == torch.long and 1 <= int(out["t"].min()) <= int(out["t"].max()) <= 10
    out["loss"].mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    cont = method.nll(model, x_0, steps="continuous", generator=gen)
    assert cont.shape == (8,) and bool(torch.isfinite(cont).all()) and bool((cont >= 0).all())
    for steps in (1, 3, 10):
        discrete = method.nll(model, x_0, steps=steps, generator=gen)
        assert discrete.shape == (8,) and bool(torch.isfinite(discrete).all())
    # the S-step bound is D3PM's on the discretised process, network at ceil(i T / S)
    assert method.network_times(4).tolist()[:5] == [0, 3, 5, 8, 10]
    x, path = method.sample(model, 3, steps=5, generator=gen, trajectory=True)
    assert x.shape == (3, 6) and int(x.max()) < 4  # an added mask never survives
    assert path[0][0] == 10 and path[-1][0] == 0
    with pytest.raises(ValueError, match="continuous"):
        method.nll(model, x_0, steps="fast")


def test_continuous_bound_averages_fresh_times():
    method, model = method_and_model("absorbing", eval_samples=1)
    x_0 = torch.randint(0, 4, (4, 6), generator=torch.Generator().manual_seed(1))
    draws = [method.nll(model, x_0, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    method.cfg.eval_samples = 2
    mean = method.nll(model, x_0, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(draws[0], draws[1])
    assert bool(torch.isfinite(mean).all())


def test_data_valued_mask_is_refused():
    info = DataInfo(num_classes=256, example_shape=(1, 2, 2), mask_index=128, unit="dim")
    with pytest.raises(ValueError, match="mask token outside the data"):
        ContinuousMethod(Config(), info)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    assert main(["train", "--config", str(config), "--out", str(root / "run"),
                 "--no-progress"]) == 0
    return root


def test_trainer_logs_quartiles_and_the_continuous_bound(run):
    lines = [json.loads(s) for s in (run / "run/metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if "train/loss" in r]
    assert [r["step"] for r in train_lines] == [2, 4]
    keys = {k for r in train_lines for k in r if k.startswith("train/bits_per_unit_q")}
    assert keys and all(math.isfinite(r[k]) for r in train_lines for k in keys if k in r)
    (evaluation,) = [r for r in lines if "eval/bits_per_unit" in r]
    assert evaluation["eval/bits_per_unit"] > 0


def test_eval_continuous_and_discrete_then_sample(run, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run / "run"), "--steps", "continuous", "5",
                 "--max-examples", "16", "--batch-size", "8", "--json", str(out),
                 "--time-samples", "1"]) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["steps"] for r in results] == ["continuous", 5]
    assert all(r["bits_per_token"] > 0 and r["stderr"] > 0 for r in results)
    assert "continuous" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(run / "run"), "--num", "2", "--steps", "4"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert len(rows) == 2


def test_continuous_steps_of_a_d3pm_run_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "d3pm.yaml"
    raw = {**CONFIG, "method": {"kind": "diffusion", "transition": "uniform", "num_steps": 10},
           "train": {**CONFIG["train"], "steps": 1, "eval_every": 0, "ckpt_every": 1}}
    config.write_text(yaml.safe_dump(raw))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--steps", "continuous"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "continuous" in err and "'diffusion'" in err


@pytest.mark.parametrize("name,transition,schedule", [
    ("text8-absorbing-ct-cpu-small", "absorbing", "linear"),
    ("text8-uniform-ct-cpu-small", "uniform", "loglinear"),
    ("text8-absorbing-ct", "absorbing", "linear"),
    ("text8-uniform-ct", "uniform", "loglinear")])
def test_presets_load(name, transition, schedule):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.method_kind == "continuous"
    assert config.method.transition.kind == transition and config.method.schedule == schedule
    small = "cpu-small" in name
    reference = load_config(CONFIGS / ("text8-absorbing-cpu-small.yaml" if small
                                       else "text8-absorbing.yaml"))
    assert config.model == reference.model and config.train == reference.train
    assert reference.method_kind == "diffusion"  # the D3PM presets are unchanged
