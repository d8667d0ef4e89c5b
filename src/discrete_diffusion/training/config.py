"""Run configuration: a preset YAML with sections data / model / method / train.

The data, model and method sections each name a registry `kind`; their other keys are checked
against that kind's `Config` dataclass, the train section against `TrainConfig`. Unknown keys,
wrong types, values outside a `Literal` and non-finite floats are one-line errors. A field whose
metadata holds `kinds` (a kind name -> dataclass table, e.g. `method.transition`) takes a nested
mapping `{kind: ..., option: ...}` checked the same way against its kind's dataclass; a kind name
alone stands for `{kind: name}`. A kind's `Config` may define `upgrade(values) -> values` to
read sections written by older versions.

A preset may name a `base` preset (a path relative to its own folder; bases may have bases):
its sections are merged key by key into the base's, the preset winning, so that a preset shows
only what it changes. Dotted overrides (`train.lr=1e-3`, `method.transition.knn=3`) are parsed
as YAML scalars and go through the same checks. `RunConfig.to_dict()` is the resolved config;
`dump_config` writes it and `load_config` reads it back unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from discrete_diffusion.training import registry

SECTIONS = ("data", "model", "method")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping of one run (the `train` section).

    Attributes:
        steps: optimizer updates in total.
        batch_size: global examples per update (split evenly over processes, and over
            `grad_accum` micro-batches).
        lr, warmup_steps: peak learning rate, reached linearly over `warmup_steps` updates.
        weight_decay, betas, eps: AdamW (weight_decay 0 is Adam).
        grad_clip: max global gradient norm (0 = no clipping).
        ema_decay: decay of the EMA of the weights (0 = off); evaluation and sampling use the
            EMA weights when on.
        grad_accum: micro-batches per update.
        seed: seeds data order, diffusion noise and initial weights.
        log_every: updates between metric lines (and the progress bar's refresh).
        eval_every: updates between bound evaluations (0 = never) on `eval_examples` examples of
            the validation split with `eval_steps` inference steps (None = all T).
        sample_every, num_samples: updates between sample dumps (0 = never), and how many.
        ckpt_every, keep_checkpoints: updates between checkpoints (a final one is always
            written), and how many to keep.
        device: "auto" (cuda when available), "cpu" or "cuda".
        precision: "fp32" or "bf16" (autocast on CUDA only).
        compile: wrap the model in torch.compile.
        max_consecutive_skips: stop with an error after this many updates in a row were
            skipped as non-finite (gradient norm, weights or optimizer state); 0 = never stop.
    """

    steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    grad_accum: int = 1
    seed: int = 0
    log_every: int = 50
    eval_every: int = 1000
    eval_examples: int = 256
    eval_steps: int | None = None
    sample_every: int = 0
    num_samples: int = 8
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    max_consecutive_skips: int = 10

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "grad_accum", "log_every", "keep_checkpoints")
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be at least 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "eval_every", "sample_every", "ckpt_every", "lr",
                    "weight_decay", "grad_clip", "eval_examples", "num_samples",
                    "max_consecutive_skips"):
            if getattr(self, key) < 0:
                raise ValueError(f"train.{key} must not be negative, got {getattr(self, key)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ValueError(f"train.eval_steps must be None or positive, got {self.eval_steps}")


@dataclass
class RunConfig:
    """A validated run: the kind and `Config` instance of each registry, and `train`."""

    data_kind: str
    data: Any
    model_kind: str
    model: Any
    method_kind: str
    method: Any
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (tuples as lists), the form written to YAML and JSON."""
        out = {s: {"kind": getattr(self, f"{s}_kind"), **_plain(getattr(self, s))}
               for s in SECTIONS}
        out["train"] = _plain(self.train)
        return out


def _plain(obj: Any) -> dict:
    def convert(v: Any) -> Any:
        return [convert(x) for x in v] if isinstance(v, (tuple, list)) else v
    return {k: convert(v) for k, v in dataclasses.asdict(obj).items()}


# ----- type checking -----------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return "None"
    if typing.get_args(tp):
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _non_finite(value: Any) -> bool:
    """Whether `value` is (or holds, or spells) an infinite or NaN float."""
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    return isinstance(value, float) and not math.isfinite(value)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """`value` checked against the annotation `tp` (ints accepted for floats, lists for tuples);
    raises ValueError naming `where`, the expected and the given type."""
    ok, result = _try(value, tp)
    if not ok:
        if _non_finite(value):
            raise ValueError(f"{where}: must be a finite number, got {value!r}")
        raise ValueError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} "
                         f"{value!r}")
    return result


def _try(value: Any, tp: Any) -> tuple[bool, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True, value
    if origin in (Union, types.UnionType):
        for arg in args:
            ok, result = _try(value, arg)
            if ok:
                return True, result
        return False, None
    if tp is type(None):
        return value is None, None
    if origin is Literal:
        return value in args, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, str) and _NUMBER.match(value):  # YAML 1.1 reads 1e-3 as a string
            value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)  # nan slips through range checks (nan < 0 is False)
        return ok, float(value) if ok else None
    if tp is str:
        return isinstance(value, str), value
    if origin in (tuple, list):
        return _try_sequence(value, origin, args)
    if origin is dict or tp is dict:
        return isinstance(value, dict), value
    return isinstance(value, tp), value


def _try_sequence(value: Any, origin: type, args: tuple) -> tuple[bool, Any]:
    if not isinstance(value, (list, tuple)):
        return False, None
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            return False, None
        types_ = args
    else:
        types_ = (args[0] if args else Any,) * len(value)
    items = [_try(v, t) for v, t in zip(value, types_)]
    if not all(ok for ok, _ in items):
        return False, None
    return True, origin(r for _, r in items)


def build_section(cls: type, values: dict, section: str) -> Any:
    """An instance of the dataclass `cls` from `values`, each key checked (a field with `kinds`
    metadata through `build_kinded`)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    checked = {}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"unknown key {key!r} in section {section!r} (known: "
                             f"{', '.join(sorted(fields))})")
        kinds = fields[key].metadata.get("kinds")
        if kinds is None:
            checked[key] = _coerce(value, hints[key], f"{section}.{key}")
        else:
            checked[key] = build_kinded(kinds, value, _default(fields[key]).kind,
                                        f"{section}.{key}")
    return cls(**checked)


