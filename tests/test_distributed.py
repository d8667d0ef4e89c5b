"""DistributedDataParallel with 2 CPU processes (gloo on 127.0.0.1): both ranks end with the
same weights, the loss is finite, and rank 0 alone writes a checkpoint holding both ranks'
states."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import time

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from discrete_diffusion.training.builders import build_data
from discrete_diffusion.training.config import config_from_dict

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, args: tuple, seconds: float = 240.0) -> None:
    """`mp.spawn` of WORLD processes that fails, rather than hangs, if they have not finished
    within `seconds` (a deadlocked rendezvous would otherwise wait for gloo's 30 minutes)."""
    context = mp.spawn(fn, args=args, nprocs=WORLD, join=False)
    deadline = time.monotonic() + seconds
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"{WORLD} processes did not finish within {seconds:.0f} s")


def tiny_config():
    return config_from_dict({
        "data": {"kind": "synthetic", "vocab_size": 4, "seq_len": 6, "num_train": 64,
                 "num_eval": 8},
        "model": {"kind": "mlp", "hidden": 16, "layers": 1, "embed_dim": 4},
        "method": {"kind": "diffusion", "transition": "uniform", "schedule": "cosine",
                   "num_steps": 8},
        "train": {"steps": 3, "batch_size": 8, "lr": 1e-2, "warmup_steps": 1, "log_every": 1,
                  "eval_every": 3, "eval_examples": 8, "ckpt_every": 3, "device": "cpu"},
    })


def worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from discrete_diffusion.training.trainer import Trainer

    config = tiny_config()
    trainer = Trainer(config, build_data(config, None), os.path.join(out_dir, "run"),
                      progress=False)
    summary = trainer.fit()
    save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()},
              os.path.join(out_dir, f"rank{rank}.safetensors"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"loss": summary.get("train", {}).get("loss"), "step": summary["step"],
                   "micro_batch": trainer.micro_batch}, f)


def test_two_cpu_processes_agree(tmp_path):
    spawn(worker, (free_port(), str(tmp_path)))
    w0, w1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD))
    assert w0.keys() == w1.keys()
    for key in w0:
        assert torch.equal(w0[key], w1[key]), key
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert r0["step"] == r1["step"] == 3 and r0["micro_batch"] == 4  # global batch 8 / 2
    assert math.isfinite(r0["loss"]) and r1["loss"] is None  # rank 0 alone logs
    state = json.loads((tmp_path / "run/checkpoints/step_000003.json").read_text())
    assert len(state["ranks"]) == WORLD
    assert state["ranks"][0]["rng"]["generator"] != state["ranks"][1]["rng"]["generator"]
    lines = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    assert any("eval/bits_per_unit" in json.loads(line) for line in lines)
    saved = load_file(str(tmp_path / "run/checkpoints/step_000003.safetensors"))
    assert torch.equal(saved["embed.weight"], w0["embed.weight"])


def resize_config(steps: int):
    config = tiny_config()
    config.train.steps, config.train.eval_every, config.train.ckpt_every = steps, 0, 0
    return config


def _join(rank: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)


def sigterm_worker(rank: int, port: int, out_dir: str) -> None:
    """Run a: 2 processes from scratch, SIGTERM to rank 1 during step 3."""
    _join(rank, port)
    from discrete_diffusion.training.interrupt import TrainingInterrupted
    from discrete_diffusion.training.trainer import Trainer

    config = resize_config(6)
    trainer = Trainer(config, build_data(config, None), os.path.join(out_dir, "a"),
                      progress=False)
    real_step = trainer.train_step

    def step() -> int:
        if rank == 1 and trainer.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step()

    trainer.train_step = step
    try:
        trainer.fit()
        outcome = {"code": 0}
    except TrainingInterrupted as stop:
        outcome = {"code": stop.exit_code, "step": stop.step}
    with open(os.path.join(out_dir, f"outcome{rank}.json"), "w") as f:
        json.dump(outcome, f)


def resume_worker(rank: int, port: int, out_dir: str) -> None:
    """Run b: a 1-process run of 3 steps resumed with 2 processes to step 6 (fresh processes,
    one process group each, as under torchrun)."""
    _join(rank, port)
    from discrete_diffusion.training.trainer import Trainer

    config = resize_config(6)
    resumed = Trainer(config, build_data(config, None), os.path.join(out_dir, "b"),
                      resume=True, progress=False)
    with open(os.path.join(out_dir, f"resumed{rank}.json"), "w") as f:
        json.dump({"resumed_from": resumed.step}, f)
    resumed.fit()
    save_file({k: v.contiguous() for k, v in resumed.model.state_dict().items()},
              os.path.join(out_dir, f"b{rank}.safetensors"))


def test_resume_across_world_sizes_and_sigterm_under_ddp(tmp_path):
    from discrete_diffusion.training.checkpoint import load_checkpoint
    from discrete_diffusion.training.trainer import Trainer

    def trainer(name: str, steps: int, resume: bool = False) -> Trainer:
        config = resize_config(steps)
        return Trainer(config, build_data(config, None), tmp_path / name, resume=resume,
                       progress=False)

    trainer("b", 3).fit()  # one process
    spawn(sigterm_worker, (free_port(), str(tmp_path)))
    spawn(resume_worker, (free_port(), str(tmp_path)))
    outcomes = [json.loads((tmp_path / f"outcome{r}.json").read_text()) for r in range(WORLD)]
    resumed_from = [json.loads((tmp_path / f"resumed{r}.json").read_text())["resumed_from"]
                    for r in range(WORLD)]
    # SIGTERM reached rank 1 only; both ranks stopped after the same step, rank 0 wrote it
    assert [o["code"] for o in outcomes] == [143, 143]
    assert [o["step"] for o in outcomes] == [3, 3]
    assert load_checkpoint(tmp_path / "a").step == 3
    # 1 -> 2 processes: resumed from step 3, the ranks agree
    assert resumed_from == [3, 3]
    b0, b1 = (load_file(str(tmp_path / f"b{r}.safetensors")) for r in range(WORLD))
    assert all(torch.equal(b0[k], b1[k]) for k in b0)
    # 2 -> 1 process
    resumed = trainer("a", 6, resume=True)
    assert resumed.step == 3
    resumed.fit()
    # the global data position is the same however many processes took part
    straight = trainer("c", 6)
    straight.fit()
    position = load_checkpoint(tmp_path / "c").state["data"]
    assert position == {"epoch": 0, "offset": 48}
    assert load_checkpoint(tmp_path / "a").state["data"] == position
    assert load_checkpoint(tmp_path / "b").state["data"] == position
