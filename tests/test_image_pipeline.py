"""End to end on digits through the CLI: train -> eval -> sample (grid and progressive strip),
FID with a stand-in network, and one-line errors for a mismatched checkpoint or data."""

import json

import numpy as np
import torch
from PIL import Image

from discrete_diffusion.cli.main import main

TINY = ["model.ch=8", "model.num_groups=4", "method.num_steps=6", "train.batch_size=16",
        "train.eval_every=0", "train.ckpt_every=0", "train.log_every=1", "train.ema_decay=0.5"]


class _Features(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


def _train(tmp_path, preset="digits-gauss-logistic-cpu-small"):
    run = tmp_path / "run"
    code = main(["train", "--config", f"configs/{preset}.yaml", "--data", "digits",
                 "--out", str(run), "--steps", "3", "--no-progress", *TINY])
    assert code == 0
    return run


def test_train_eval_sample_on_digits(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISCRETE_DIFFUSION_CACHE", str(tmp_path / "cache"))
    run = _train(tmp_path)
    assert json.loads((run / "data" / "codec.json").read_text())["kind"] == "image"
    result = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(run), "--data", "digits", "--max-examples", "8",
                 "--batch-size", "8", "--json", str(result)]) == 0
    record = json.loads(result.read_text())
    (entry,) = record["results"]
    assert record["unit"] == "dim" and entry["num_images"] == 8
    # An untrained model is no better than uniform over 17 levels (log2 17 = 4.09 bits/dim)
    # by much, and the bound is a finite positive number of bits.
    assert 1.0 < entry["bits_per_dim"] < 12.0
    grid = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(run), "--num", "4", "--out", str(grid)]) == 0
    assert Image.open(grid).mode == "L"
    strip = tmp_path / "strip.png"
    assert main(["sample", "--checkpoint", str(run), "--num", "2", "--out", str(strip),
                 "--progressive"]) == 0
    width, height = Image.open(strip).size
    assert width > height  # columns t = T .. 0, rows the samples


