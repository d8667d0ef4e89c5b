"""Config loading, validation, overrides and the YAML round trip."""

from __future__ import annotations

import pytest
import yaml

from discrete_diffusion.training.config import (
    TrainConfig,
    apply_overrides,
    config_from_dict,
    dump_config,
    load_config,
)
from discrete_diffusion.training.registry import lookup


def raw_config() -> dict:
    return {
        "data": {"kind": "synthetic", "vocab_size": 5, "seq_len": 4},
        "model": {"kind": "mlp", "hidden": 16, "layers": 1},
        "method": {"kind": "diffusion", "transition": "uniform", "schedule": "cosine",
                   "num_steps": 10},
        "train": {"steps": 3, "lr": 1e-3, "betas": [0.8, 0.99]},
    }


def write(tmp_path, raw) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_load_builds_typed_sections(tmp_path):
    cfg = load_config(write(tmp_path, raw_config()))
    assert cfg.data_kind == "synthetic" and cfg.data.vocab_size == 5
    assert cfg.model.hidden == 16 and cfg.method.num_steps == 10
    assert cfg.train.betas == (0.8, 0.99) and isinstance(cfg.train.betas, tuple)
    assert cfg.train.batch_size == TrainConfig().batch_size  # default kept


def test_dump_round_trips(tmp_path):
    cfg = load_config(write(tmp_path, raw_config()), ["train.eval_steps=5"])
    path = tmp_path / "resolved.yaml"
    dump_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert dump_config(again) == path.read_text()


def test_unknown_key_names_key_and_section():
    raw = raw_config()
    raw["model"]["hiden"] = 3
    with pytest.raises(ValueError, match=r"unknown key 'hiden' in section 'model'"):
        config_from_dict(raw)


def test_wrong_type_names_key_expected_and_given():
    raw = raw_config()
    raw["train"]["steps"] = "many"
    with pytest.raises(ValueError, match=r"train\.steps: expected int, got str 'many'"):
        config_from_dict(raw)
    raw = raw_config()
    raw["train"]["compile"] = 1
    with pytest.raises(ValueError, match=r"train\.compile: expected bool, got int"):
        config_from_dict(raw)
    raw = raw_config()
    raw["train"]["betas"] = [0.9]
    with pytest.raises(ValueError, match=r"train\.betas"):
        config_from_dict(raw)
    raw = raw_config()
    raw["method"]["transition"] = "gaussain"
    with pytest.raises(ValueError, match=r"method\.transition"):
        config_from_dict(raw)


def test_ints_and_exponent_strings_accepted_for_floats():
    raw = raw_config()
    raw["train"]["lr"] = 1
    raw["train"]["eps"] = "1e-6"  # YAML 1.1 reads 1e-6 as a string
    cfg = config_from_dict(raw)
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.eps == 1e-6


def test_overrides_apply_and_are_checked(tmp_path):
    path = write(tmp_path, raw_config())
    cfg = load_config(path, ["train.lr=2e-3", "model.layers=4", "train.eval_steps=null"])
    assert cfg.train.lr == 2e-3 and cfg.model.layers == 4 and cfg.train.eval_steps is None
    with pytest.raises(ValueError, match=r"model\.layers: expected int"):
        load_config(path, ["model.layers=2.5"])
    with pytest.raises(ValueError, match="unknown key 'nope' in section 'train'"):
        load_config(path, ["train.nope=1"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_config(path, ["lr=1"])
    with pytest.raises(ValueError, match="unknown section"):
        apply_overrides(raw_config(), ["optim.lr=1"])


def test_unknown_kind_lists_known_kinds():
    raw = raw_config()
    raw["model"]["kind"] = "resnet"
    with pytest.raises(ValueError, match=r"unknown model kind 'resnet'; known: .*mlp"):
        config_from_dict(raw)
    with pytest.raises(ValueError, match="unknown data kind"):
        lookup("data", "imagenet")


def test_missing_kind_and_bad_values():
    raw = raw_config()
    del raw["method"]["kind"]
    with pytest.raises(ValueError, match="'method' needs a 'kind'"):
        config_from_dict(raw)
    raw = raw_config()
    raw["train"]["steps"] = 0
    with pytest.raises(ValueError, match="train.steps must be at least 1"):
        config_from_dict(raw)
    raw = raw_config()
    raw["extra"] = {}
    with pytest.raises(ValueError, match="unknown config section"):
        config_from_dict(raw)


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)
