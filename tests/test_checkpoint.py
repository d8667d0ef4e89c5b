"""Checkpoints: exact resume (also after Ctrl-C), corrupt files, mismatched models, pruning,
and run folders that are never overwritten."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from discrete_diffusion.training.builders import build_data, load_trained
from discrete_diffusion.training.checkpoint import (
    flatten_optimizer,
    list_checkpoints,
    load_checkpoint,
    resolve_checkpoint,
    unflatten_optimizer,
)
from discrete_diffusion.training.config import config_from_dict
from discrete_diffusion.training.interrupt import TrainingInterrupted
from discrete_diffusion.training.trainer import Trainer

torch.set_num_threads(1)


def tiny_config(model: dict | None = None, **train):
    raw = {
        "data": {"kind": "synthetic", "vocab_size": 4, "seq_len": 6, "num_train": 40,
                 "num_eval": 16},
        "model": {"kind": "mlp", "hidden": 32, "layers": 1, "embed_dim": 8, **(model or {})},
        "method": {"kind": "diffusion", "transition": "uniform", "schedule": "cosine",
                   "num_steps": 10},
        "train": {"steps": 8, "batch_size": 8, "lr": 1e-2, "warmup_steps": 3, "log_every": 2,
                  "eval_every": 0, "ckpt_every": 4, "ema_decay": 0.5, "grad_accum": 2,
                  "device": "cpu", **train},
    }
    return config_from_dict(raw)


def make(run_dir, resume=False, model=None, **train) -> Trainer:
    config = tiny_config(model, **train)
    return Trainer(config, build_data(config, None), run_dir, resume=resume, progress=False)


def state_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    out.update({f"ema.{k}": v.clone() for k, v in trainer.ema.model.state_dict().items()})
    tensors, _ = flatten_optimizer(trainer.optimizer.state_dict())
    out.update({f"opt.{k}": v.clone() for k, v in tensors.items()})
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_is_exact(tmp_path):
    # 8 steps in one go vs 4 steps, a fresh process state, and 4 more (5 epochs of 40 examples
    # in batches of 8: the data position crosses epoch boundaries)
    straight = make(tmp_path / "a")
    straight.fit()
    first = make(tmp_path / "b", steps=4)
    first.fit()
    torch.manual_seed(123)  # disturb the global RNG: resume must restore it
    second = make(tmp_path / "b", resume=True)
    assert second.step == 4
    second.fit()
    assert_same(state_of(straight), state_of(second))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_step_saves_that_step_whole_and_resume_is_exact(tmp_path, monkeypatch,
                                                                    signum):
    straight = make(tmp_path / "a", ckpt_every=0)
    straight.fit()
    broken = make(tmp_path / "b", ckpt_every=0)
    real_step = Trainer.train_step

    def interrupting(self):
        if self.step == 5:  # the signal arrives as a step begins: that step completes
            os.kill(os.getpid(), signum)
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupting)
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    with pytest.raises(TrainingInterrupted) as stop:
        broken.fit()
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert stop.value.step == 6 and stop.value.exit_code == 128 + signum
    assert [s for s, _ in list_checkpoints(tmp_path / "b/checkpoints")] == [6]
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored
    resumed = make(tmp_path / "b", resume=True, ckpt_every=0)
    resumed.fit()
    assert_same(state_of(straight), state_of(resumed))


def test_a_second_ctrl_c_aborts_without_saving(tmp_path, monkeypatch):
    trainer = make(tmp_path / "b", ckpt_every=0)
    real_step = Trainer.train_step

    def interrupting(self):
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", interrupting)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert list_checkpoints(tmp_path / "b/checkpoints") == []


def test_keeps_the_last_checkpoints_and_points_to_the_latest(tmp_path):
    make(tmp_path / "r", steps=8, ckpt_every=2, keep_checkpoints=2).fit()
    assert [s for s, _ in list_checkpoints(tmp_path / "r/checkpoints")] == [6, 8]
    assert resolve_checkpoint(tmp_path / "r").name == "step_000008.json"
    assert sorted(p.name for p in (tmp_path / "r/checkpoints").iterdir()) == sorted(
        [f"step_00000{s}{ext}" for s in (6, 8)
         for ext in (".json", ".safetensors", ".ema.safetensors", ".optim.safetensors")]
        + ["latest.json"])
    state = json.loads((tmp_path / "r/checkpoints/step_000008.json").read_text())
    assert state["step"] == 8 and state["kinds"]["model"] == "mlp"
    assert state["shapes"]["embed.weight"] == [4, 8]


def test_optimizer_flattening_round_trips(tmp_path):
    trainer = make(tmp_path / "r", steps=2, ckpt_every=0)
    trainer.fit()
    original = trainer.optimizer.state_dict()
    tensors, meta = flatten_optimizer(original)
    again = unflatten_optimizer(tensors, json.loads(json.dumps(meta)))
    assert again["state"].keys() == original["state"].keys()
    for pid, entries in original["state"].items():
        for name, value in entries.items():
            assert torch.equal(again["state"][pid][name], value)
    assert again["param_groups"][0]["lr"] == original["param_groups"][0]["lr"]


def test_truncated_checkpoint_is_a_one_line_error(tmp_path):
    make(tmp_path / "r", steps=4).fit()
    weights = tmp_path / "r/checkpoints/step_000004.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or truncated") as err:
        load_trained(tmp_path / "r")
    assert "\n" not in str(err.value)
    (tmp_path / "r/checkpoints/step_000004.json").write_text('{"step": 4, "con')
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "r")


def test_checkpoint_of_another_model_names_the_parameter(tmp_path):
    make(tmp_path / "small", steps=4).fit()
    wrong = make(tmp_path / "big", steps=1, model={"hidden": 48})
    ckpt = load_checkpoint(tmp_path / "small")
    from discrete_diffusion.training.checkpoint import load_weights

    with pytest.raises(ValueError, match=r"parameter 'proj_in.weight' has shape \[32, 48\] in "
                                         r"the checkpoint but \[48, 48\]"):
        load_weights(wrong.model, ckpt.weights, ckpt.path)


def test_existing_run_folder_is_never_overwritten(tmp_path):
    make(tmp_path / "r", steps=4).fit()
    before = (tmp_path / "r/checkpoints/step_000004.safetensors").read_bytes()
    with pytest.raises(ValueError, match="already holds checkpoints; pass --resume"):
        make(tmp_path / "r", steps=4)
    with pytest.raises(ValueError, match=r"different config \(train.lr differ"):
        make(tmp_path / "r", resume=True, lr=0.5)
    assert (tmp_path / "r/checkpoints/step_000004.safetensors").read_bytes() == before
    # a folder holding another config but no checkpoint yet is protected too
    (tmp_path / "s").mkdir()
    make(tmp_path / "s", steps=1, ckpt_every=0, eval_every=0)  # writes config.yaml only
    with pytest.raises(ValueError, match="holds a different config"):
        make(tmp_path / "s", lr=0.5)
    (tmp_path / "t").mkdir()
    (tmp_path / "t/notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a run"):
        make(tmp_path / "t")


def test_resume_may_extend_the_run(tmp_path):
    make(tmp_path / "r", steps=4).fit()
    longer = make(tmp_path / "r", resume=True, steps=6)
    assert longer.step == 4
    assert longer.fit()["step"] == 6


def test_data_info_and_codec_round_trip(tmp_path):
    from discrete_diffusion.data.base import DataInfo, codec_from_dir
    from discrete_diffusion.data.synthetic import IdCodec

    info = DataInfo(num_classes=3, example_shape=(2, 4), mask_index=1, unit="dim", name="x",
                    marginal=torch.tensor([0.5, 0.25, 0.25]),
                    embeddings=torch.arange(6, dtype=torch.float64).reshape(3, 2))
    info.save(tmp_path)
    again = DataInfo.load(tmp_path)
    assert (again.num_classes, again.example_shape, again.mask_index, again.unit, again.name) \
        == (3, (2, 4), 1, "dim", "x")
    assert torch.equal(again.marginal, info.marginal)
    assert torch.equal(again.embeddings, info.embeddings) and again.num_positions == 8
    IdCodec(vocab_size=3).save(tmp_path)
    codec = codec_from_dir(tmp_path)
    assert isinstance(codec, IdCodec) and codec.render(torch.tensor([[0, 2, 3]])) == "0 2 _"
    ids, held = codec.parse_infill("2 _ 1")
    assert ids.tolist() == [2, 0, 1] and held.tolist() == [True, False, True]
    (tmp_path / "codec.json").write_text('{"kind": "morse"}')
    with pytest.raises(ValueError, match="unknown codec kind 'morse'"):
        codec_from_dir(tmp_path)
    with pytest.raises(ValueError, match="unit must be one of"):
        DataInfo(num_classes=3, example_shape=(2,), unit="pixel")


def flatten_transition(config: dict) -> dict:
    """`config` as versions before the nested transition options wrote it: the transition a
    name, and `bands`, `knn`, `uniform_schedule` flat in the method section."""
    method = dict(config["method"])
    method["transition"] = method["transition"]["kind"]
    method.update(bands=None, knn=5, uniform_schedule="cosine")
    return {**config, "method": method}


def test_run_folder_of_the_flat_transition_form_loads_and_resumes(tmp_path):
    import yaml

    straight = make(tmp_path / "a")
    straight.fit()
    make(tmp_path / "b", steps=4).fit()
    want = load_trained(tmp_path / "b")
    saved = tmp_path / "b/config.yaml"
    saved.write_text(yaml.safe_dump(flatten_transition(yaml.safe_load(saved.read_text())),
                                    sort_keys=False))
    step = tmp_path / "b/checkpoints/step_000004.json"
    state = json.loads(step.read_text())
    state["config"] = flatten_transition(state["config"])
    step.write_text(json.dumps(state))
    old = load_trained(tmp_path / "b")
    assert old.config == want.config
    x = torch.randint(0, 4, (5, 6), generator=torch.Generator().manual_seed(0))
    nll = [run.method.nll(run.model, x, generator=torch.Generator().manual_seed(1))
           for run in (want, old)]
    assert torch.equal(*nll)
    resumed = make(tmp_path / "b", resume=True)
    assert resumed.step == 4
    resumed.fit()
    assert_same(state_of(straight), state_of(resumed))


def test_checkpoint_with_per_rank_data_positions_still_resumes(tmp_path):
    """The format written before data positions were global: "data" inside each rank's entry,
    no "files" entry. It resumes exactly at its number of processes, and says so at another."""
    straight = make(tmp_path / "a")
    straight.fit()
    make(tmp_path / "b", steps=4).fit()
    path = tmp_path / "b/checkpoints/step_000004.json"
    state = json.loads(path.read_text())
    state["ranks"][0]["data"] = state.pop("data")
    del state["files"]
    path.write_text(json.dumps(state))
    resumed = make(tmp_path / "b", resume=True)
    resumed.fit()
    assert_same(state_of(straight), state_of(resumed))
    state["ranks"].append(state["ranks"][0])  # as if two processes had written it
    path = tmp_path / "b/checkpoints/step_000008.json"
    path.write_text(json.dumps({**state, "step": 8}))
    with pytest.raises(ValueError, match="data positions of 2 processes; resume it with the same"):
        make(tmp_path / "b", resume=True, steps=10)
