"""DistributedDataParallel with 2 CPU processes (gloo on 127.0.0.1): both ranks end with the
same weights, the loss is finite, and rank 0 alone writes a checkpoint holding both ranks'
states."""

from __future__ import annotations

import json
import math
import os
import socket

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
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
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
