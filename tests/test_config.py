"""Config loading, validation, overrides and the YAML round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from discrete_diffusion.methods.diffusion import (
    AbsorbingOptions,
    Config,
    GaussianOptions,
    MaskUniformOptions,
    NearestNeighborOptions,
    UniformOptions,
)
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


# ----- presets and `base` ------------------------------------------------------------------
PRESETS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_every_preset_loads_validates_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    for section in ("data", "model", "method"):
        lookup(section, getattr(cfg, f"{section}_kind"))
    dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg
    assert "base" not in yaml.safe_load((tmp_path / "resolved.yaml").read_text())


def test_presets_are_found():
    assert len(PRESETS) >= 20


def test_text8_presets_differ_only_where_they_say():
    paper = load_config(PRESETS[0].parent / "text8-absorbing.yaml")
    small = load_config(PRESETS[0].parent / "text8-uniform-cpu-small.yaml")  # a chain of two
    assert small.method.transition == UniformOptions() and small.method.loss == "vb"
    assert small.model.num_layers == 2 and small.train.steps == 2000
    assert small.data == dataclasses.replace(paper.data, path="enwiki")
    assert small.train.eval_steps == paper.train.eval_steps == 20  # from the root


def write_preset(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_merges_key_by_key_child_winning(tmp_path):
    write_preset(tmp_path, "root.yaml", yaml.safe_dump(raw_config()))
    child = write_preset(tmp_path, "sub/child.yaml",
                         "base: ../root.yaml\ntrain:\n  lr: 5.0e-3\n"
                         "method:\n  transition: {kind: gaussian, bands: 2}\n")
    cfg = load_config(child)
    assert cfg.train.lr == 5e-3 and cfg.train.steps == 3 and cfg.train.betas == (0.8, 0.99)
    assert cfg.method.transition == GaussianOptions(bands=2)
    assert cfg.method.schedule == "cosine" and cfg.method.num_steps == 10
    assert cfg.model.hidden == 16  # a section the child leaves out


def test_base_chains_and_a_new_kind_replaces_the_section(tmp_path):
    write_preset(tmp_path, "a.yaml", yaml.safe_dump(raw_config()))
    write_preset(tmp_path, "b.yaml", "base: a.yaml\nmethod:\n  transition: nearest_neighbor\n")
    c = write_preset(tmp_path, "c.yaml",
                     "base: b.yaml\nmethod:\n  transition: {knn: 2}\ntrain: {steps: 7}\n")
    cfg = load_config(c, ["train.seed=4"])
    assert cfg.method.transition == NearestNeighborOptions(knn=2)  # kind from b, knn from c
    assert (cfg.train.steps, cfg.train.lr, cfg.train.seed) == (7, 1e-3, 4)
    ar = write_preset(tmp_path, "ar.yaml", "base: c.yaml\nmethod: {kind: autoregressive}\n")
    assert load_config(ar).method_kind == "autoregressive"  # no diffusion keys carried over


def test_base_cycle_and_missing_file_are_one_line_errors(tmp_path):
    write_preset(tmp_path, "a.yaml", "base: b.yaml\n")
    write_preset(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ValueError, match=r"base chain loops back to .*a\.yaml \(a\.yaml -> "
                                         r"b\.yaml -> a\.yaml\)"):
        load_config(tmp_path / "a.yaml")
    write_preset(tmp_path, "self.yaml", "base: self.yaml\n")
    with pytest.raises(ValueError, match="loops back"):
        load_config(tmp_path / "self.yaml")
    write_preset(tmp_path, "orphan.yaml", "base: gone.yaml\n")
    with pytest.raises(FileNotFoundError, match=r"config file not found: .*gone\.yaml "
                                                r"\(base of .*orphan\.yaml\)"):
        load_config(tmp_path / "orphan.yaml")
    write_preset(tmp_path, "odd.yaml", "base: [a.yaml]\n")
    with pytest.raises(ValueError, match="base must be a file name"):
        load_config(tmp_path / "odd.yaml")


# ----- the nested transition mapping -------------------------------------------------------
def test_transition_name_is_shorthand_for_its_defaults():
    raw = raw_config()
    short = config_from_dict(raw)
    raw["method"]["transition"] = {"kind": "uniform"}
    assert config_from_dict(raw) == short and short.method.transition == UniformOptions()
    assert Config(transition="gaussian").transition == GaussianOptions()
    assert Config().transition == AbsorbingOptions()


def test_transition_options_are_checked_like_sections():
    raw = raw_config()
    raw["method"]["transition"] = {"kind": "uniform", "knn": 3}
    with pytest.raises(ValueError, match=r"unknown key 'knn' in section 'method\.transition' "
                                         r"\(known: kind\)"):
        config_from_dict(raw)
    raw["method"]["transition"] = {"kind": "nearest_neighbor", "knn": "three"}
    with pytest.raises(ValueError, match=r"method\.transition\.knn: expected int, got str"):
        config_from_dict(raw)
    raw["method"]["transition"] = {"kind": "mask_uniform", "uniform_schedule": "mi"}
    with pytest.raises(ValueError, match=r"method\.transition\.uniform_schedule: expected one "
                                         r"of 'linear', 'cosine', 'jsd', 'constant'"):
        config_from_dict(raw)
    raw["method"]["transition"] = 3
    with pytest.raises(ValueError, match=r"method\.transition: expected a kind name"):
        config_from_dict(raw)


def test_overrides_reach_nested_transition_keys(tmp_path):
    path = write(tmp_path, raw_config())  # transition: uniform (shorthand)
    cfg = load_config(path, ["method.transition.kind=nearest_neighbor",
                             "method.transition.knn=3"])
    assert cfg.method.transition == NearestNeighborOptions(knn=3)
    assert load_config(path, ["method.transition=gaussian"]).method.transition == \
        GaussianOptions()
    cfg = load_config(path, ["method.transition={kind: gaussian, bands: 2}"])
    assert cfg.method.transition == GaussianOptions(bands=2)
    with pytest.raises(ValueError, match=r"unknown key 'bands' in section 'method\.transition'"):
        load_config(path, ["method.transition.bands=2"])  # uniform has no bands
    with pytest.raises(ValueError, match=r"method\.num_steps is not a mapping"):
        load_config(path, ["method.num_steps.max=3"])
    with pytest.raises(ValueError, match=r"method\.schedule: expected one of"):
        load_config(path, ["method.schedule.kind=jsd"])


def test_resolved_config_uses_the_nested_form(tmp_path):
    raw = raw_config()
    raw["method"]["transition"] = "mask_uniform"
    text = dump_config(config_from_dict(raw))
    assert yaml.safe_load(text)["method"]["transition"] == {"kind": "mask_uniform",
                                                            "uniform_schedule": "cosine"}


def flat_method(transition: str, **flat) -> dict:
    """A method section as versions before the nested transition options wrote it."""
    return {"kind": "diffusion", "transition": transition, "schedule": "cosine",
            "num_steps": 10, "beta_start": 1e-4, "beta_stop": 0.02,
            "bands": None, "knn": 5, "uniform_schedule": "cosine", "loss": "hybrid",
            "hybrid_lambda": 0.01, "time_sampling": "uniform", **flat}


@pytest.mark.parametrize("transition,want", [
    ("uniform", UniformOptions()), ("absorbing", AbsorbingOptions()),
    ("gaussian", GaussianOptions(bands=7)),
    ("mask_uniform", MaskUniformOptions(uniform_schedule="jsd")),
    ("nearest_neighbor", NearestNeighborOptions(knn=3)),
])
def test_flat_transition_keys_of_older_configs_are_translated(transition, want):
    raw = raw_config()
    raw["method"] = flat_method(transition, bands=7, knn=3, uniform_schedule="jsd")
    cfg = config_from_dict(raw)
    assert cfg.method.transition == want
    assert cfg == config_from_dict(cfg.to_dict())
    assert "knn" not in cfg.to_dict()["method"]


def test_flat_key_contradicting_the_nested_one_is_an_error():
    raw = raw_config()
    raw["method"] = {**flat_method("nearest_neighbor", knn=3),
                     "transition": {"kind": "nearest_neighbor", "knn": 4}}
    with pytest.raises(ValueError, match=r"method\.knn = 3 contradicts "
                                         r"method\.transition\.knn = 4"):
        config_from_dict(raw)


# ----- value errors (issue 8) --------------------------------------------------------------
def test_wrong_literal_value_lists_the_allowed_values(tmp_path):
    path = write(tmp_path, raw_config())
    with pytest.raises(ValueError, match=r"^train\.precision: expected one of 'fp32', 'bf16', "
                                         r"got str 'fp64'$"):
        load_config(path, ["train.precision=fp64"])
    with pytest.raises(ValueError, match=r"^method\.transition: unknown kind 'nosuch'; known: "
                                         r"absorbing, gaussian, mask_uniform, nearest_neighbor, "
                                         r"uniform$"):
        load_config(path, ["method.transition=nosuch"])
    with pytest.raises(ValueError, match=r"^method\.schedule: expected one of 'linear', "):
        load_config(path, ["method.schedule=sqrt"])


@pytest.mark.parametrize("override", [
    "train.lr=.inf", "train.lr=1e999", "train.lr=-.inf", "train.lr=.nan", "train.lr=nan",
    "train.eps=inf", "train.ema_decay=.nan", "method.beta_start=.nan",
    "method.hybrid_lambda=1e400", "train.betas=[0.9, .inf]",
])
def test_non_finite_floats_are_refused(tmp_path, override):
    key = override.split("=")[0].replace(".", r"\.")
    with pytest.raises(ValueError, match=rf"^{key}: must be a finite number, got "):
        load_config(write(tmp_path, raw_config()), [override])
