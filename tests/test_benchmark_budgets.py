"""benchmarks/bench_cifar_small.py's budget training: the record it leaves and --reuse, which
evaluates a trained run again instead of training it twice (or silently for another budget)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_cifar_small",
                                                  ROOT / "benchmarks" / "bench_cifar_small.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cifar_folder(tmp_path, count=32):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        (tmp_path / "cifar" / split / "cat").mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(image).save(tmp_path / "cifar" / split / "cat" / f"{i}.png")
    return str(tmp_path / "cifar")


def test_reuse_loads_the_trained_run_and_refuses_another_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("DISCRETE_DIFFUSION_CACHE", str(tmp_path / "cache"))
    bench, data, run = _bench(), _cifar_folder(tmp_path), tmp_path / "run"
    trainer, spent = bench.train_for_budget("cifar10-uniform-cpu-small", data, run, 1e-3, 0)
    record = json.loads((run / "train.json").read_text())
    assert record == {"budget": 1e-3, "train_cpu_s": spent, "steps": trainer.step}
    assert trainer.step >= 1

    again, spent_again = bench.train_for_budget("cifar10-uniform-cpu-small", data, run, 1e-3, 0,
                                                reuse=True)
    assert (again.step, spent_again) == (trainer.step, spent)  # loaded, not trained further
    first = trainer.eval_model.state_dict()
    for name, value in again.eval_model.state_dict().items():
        assert (value == first[name]).all(), name
    with pytest.raises(SystemExit, match="trained for 0.001 CPU-s, not 5"):
        bench.train_for_budget("cifar10-uniform-cpu-small", data, run, 5.0, 0, reuse=True)


def test_run_parallel_keeps_the_results_of_the_runs_that_succeeded(tmp_path, capsys):
    import subprocess

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from budgets import run_parallel

    (tmp_path / "ok.json").write_text(json.dumps({"bits": 1.5}))
    (tmp_path / "bad.json").write_text(json.dumps({"bits": 9.9}))  # written, but it failed
    codes = {"ok": 0, "bad": 3, "silent": 0}  # "silent" exits 0 without a result

    def launch(name):
        return subprocess.Popen([sys.executable, "-c", f"raise SystemExit({codes[name]})"])

    results = run_parallel(codes, launch, lambda n: tmp_path / f"{n}.json", jobs=2, poll=0.05,
                           log_path=lambda n: tmp_path / f"{n}.log")
    assert results == [{"bits": 1.5}]
    err = capsys.readouterr().err
    assert f"bad: failed (exit 3, see {tmp_path / 'bad.log'})" in err
    assert "silent: failed (exit 0" in err
