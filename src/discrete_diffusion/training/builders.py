"""Build a run's parts from a `RunConfig` through the registries, and rebuild a trained run
from its folder (config in the checkpoint, DataInfo and codec in `RUN_DIR/data/`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from discrete_diffusion.data.base import Codec, DataInfo, DataSource, codec_from_dir
from discrete_diffusion.methods.base import Method
from discrete_diffusion.training import registry
from discrete_diffusion.training.checkpoint import Checkpoint, load_checkpoint, load_weights
from discrete_diffusion.training.config import RunConfig, config_from_dict
from discrete_diffusion.training.nonfinite import first_non_finite


def build_data(config: RunConfig, data_arg: str | None) -> DataSource:
    """The data source of `config.data` (`data_arg` is the CLI's --data)."""
    return registry.lookup("data", config.data_kind).build(config.data, data_arg)


def build_method(config: RunConfig, info: DataInfo) -> Method:
    return registry.lookup("method", config.method_kind).build(config.method, info)


def build_model(config: RunConfig, info: DataInfo, method: Method) -> nn.Module:
    """The network, predicting over `method.num_classes` with `method.num_steps` steps."""
    return registry.lookup("model", config.model_kind).build(
        config.model, info, method.num_classes, method.num_steps)


@dataclass
class TrainedRun:
    """A trained model ready to evaluate or sample: `model` holds the EMA weights when the run
    has them (`uses_ema`)."""

    config: RunConfig
    info: DataInfo
    method: Method
    model: nn.Module
    checkpoint: Checkpoint
    uses_ema: bool

    @property
    def run_dir(self) -> Path:
        return self.checkpoint.run_dir

    def codec(self) -> Codec:
        return codec_from_dir(self.run_dir / "data")


def load_trained(path: str | os.PathLike, device: torch.device | str = "cpu",
                 prefer_ema: bool = True) -> TrainedRun:
    """Rebuild a run from a run folder (latest checkpoint) or a checkpoint file. A checkpoint
    holding an inf or NaN weight (model or EMA) is refused with a one-line ValueError."""
    ckpt = load_checkpoint(path)
    if "config" not in ckpt.state:
        raise ValueError(f"checkpoint {ckpt.path} holds no config")
    for label, tensors in (("weight", ckpt.weights), ("EMA weight", ckpt.ema or {})):
        bad = first_non_finite(tensors)
        if bad is not None:
            raise ValueError(f"checkpoint {ckpt.path} holds non-finite values (inf or NaN) in "
                             f"the {label} {bad!r}; use an earlier checkpoint")
    config = config_from_dict(ckpt.state["config"])
    info = DataInfo.load(ckpt.run_dir / "data")
    method = build_method(config, info)
    model = build_model(config, info, method)
    use_ema = prefer_ema and ckpt.ema is not None
    load_weights(model, ckpt.ema if use_ema else ckpt.weights, ckpt.path)
    model.to(device).eval()
    method.to(device)
    return TrainedRun(config, info, method, model, ckpt, use_ema)
