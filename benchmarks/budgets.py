"""What the CPU-budget benchmarks share: a preset's Trainer with its periodic work switched off.

Benchmarks train by calling `Trainer.train_step` until a budget of process CPU seconds is spent,
so the run itself must not evaluate, sample or checkpoint on its own schedule.
"""

from __future__ import annotations

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
