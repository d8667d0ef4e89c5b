"""Checkpoints: safetensors for tensors, JSON for the rest; loading never runs code.

A checkpoint of step N in `RUN_DIR/checkpoints/` is

    step_0000N.safetensors        model weights (names of `model.state_dict()`)
    step_0000N.ema.safetensors    EMA weights (only when EMA is on)
    step_0000N.optim.safetensors  optimizer tensors, flattened as "<param id>.<name>"
    step_0000N.json               step, config, kinds, shapes, RNG and data-iterator states,
                                  the optimizer's non-tensor state; written last
    latest.json                   {"name": "step_0000N", "step": N}

Every file goes to a temporary name first and then `os.replace`, so a killed run leaves either
the old or the new checkpoint, never half of one. Re-saving a step that already exists writes
its tensors under new names (`step_0000N.r1.safetensors`, ...), which the step JSON lists under
"files"; the JSON switches to them last and the old files are removed only then, so a re-save
that fails part-way leaves the previous checkpoint of that step whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from discrete_diffusion.files import atomic_path, atomic_write_text

STEP_DIGITS = 6


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path                       # the step JSON
    run_dir: Path
    step: int
    state: dict                      # the step JSON
    weights: dict[str, Tensor]
    ema: dict[str, Tensor] | None
    optimizer: dict | None           # a torch optimizer state_dict, or None if not loaded


def step_name(step: int) -> str:
    return f"step_{step:0{STEP_DIGITS}d}"


TENSOR_FILES = {"weights": ".safetensors", "ema": ".ema.safetensors",
                "optim": ".optim.safetensors"}


def _save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    # Clones break storage sharing (tied weights), which safetensors refuses to save.
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp))


def _load_tensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file missing: {path}")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for truncated files
        raise ValueError(f"checkpoint file {path} is corrupt or truncated "
                         f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                         ) from err


def flatten_optimizer(state_dict: dict) -> tuple[dict[str, Tensor], dict]:
    """Split a torch optimizer state_dict into tensors {"<id>.<name>": Tensor} and a JSON part."""
    tensors, other = {}, {}
    for pid, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"{pid}.{name}"] = value
            else:
                other.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "other": other}


def unflatten_optimizer(tensors: dict[str, Tensor], meta: dict) -> dict:
    """Inverse of `flatten_optimizer`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for pid, entries in meta.get("other", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(ckpt_dir: Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict, ema: nn.Module | None = None, keep: int = 3) -> Path:
    """Write the checkpoint of `step` and drop all but the newest `keep`; returns the JSON path.

    Args:
        state: JSON-able extras (config, kinds, RNG and data states); step, shapes, the tensor
            file names and the optimizer's non-tensor state are added here.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = step_name(step)
    json_path = ckpt_dir / f"{name}.json"
    previous = tensor_files(json_path) if json_path.is_file() else {}
    stem = _fresh_stem(ckpt_dir, name) if previous else name
    files = {key: stem + suffix for key, suffix in TENSOR_FILES.items()
             if key != "ema" or ema is not None}
    weights = model.state_dict()
    _save_tensors(weights, ckpt_dir / files["weights"])
    if ema is not None:
        _save_tensors(ema.state_dict(), ckpt_dir / files["ema"])
    opt_tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
    _save_tensors(opt_tensors, ckpt_dir / files["optim"])
    record = {**state, "step": step, "has_ema": ema is not None, "optimizer": opt_meta,
              "files": files, "shapes": {k: list(v.shape) for k, v in weights.items()}}
    atomic_write_text(json_path, json.dumps(record))  # the switch to the new set
    atomic_write_text(ckpt_dir / "latest.json", json.dumps({"name": name, "step": step}))
    for old in ckpt_dir.glob(f"{name}.*safetensors"):  # the replaced set, failed attempts
        if old.name not in files.values():
            old.unlink(missing_ok=True)
    prune_checkpoints(ckpt_dir, keep)
    return json_path


def _fresh_stem(ckpt_dir: Path, name: str) -> str:
    """`name.rK` with the smallest K no file of the directory uses yet."""
    k = 1
    while any(ckpt_dir.glob(f"{name}.r{k}.*")):
        k += 1
    return f"{name}.r{k}"


def tensor_files(json_path: Path, state: dict | None = None) -> dict[str, str]:
    """{"weights" | "ema" | "optim": file name} of the checkpoint whose step JSON is
    `json_path` (checkpoints written before the "files" entry use the plain names)."""
    if state is None:
        try:
            state = json.loads(json_path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            state = {}
    files = state.get("files") if isinstance(state, dict) else None
    if isinstance(files, dict):
        return {k: Path(str(v)).name for k, v in files.items()}  # names inside ckpt_dir only
    stem = json_path.name.removesuffix(".json")
    return {key: stem + suffix for key, suffix in TENSOR_FILES.items()}


def list_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, JSON path) of every complete checkpoint in `ckpt_dir`, oldest first."""
    found = []
    for path in ckpt_dir.glob("step_*.json"):
        digits = path.stem.removeprefix("step_")
        if digits.isdigit():
            found.append((int(digits), path))
    return sorted(found)


def prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    for _, path in list_checkpoints(ckpt_dir)[:-keep]:
        files = tensor_files(path)
        path.unlink()  # the JSON first: a half-deleted checkpoint is never listed
        for name in files.values():
            (ckpt_dir / name).unlink(missing_ok=True)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The step JSON of `path`: a run folder (its latest checkpoint), its `checkpoints/` folder,
    or any file of one checkpoint (`step_N.json`, `step_N.safetensors`, ...)."""
    path = Path(path)
    if path.is_dir():
        ckpt_dir = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        latest = ckpt_dir / "latest.json"
        if latest.is_file():
            try:
                name = json.loads(latest.read_text())["name"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"checkpoint pointer {latest} is corrupt") from err
            return ckpt_dir / f"{name}.json"
        found = list_checkpoints(ckpt_dir)
        if not found:
            raise FileNotFoundError(f"no checkpoint found in {path}")
        return found[-1][1]
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    stem = path.name.split(".")[0]
    if not stem.startswith("step_"):
        raise ValueError(f"{path} is not a checkpoint file (expected step_N.json or "
                         f"step_N.safetensors) nor a run folder")
    return path.with_name(stem + ".json")


def run_dir_of(json_path: Path) -> Path:
    """The run folder holding a checkpoint (the parent of `checkpoints/`)."""
    parent = json_path.parent
    return parent.parent if parent.name == "checkpoints" else parent


def load_checkpoint(path: str | os.PathLike, optimizer: bool = False) -> Checkpoint:
    """Read a checkpoint (see `resolve_checkpoint` for `path`); `optimizer` also reads the
    optimizer tensors. Corrupt or truncated files are a one-line ValueError."""
    json_path = resolve_checkpoint(path)
    if not json_path.is_file():
        raise FileNotFoundError(f"checkpoint state missing: {json_path}")
    try:
        state = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"checkpoint file {json_path} is corrupt or truncated") from err
    files = tensor_files(json_path, state)
    weights = _load_tensors(json_path.with_name(files["weights"]))
    ema = (_load_tensors(json_path.with_name(files["ema"])) if state.get("has_ema") else None)
    opt = None
    if optimizer:
        tensors = _load_tensors(json_path.with_name(files["optim"]))
        opt = unflatten_optimizer(tensors, state["optimizer"])
    return Checkpoint(path=json_path, run_dir=run_dir_of(json_path), step=int(state["step"]),
                      state=state, weights=weights, ema=ema, optimizer=opt)


def load_weights(model: nn.Module, weights: dict[str, Tensor], source: str | Path) -> None:
    """Copy `weights` into `model`; a missing, extra or mis-shaped parameter is a one-line
    ValueError naming it and `source`."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    if missing or extra:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise ValueError(f"checkpoint {source} does not fit this model: {what} "
                         f"({len(missing)} missing, {len(extra)} unexpected parameters)")
    for key, value in own.items():
        if tuple(value.shape) != tuple(weights[key].shape):
            raise ValueError(f"checkpoint {source} does not fit this model: parameter {key!r} "
                             f"has shape {list(weights[key].shape)} in the checkpoint but "
                             f"{list(value.shape)} in the model")
    model.load_state_dict(weights)
