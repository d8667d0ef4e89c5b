"""Resume: the run remembers its data, refuses other data unless allowed, survives signals at
random moments bit for bit, re-saves a step atomically, and accumulates gradients as a mean."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import signal
import sys
import time

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from discrete_diffusion.cli.main import COMMANDS, main
from discrete_diffusion.data.token_stream import CropIterator
from discrete_diffusion.training import checkpoint as checkpoint_module
from discrete_diffusion.training.builders import build_data
from discrete_diffusion.training.checkpoint import list_checkpoints, load_checkpoint
from discrete_diffusion.training.config import config_from_dict
from discrete_diffusion.training.interrupt import StopRequest
from discrete_diffusion.training.trainer import Trainer

torch.set_num_threads(1)


# ----- the run remembers its data -----------------------------------------------------------
TOKENS = {
    "data": {"kind": "tokens", "seq_len": 8, "embedding_dim": 2},
    "model": {"kind": "mlp", "hidden": 16, "layers": 1, "embed_dim": 4},
    "method": {"kind": "diffusion", "transition": "uniform", "schedule": "cosine",
               "num_steps": 5},
    "train": {"steps": 2, "batch_size": 4, "log_every": 1, "eval_every": 0, "ckpt_every": 2,
              "device": "cpu"},
}


@pytest.fixture
def token_run(tmp_path, monkeypatch):
    """A run trained 2 steps on tokens/a.npy given as a relative path; cwd moves away after."""
    (tmp_path / "tokens").mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        np.save(tmp_path / "tokens" / f"{name}.npy", rng.integers(0, 5, 800).astype(np.int64))
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(TOKENS))
    monkeypatch.chdir(tmp_path)
    base = ["--cache", str(tmp_path / "cache"), "train", "--out", str(tmp_path / "run"),
            "--no-progress"]
    assert main([*base, "--config", "cfg.yaml", "--data", "tokens/a.npy"]) == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    return tmp_path, [*base, "--resume"]


def error_of(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("d3pm: error: ") and err.count("\n") == 1
    return err


def test_resume_without_data_uses_the_recorded_data(token_run):
    root, resume = token_run
    record = json.loads((root / "run/data/source.json").read_text())["identity"]
    assert record["argument"] == "tokens/a.npy"
    assert record["path"] == str((root / "tokens/a.npy").resolve())
    assert record["size"] == (root / "tokens/a.npy").stat().st_size and record["sha256"]
    assert main([*resume, "--steps", "4"]) == 0  # from another folder, no --data
    assert load_checkpoint(root / "run").step == 4


def test_resume_on_other_data_is_refused_unless_allowed(token_run, capsys):
    root, resume = token_run
    other = str(root / "tokens/b.npy")
    err = error_of(capsys, [*resume, "--steps", "4", "--data", other])
    assert "a.npy" in err and "b.npy" in err and "--allow-data-change" in err
    assert main([*resume, "--steps", "3", "--data", str(root / "tokens/a.npy")]) == 0  # same
    assert main([*resume, "--steps", "4", "--data", other, "--allow-data-change"]) == 0
    history = json.loads((root / "run/data/source.json").read_text())["history"]
    assert len(history) == 1 and history[0]["step"] == 3
    assert history[0]["from"]["path"].endswith("a.npy")
    assert history[0]["to"]["path"].endswith("b.npy")
    state = load_checkpoint(root / "run").state["data_source"]
    assert state["identity"]["path"].endswith("b.npy") and len(state["history"]) == 1
    # the run now continues on b.npy without --data
    assert main([*resume, "--steps", "5"]) == 0


def test_recorded_data_that_changed_is_refused(token_run, capsys):
    root, resume = token_run
    np.save(root / "tokens/a.npy", np.zeros(900, dtype=np.int64) + 1)
    err = error_of(capsys, [*resume, "--steps", "4"])
    assert "other data" in err and "a.npy" in err


# ----- signals at random moments ------------------------------------------------------------
SIGNALLED = {
    "data": {"kind": "synthetic", "vocab_size": 5, "seq_len": 6, "num_train": 40,
             "num_eval": 8},
    "model": {"kind": "transformer", "num_layers": 1, "d_model": 16, "num_heads": 2,
              "mlp_dim": 32, "dropout": 0.2},
    "method": {"kind": "diffusion", "transition": "absorbing", "schedule": "jsd",
               "num_steps": 6},
    "train": {"steps": 40, "batch_size": 8, "grad_accum": 2, "lr": 3e-3, "warmup_steps": 3,
              "log_every": 2, "eval_every": 4, "eval_examples": 8, "sample_every": 5,
              "num_samples": 2, "ckpt_every": 7, "ema_decay": 0.9, "device": "cpu"},
}


def run_cli(argv: list[str], stderr_path: str) -> None:
    """`d3pm train` in a child process; `stderr_path` appears once its training loop defers
    signals."""
    real_enter = StopRequest.__enter__

    def enter(self):
        out = real_enter(self)
        os.replace(stderr_path + ".tmp", stderr_path)  # tells the parent: the loop starts now
        return out

    code = 130
    try:
        torch.set_num_threads(1)
        os.dup2(os.open(stderr_path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
        StopRequest.__enter__ = enter  # type: ignore[method-assign]
        code = main(argv)
    except KeyboardInterrupt:  # a Ctrl-C before `main` handles it
        pass
    sys.exit(code)


def final_tensors(run_dir) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(run_dir, optimizer=True)
    out = {f"w.{k}": v for k, v in ckpt.weights.items()}
    out.update({f"ema.{k}": v for k, v in ckpt.ema.items()})
    out.update({f"opt.{k}": v for k, v in load_file(str(
        ckpt.path.with_name(ckpt.state["files"]["optim"]))).items()})
    return out


@pytest.mark.slow
def test_signals_at_random_moments_resume_bit_exactly(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(SIGNALLED))
    ctx = multiprocessing.get_context("forkserver")
    # children fork from a server that has imported everything once (the optimizer imports
    # torch._dynamo: seconds), so each starts in a fraction of a second
    ctx.set_forkserver_preload([__name__, *(f"discrete_diffusion.cli.{c}" for c in COMMANDS),
                                "discrete_diffusion.training.trainer", "torch._dynamo"])

    def start(run: str) -> multiprocessing.Process:
        argv = ["train", "--config", str(config), "--out", str(tmp_path / run), "--resume",
                "--no-progress"]
        proc = ctx.Process(target=run_cli, args=(argv, str(tmp_path / f"{run}.err")))
        proc.start()
        return proc

    reference = start("reference")
    while not (tmp_path / "reference.err").exists() and reference.is_alive():
        time.sleep(0.002)
    began = time.perf_counter()
    reference.join()
    assert reference.exitcode == 0
    loop = time.perf_counter() - began  # the training loop's length
    expected = final_tensors(tmp_path / "reference")
    draw = random.Random(8)
    interrupts, runs = 0, 0
    while interrupts < 24:
        run, runs = f"run{runs}", runs + 1
        for _ in range(40):
            proc = start(run)
            err_path = tmp_path / f"{run}.err"
            while not err_path.exists() and proc.is_alive():
                time.sleep(0.002)
            time.sleep(draw.uniform(0.0, 0.5 * loop))  # any moment of the loop
            sig = draw.choice([signal.SIGINT, signal.SIGTERM])
            with contextlib.suppress(ProcessLookupError):  # unless it has finished
                os.kill(proc.pid, sig)
            proc.join()
            err = err_path.read_text() if err_path.exists() else ""
            err_path.unlink(missing_ok=True)
            if proc.exitcode == 0:
                break
            interrupts += 1
            if "interrupted: checkpoint saved at step" in err:
                assert proc.exitcode == 128 + sig, err
            else:  # after the loop, at the very end: as usual (the run is complete)
                assert proc.exitcode in (130, -sig), err
                assert load_checkpoint(tmp_path / run).step == SIGNALLED["train"]["steps"]
        got = final_tensors(tmp_path / run)
        assert got.keys() == expected.keys()
        for key in expected:
            assert torch.equal(got[key], expected[key]), (run, key)


# ----- atomic (re-)saves --------------------------------------------------------------------
def tiny(run_dir, **train) -> Trainer:
    raw = {"data": {"kind": "synthetic", "vocab_size": 4, "seq_len": 6, "num_train": 32,
                    "num_eval": 8},
           "model": {"kind": "mlp", "hidden": 16, "layers": 1, "embed_dim": 4},
           "method": {"kind": "diffusion", "transition": "uniform", "schedule": "cosine",
                      "num_steps": 5},
           "train": {"steps": 2, "batch_size": 4, "log_every": 1, "eval_every": 0,
                     "ckpt_every": 0, "ema_decay": 0.5, "device": "cpu", **train}}
    config = config_from_dict(raw)
    return Trainer(config, build_data(config, None), run_dir, progress=False)


def failing_after_first_file(monkeypatch):
    real, calls = checkpoint_module.save_file, []

    def save_file(tensors, path):
        if calls:
            raise OSError("disk full")
        calls.append(path)
        real(tensors, path)

    monkeypatch.setattr(checkpoint_module, "save_file", save_file)


@pytest.mark.parametrize("existing", [False, True])
def test_a_save_failing_part_way_leaves_the_previous_checkpoint(tmp_path, monkeypatch,
                                                                existing):
    trainer = tiny(tmp_path / "run")
    trainer.fit()  # step 2 saved
    before = load_checkpoint(tmp_path / "run", optimizer=True)
    if not existing:
        trainer.train_step()  # step 3: a new step
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)  # new content for the same step when re-saving
    failing_after_first_file(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        trainer.save()
    monkeypatch.undo()
    after = load_checkpoint(tmp_path / "run", optimizer=True)
    assert after.step == before.step == 2
    for a, b in ((after.weights, before.weights), (after.ema, before.ema)):
        assert all(torch.equal(a[k], b[k]) for k in b)
    assert all(torch.equal(after.optimizer["state"][i]["exp_avg"],
                           before.optimizer["state"][i]["exp_avg"])
               for i in before.optimizer["state"])
    trainer.save()  # a later save succeeds, and only one set of files per step remains
    again = load_checkpoint(tmp_path / "run", optimizer=True)
    assert all(torch.equal(again.weights[k], v) for k, v in trainer.model.state_dict().items())
    names = sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir())
    assert len([n for n in names if n.endswith(".safetensors")]) == 3 * len(
        list_checkpoints(tmp_path / "run/checkpoints"))


# ----- gradient accumulation averages ------------------------------------------------------
@pytest.mark.parametrize("setting", [
    {"eps": 1e3, "lr": 10.0, "grad_clip": 0.0, "weight_decay": 0.0},  # SGD-like: update ~ g
    {"eps": 1e-8, "lr": 1e-2, "grad_clip": 1e-3, "weight_decay": 0.1},  # AdamW, clipping on
])
def test_one_update_with_accumulation_equals_one_without(tmp_path, setting):
    """The autoregressive loss draws no noise, so both see exactly the same examples."""
    def trained(accum: int) -> dict[str, torch.Tensor]:
        raw = {"data": {"kind": "synthetic", "vocab_size": 4, "seq_len": 6, "num_train": 32,
                        "num_eval": 8},
               "model": {"kind": "causal_transformer", "num_layers": 1, "d_model": 16,
                         "num_heads": 2, "mlp_dim": 32},
               "method": {"kind": "autoregressive"},
               "train": {"steps": 1, "batch_size": 8, "grad_accum": accum, "warmup_steps": 0,
                         "log_every": 1, "eval_every": 0, "ckpt_every": 0, "device": "cpu",
                         **setting}}
        config = config_from_dict(raw)
        trainer = Trainer(config, build_data(config, None), tmp_path / f"a{accum}",
                          progress=False)
        start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        trainer.fit()
        return {k: v - start[k] for k, v in trainer.model.state_dict().items()}

    one, two = trained(1), trained(2)
    assert max(v.abs().max().item() for v in one.values()) > 1e-5  # the update is visible
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-7)


# ----- text crops: a global order -----------------------------------------------------------
def test_crops_are_drawn_per_global_batch():
    ids = np.arange(500) % 7
    one = CropIterator(ids, 5, 4, seed=2, rank=0)
    two = [CropIterator(ids, 5, 2, seed=2, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        assert torch.equal(next(one), torch.cat([next(it) for it in two]))
    state = one.state_dict()
    assert state == {"crops": 3} and two[1].state_dict() == state
    resumed = [CropIterator(ids, 5, 2, seed=2, rank=r, state=state, world_size=2)
               for r in range(2)]
    assert torch.equal(next(one), torch.cat([next(it) for it in resumed]))
    # a per-rank state written before continues the older stream, at its number of processes
    old = CropIterator(ids, 5, 4, seed=2, rank=1, state={"step": 3})
    rng = np.random.default_rng([2, 1, 3])
    starts = rng.integers(0, 496, size=4)
    assert torch.equal(next(old), torch.from_numpy(np.stack([ids[s:s + 5] for s in starts])))
    assert old.state_dict() == {"step": 4, "rank": 1, "world_size": 1}
    with pytest.raises(ValueError, match="resume it with that number"):
        CropIterator(ids, 5, 2, seed=2, rank=0, state=old.state_dict(), world_size=2)
