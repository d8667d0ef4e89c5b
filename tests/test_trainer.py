"""The trainer on synthetic Markov data with the MLP: determinism, skipped updates, EMA,
accumulation, metrics, and a bound approaching the data entropy from above."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from discrete_diffusion.data.base import ArrayBatches, DataInfo
from discrete_diffusion.data.synthetic import Config as SyntheticConfig
from discrete_diffusion.data.synthetic import MarkovChain, SyntheticData
from discrete_diffusion.methods.diffusion import Config, DiffusionMethod, NearestNeighborOptions
from discrete_diffusion.networks.mlp import MLPDenoiser
from discrete_diffusion.training.builders import build_data
from discrete_diffusion.training.config import config_from_dict
from discrete_diffusion.training.ema import EMA
from discrete_diffusion.training.trainer import Trainer

torch.set_num_threads(1)


def tiny_config(data: dict | None = None, method: dict | None = None, **train):
    raw = {
        "data": {"kind": "synthetic", "vocab_size": 4, "seq_len": 6, "num_train": 128,
                 "num_eval": 32, **(data or {})},
        "model": {"kind": "mlp", "hidden": 32, "layers": 1, "embed_dim": 8},
        "method": {"kind": "diffusion", "transition": "uniform", "schedule": "cosine",
                   "num_steps": 10, **(method or {})},
        "train": {"steps": 4, "batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "log_every": 2,
                  "eval_every": 0, "ckpt_every": 0, "device": "cpu", **train},
    }
    return config_from_dict(raw)


def train(tmp_path, name="run", **kwargs) -> Trainer:
    config = tiny_config(**kwargs)
    trainer = Trainer(config, build_data(config, None), tmp_path / name, progress=False)
    trainer.fit()
    return trainer


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_seed_gives_identical_weights_and_other_seed_differs(tmp_path):
    a, b = train(tmp_path, "a"), train(tmp_path, "b")
    assert_same(weights(a), weights(b))
    c = train(tmp_path, "c", seed=1)
    assert any(not torch.equal(weights(a)[k], weights(c)[k]) for k in weights(a))


def test_warmup_is_linear_then_constant(tmp_path):
    trainer = train(tmp_path, steps=1, warmup_steps=4, lr=1e-2)
    assert [trainer.learning_rate(s) for s in range(6)] == pytest.approx(
        [2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2])


def test_non_finite_updates_are_skipped_and_counted(tmp_path):
    config = tiny_config(steps=3)
    trainer = Trainer(config, build_data(config, None), tmp_path / "run", progress=False)
    before = weights(trainer)
    real = trainer.method.losses

    def poisoned(model, x_0, generator=None):
        out = real(model, x_0, generator)
        return {**out, "loss": out["loss"] * float("nan")}

    trainer.method.losses = poisoned
    summary = trainer.fit()
    assert summary["skipped"] == 3 and trainer.skipped == 3
    assert_same(before, weights(trainer))


def test_ema_follows_the_update_rule():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.75)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(4.0)
    ema.update(model)
    assert torch.allclose(ema.model.weight, 0.75 * start + 0.25 * (start + 4.0))


def test_ema_weights_are_saved_and_differ_from_the_model(tmp_path):
    trainer = train(tmp_path, ema_decay=0.9, ckpt_every=2)
    assert trainer.eval_model is trainer.ema.model
    ema_w = trainer.ema.model.state_dict()
    assert any(not torch.equal(ema_w[k], v) for k, v in trainer.model.state_dict().items())
    assert (tmp_path / "run/checkpoints/step_000004.ema.safetensors").is_file()


def test_accumulation_splits_the_batch_and_consumes_it_all(tmp_path):
    trainer = train(tmp_path, steps=2, batch_size=8, grad_accum=4)
    assert trainer.micro_batch == 2
    assert trainer.batches.state_dict()["offset"] == 2 * 8  # two updates of 8 examples
    with pytest.raises(ValueError, match="not divisible"):
        tiny_config_trainer = tiny_config(batch_size=6, grad_accum=4)
        Trainer(tiny_config_trainer, build_data(tiny_config_trainer, None), tmp_path / "x",
                progress=False)


def test_metrics_samples_and_quartiles_are_written(tmp_path):
    train(tmp_path, steps=4, eval_every=4, eval_examples=8, sample_every=4, num_samples=2)
    lines = [json.loads(s) for s in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in lines if "train/loss" in r]
    assert [r["step"] for r in train_lines] == [2, 4]
    quartiles = [k for k in train_lines[0] if k.startswith("train/bits_per_unit_q")]
    assert quartiles and all(math.isfinite(train_lines[0][k]) for k in quartiles)
    (evaluation,) = [r for r in lines if "eval/bits_per_unit" in r]
    assert evaluation["eval/count"] == 8 and evaluation["eval/bits_per_unit"] > 0
    sample = (tmp_path / "run/samples/step_000004.txt").read_text().split("\n")
    assert len([s for s in sample if s]) == 2 and len(sample[0].split()) == 6


def test_bound_approaches_the_entropy_from_above(tmp_path):
    trainer = train(tmp_path, data={"vocab_size": 3, "seq_len": 4, "sharpness": 3.0,
                                    "num_train": 512, "num_eval": 256},
                    method={"num_steps": 4, "loss": "vb"}, steps=300, batch_size=32, lr=3e-3,
                    warmup_steps=10, log_every=100)
    result = trainer.evaluate()
    entropy = trainer.data.entropy_bits_per_token()
    start = math.log2(3)
    assert result["bits_per_unit"] > entropy - 3 * result["stderr"]
    # trained: much closer to the entropy than a uniform guess
    assert result["bits_per_unit"] - entropy < 0.35 * (start - entropy)


def test_markov_entropy_matches_enumeration():
    chain = MarkovChain(vocab_size=3, sharpness=2.0, seed=4)
    assert np.allclose(chain.stationary @ chain.transition, chain.stationary)
    total = 0.0
    for seq in np.ndindex(3, 3, 3):
        p = chain.stationary[seq[0]] * np.prod([chain.transition[a, b]
                                                for a, b in zip(seq, seq[1:])])
        total -= p * math.log2(p)
    assert chain.entropy_bits_per_token(3) == pytest.approx(total / 3, rel=1e-10)


def test_synthetic_data_follows_the_chain():
    data = SyntheticData(SyntheticConfig(vocab_size=3, seq_len=8, num_train=4000, seed=2))
    x = data.splits["train"]
    counts = np.zeros((3, 3))
    np.add.at(counts, (x[:, :-1].numpy(), x[:, 1:].numpy()), 1)
    empirical = counts / counts.sum(1, keepdims=True)
    assert np.abs(empirical - data.chain.transition).max() < 0.05
    assert not torch.equal(data.splits["validation"], data.splits["test"])


def test_batches_shard_by_rank_and_resume():
    data = torch.arange(20)[:, None]
    one = ArrayBatches(data, 4, seed=3)
    ranks = [ArrayBatches(data, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(7):  # crosses an epoch boundary (20 // 4 = 5 batches per epoch)
        assert torch.equal(next(one), torch.cat([next(r) for r in ranks]))
    state = one.state_dict()
    resumed = ArrayBatches(data, 4, seed=3, state=json.loads(json.dumps(state)))
    for _ in range(4):
        assert torch.equal(next(one), next(resumed))


@pytest.mark.parametrize("transition,schedule", [
    ("uniform", "cosine"), ("absorbing", "jsd"), ("gaussian", "linear"),
    ("mask_uniform", "jsd"), ("nearest_neighbor", "constant"), ("uniform", "mutual_information"),
])
def test_every_transition_trains_one_step(transition, schedule):
    gen = torch.Generator().manual_seed(0)
    info = DataInfo(num_classes=5, example_shape=(3,), marginal=torch.full((5,), 0.2),
                    embeddings=torch.randn(5, 4, generator=gen, dtype=torch.float64))
    options = NearestNeighborOptions(knn=2) if transition == "nearest_neighbor" else transition
    method = DiffusionMethod(Config(transition=options, schedule=schedule, num_steps=6,
                                    beta_start=0.1, beta_stop=0.3), info)
    masked = transition in ("absorbing", "mask_uniform")
    assert method.num_classes == (6 if masked else 5)
    assert method.mask_index == (5 if masked else None)
    model = MLPDenoiser((3,), method.num_classes, hidden=8, layers=1, embed_dim=4)
    x_0 = torch.randint(0, 5, (4, 3), generator=gen)
    out = method.losses(model, x_0, generator=gen)
    out["loss"].mean().backward()
    assert torch.isfinite(out["bound"]).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    samples = method.sample(model, 64, steps=3, generator=gen)
    assert samples.shape == (64, 3) and samples.max() < 5  # an added mask is never an x_0


def test_mask_of_the_data_and_missing_arrays():
    grey = DataInfo(num_classes=5, example_shape=(2,), mask_index=2)
    method = DiffusionMethod(Config(transition="absorbing", num_steps=4), grey)
    assert method.num_classes == 5 and method.mask_index == 2
    bare = DataInfo(num_classes=5, example_shape=(2,), name="bare")
    with pytest.raises(ValueError, match="nearest_neighbor transition needs token embeddings"):
        DiffusionMethod(Config(transition="nearest_neighbor", num_steps=4), bare)
    with pytest.raises(ValueError, match="needs the data marginal"):
        DiffusionMethod(Config(transition="uniform", schedule="mutual_information",
                               num_steps=4), bare)


def test_training_without_tensorboard_still_logs(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    trainer = train(tmp_path, steps=2)
    assert trainer.log.writer is None
    assert (tmp_path / "run/metrics.jsonl").read_text().count("train/loss") == 1
    assert not (tmp_path / "run/tensorboard").exists()