def build_kinded(kinds: dict[str, type], value: Any, default_kind: str, where: str) -> Any:
    """The dataclass `kinds[kind]` from a mapping `{kind: ..., option: ...}` (no kind: the
    default kind) or from a kind name alone (its defaults), each option checked."""
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a kind name or a mapping with a kind, got "
                         f"{type(value).__name__} {value!r}")
    kind = value.get("kind", default_kind)
    if kind not in kinds:
        raise ValueError(f"{where}: unknown kind {kind!r}; known: {', '.join(sorted(kinds))}")
    return build_section(kinds[kind], {**value, "kind": kind}, where)


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


# ----- building, overrides, files ----------------------------------------------------------
def config_from_dict(raw: dict) -> RunConfig:
    """Validate a nested dict (as read from YAML) into a `RunConfig`."""
    if not isinstance(raw, dict):
        raise ValueError("a config must be a mapping with sections data, model, method, train")
    unknown = set(raw) - {*SECTIONS, "train"}
    if unknown:
        raise ValueError(f"unknown config section(s) {sorted(unknown)}; known: "
                         f"{', '.join((*SECTIONS, 'train'))}")
    parts: dict[str, Any] = {}
    for section in SECTIONS:
        values = dict(raw.get(section) or {})
        if "kind" not in values:
            raise ValueError(f"config section {section!r} needs a 'kind'")
        kind = values.pop("kind")
        parts[f"{section}_kind"] = kind
        cls = registry.config_class(section, kind)
        if hasattr(cls, "upgrade"):  # keys written by older versions, translated
            values = cls.upgrade(values)
        parts[section] = build_section(cls, values, section)
    parts["train"] = build_section(TrainConfig, dict(raw.get("train") or {}), "train")
    return RunConfig(**parts)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """A copy of `raw` with each `section.key=value` or `section.key.option=value` applied
    (value parsed as a YAML scalar; a kind name on the way, `transition: uniform`, is read as
    the mapping `{kind: uniform}` it stands for)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        path = key.split(".")
        if not sep or len(path) < 2 or not all(path):
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        if path[0] not in (*SECTIONS, "train"):
            raise ValueError(f"override {item!r}: unknown section {path[0]!r}")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: value is not valid YAML") from err
        node = out
        for depth, name in enumerate(path[:-1]):
            child = node.get(name)
            if isinstance(child, str) and depth > 0:
                child = {"kind": child}
            if not isinstance(child, (dict, type(None))):
                raise ValueError(f"override {item!r}: {'.'.join(path[:depth + 1])} is not a "
                                 f"mapping")
            node[name] = child = dict(child or {})
            node = child
        node[path[-1]] = value
    return out


def merge_presets(base: dict, child: dict) -> dict:
    """The sections of `child` merged key by key into those of `base`, `child` winning; a
    section or nested mapping that names another `kind` than the base's replaces it whole."""
    out = dict(base)
    for name, section in child.items():
        out[name] = _merge(base.get(name), section or {})
    return out


def _merge(base: Any, child: Any) -> Any:
    if not isinstance(child, dict) or not isinstance(base, (dict, str)):
        return child
    if isinstance(base, str):  # `transition: uniform` stands for {kind: uniform}
        base = {"kind": base}
    if child.get("kind", base.get("kind")) != base.get("kind"):
        return dict(child)
    return {**base, **{key: _merge(base.get(key), value) for key, value in child.items()}}


def read_yaml(path: str | Path) -> dict:
    """The sections of a config file, with those of its `base` chain merged in
    (`merge_presets`); a missing or malformed file and a chain that loops are one-line errors."""
    return _read_chain(Path(path), ())


def _read_chain(path: Path, seen: tuple[Path, ...]) -> dict:
    if not path.is_file():
        where = f" (base of {seen[-1]})" if seen else ""
        raise FileNotFoundError(f"config file not found: {path}{where}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: "
                         f"{str(err).splitlines()[0]}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path} does not hold a mapping of sections")
    if "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str) or not base:
        raise ValueError(f"config file {path}: base must be a file name, got {base!r}")
    chain = (*seen, path)
    base_path = path.parent / base
    if base_path.resolve() in {p.resolve() for p in chain}:
        raise ValueError(f"config file {path}: base chain loops back to {base_path} "
                         f"({' -> '.join(p.name for p in (*chain, base_path))})")
    return merge_presets(_read_chain(base_path, chain), raw)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a preset YAML, apply dotted overrides and validate."""
    return config_from_dict(apply_overrides(read_yaml(path), overrides or []))


def dump_config(config: RunConfig, path: str | Path | None = None) -> str:
    """The resolved config as YAML (written to `path` atomically when given)."""
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    if path is not None:
        from discrete_diffusion.files import atomic_write_text

        atomic_write_text(Path(path), text)
    return text