def test_fid_command_with_a_given_network(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISCRETE_DIFFUSION_CACHE", str(tmp_path / "cache"))
    torch.jit.script(_Features()).save(str(tmp_path / "net.pt"))
    from discrete_diffusion.data import digits

    test = digits.load_digit_splits()["test"]
    np.save(tmp_path / "same.npy", test)
    assert main(["figures", "fid", "--samples", str(tmp_path / "same.npy"), "--reference",
                 "digits", "--network", str(tmp_path / "net.pt")]) == 0
    value = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fid"]
    assert abs(value) < 1e-6
    np.save(tmp_path / "wrong.npy", np.zeros((4, 3, 8, 8), np.uint8))
    assert main(["figures", "fid", "--samples", str(tmp_path / "wrong.npy"), "--reference",
                 "digits", "--network", str(tmp_path / "net.pt")]) == 2
    assert "differ in shape" in capsys.readouterr().err


def test_data_not_matching_the_run_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISCRETE_DIFFUSION_CACHE", str(tmp_path / "cache"))
    run = _train(tmp_path)
    folder = tmp_path / "colour"
    for split in ("train", "test"):
        (folder / split / "a").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / split / "a" / "x.png")
    capsys.readouterr()
    code = main(["eval", "--checkpoint", str(run), "--data", str(folder)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("d3pm: error:") and "\n" not in err


def test_checkpoint_of_another_model_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISCRETE_DIFFUSION_CACHE", str(tmp_path / "cache"))
    logistic = _train(tmp_path / "a")
    logits = _train(tmp_path / "b", "digits-uniform-cpu-small")
    for path in (logistic / "checkpoints").glob("*.safetensors"):
        target = logits / "checkpoints" / path.name
        if target.exists():
            target.write_bytes(path.read_bytes())
    capsys.readouterr()
    code = main(["sample", "--checkpoint", str(logits), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "does not fit this model" in err and "\n" not in err


def test_image_presets_validate():
    from pathlib import Path

    from discrete_diffusion.training.config import config_from_dict, read_yaml

    presets = sorted(Path("configs").glob("cifar10-*.yaml")) + sorted(
        Path("configs").glob("digits-*.yaml"))
    assert len(presets) == 16
    for path in presets:
        config = config_from_dict(read_yaml(path))
        assert config.model_kind == "unet" and config.method_kind == "diffusion"
        paper_scale = path.name.startswith("cifar10") and "cpu-small" not in path.name
        expected_steps = 1000 if paper_scale else 250
        assert config.method.num_steps == expected_steps
        assert (config.model.head == "logistic") == ("logistic" in path.name)
        hybrid = "hybrid" in path.name or "logistic" in path.name or (
            "cpu-small" in path.name and path.name.startswith("cifar10")
            and "uniform" not in path.name)
        assert (config.method.loss == "hybrid") == hybrid


def test_cifar10_cpu_presets_follow_the_paper_rows():
    """The CPU-sized CIFAR-10 presets: 16x16, T = 250, the paper's schedule and loss per
    process with the schedules scaled by 1000 / T, and no data path (--data is required)."""
    from discrete_diffusion.training.config import load_config

    want = {"uniform": ("uniform", "cosine", "vb", 0.0),
            "absorbing": ("absorbing", "jsd", "hybrid", 0.004),
            "gauss": ("gaussian", "linear", "hybrid", 0.004),
            "gauss-logistic": ("gaussian", "linear", "hybrid", 0.004)}
    for name, (kind, schedule, loss, weight) in want.items():
        config = load_config(f"configs/cifar10-{name}-cpu-small.yaml")
        assert config.data_kind == "cifar10" and config.data.path == ""
        assert config.data.resolution == 16 and config.method.num_steps == 250
        method = config.method
        assert (method.transition.kind, method.schedule, method.loss) == (kind, schedule, loss)
        assert method.hybrid_lambda == weight
        if kind == "gaussian":
            assert (method.beta_start, method.beta_stop) == (4e-4, 0.08)
        assert config.model.head == ("logistic" if "logistic" in name else "logits")


def _cifar_folder(tmp_path, count=6):
    """A CIFAR-10 image-folder layout of `count` random 32x32 colour images per split."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar"
    for split in ("train", "test"):
        (folder / split / "cat").mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(image).save(folder / split / "cat" / f"{i}.png")
    return folder


def test_fid_command_at_a_reduced_resolution(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISCRETE_DIFFUSION_CACHE", str(tmp_path / "cache"))
    torch.jit.script(_Features()).save(str(tmp_path / "net.pt"))
    folder = _cifar_folder(tmp_path)
    from discrete_diffusion.data import cifar10

    small = cifar10.build(cifar10.Config(flip=False, resolution=16), str(folder)).splits["test"]
    assert small.shape == (6, 3, 16, 16)
    np.save(tmp_path / "small.npy", small)
    args = ["figures", "fid", "--samples", str(tmp_path / "small.npy"), "--reference",
            str(folder), "--network", str(tmp_path / "net.pt")]
    assert main(args + ["--resolution", "16"]) == 0  # the set against itself
    assert abs(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fid"]) < 1e-6
    assert main(args) == 2  # 16x16 samples against the 32x32 test split
    assert "--resolution" in capsys.readouterr().err
    assert main(args + ["--resolution", "16", "--reference-images", "3"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["fid"] > 1e-3
    assert main(args + ["--resolution", "16", "--reference-images", "7"]) == 2
    assert "--reference-images must be in 1..6" in capsys.readouterr().err
    assert main(["figures", "fid", "--samples", str(tmp_path / "small.npy"), "--reference",
                 "digits", "--resolution", "16", "--network", str(tmp_path / "net.pt")]) == 2
    assert "8x8 only" in capsys.readouterr().err


def test_corruption_figure_at_a_reduced_resolution(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DISCRETE_DIFFUSION_CACHE", str(tmp_path / "cache"))
    folder = _cifar_folder(tmp_path, count=2)
    args = ["figures", "corruption", "--data", str(folder), "--out", str(tmp_path / "c.png"),
            "--steps", "10", "--num", "2", "--processes", "uniform", "--resolution"]
    assert main(args + ["8"]) == 0 and (tmp_path / "c.png").is_file()
    capsys.readouterr()
    assert main(args + ["5"]) == 2  # 5 does not divide 32
    err = capsys.readouterr().err.strip()
    assert err.startswith("d3pm: error:") and "\n" not in err
