"""What the CPU-budget benchmarks share: a preset's Trainer with its periodic work switched off,
training for a budget of process CPU seconds, and running one process per preset in parallel.

Benchmarks train by calling `Trainer.train_step` until a budget of process CPU seconds is spent,
so the run itself must not evaluate, sample or checkpoint on its own schedule. Process CPU time
(time.process_time) is what a model gets, whatever else the machine runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def preset_trainer(preset: str, data, run_dir: Path, seed: int, overrides=(),
                   resume: bool = False):
    """The Trainer of configs/<preset>.yaml (with `overrides`, as `d3pm train --set`), steps
    unbounded and eval/sample/checkpoint intervals 0. `data`: the --data argument (str) or a
    built data source. `resume`: continue from run_dir's last checkpoint."""
    from discrete_diffusion.training.builders import build_data
    from discrete_diffusion.training.config import apply_overrides, config_from_dict, read_yaml
    from discrete_diffusion.training.trainer import Trainer

    raw = read_yaml(ROOT / "configs" / f"{preset}.yaml")
    raw["train"].update(steps=10**9, eval_every=0, sample_every=0, ckpt_every=0, seed=seed)
    config = config_from_dict(apply_overrides(raw, list(overrides)))
    source = build_data(config, data) if data is None or isinstance(data, str) else data
    return Trainer(config, source, run_dir, resume=resume, progress=False)


def train_for(trainer, budget: float, report: Callable[[int, float], None] | None = None) -> float:
    """Update `trainer` until `budget` process CPU seconds are spent; the seconds spent (the
    last update may overrun the budget). `report(updates, seconds)` about once a CPU-minute."""
    start = last = time.process_time()
    while time.process_time() - start < budget:
        trainer.train_step()
        if report is not None and time.process_time() - last > 60:
            last = time.process_time()
            report(trainer.step, last - start)
    return time.process_time() - start


def run_parallel(names: Iterable[str], launch: Callable[[str], subprocess.Popen],
                 result_path: Callable[[str], Path], jobs: int, poll: float = 5.0,
                 log_path: Callable[[str], Path] | None = None) -> list[dict]:
    """Start `launch(name)` for each name, `jobs` at a time; the JSON at `result_path(name)` of
    every process that exited 0 and wrote it (the others are reported on stderr, with
    `log_path(name)` when given)."""
    pending, running, results = list(names), {}, []
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            running[name] = launch(name)
        for name, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            path = result_path(name)
            if proc.returncode or not path.is_file():
                where = f", see {log_path(name)}" if log_path else ""
                print(f"{name}: failed (exit {proc.returncode}{where})", file=sys.stderr)
                continue
            results.append(json.loads(path.read_text()))
            print(f"done: {name}", file=sys.stderr, flush=True)
        time.sleep(poll)
    return results
