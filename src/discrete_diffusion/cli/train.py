"""`d3pm train`: train a model from a preset config.

    d3pm train --config configs/NAME.yaml --data PATH --out RUN_DIR [--steps N] [--resume]
               [--allow-data-change] [section.key=value ...]

With --resume and no --config, the run folder's own config.yaml is used (overrides still apply,
e.g. a larger train.steps); without --data, the data the run recorded (`RUN_DIR/data/
source.json`). Other data is refused unless --allow-data-change, which the run records.
Ctrl-C or SIGTERM saves a checkpoint at the end of the current step and exits (130 / 143);
--resume continues exactly. A second Ctrl-C aborts at once without saving.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from discrete_diffusion.cli.common import add_progress_flag
from discrete_diffusion.files import writable_folder
from discrete_diffusion.training.builders import build_data
from discrete_diffusion.training.config import apply_overrides, config_from_dict, read_yaml
from discrete_diffusion.training.data_identity import data_for_run


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a model from a preset config")
    p.add_argument("--config", type=Path, help="preset YAML (default with --resume: the run's)")
    p.add_argument("--data", help="data argument of the data kind (file, folder, 'digits', ...)")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--steps", type=int, help="total optimizer steps (overrides train.steps)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (on its recorded data unless --data)")
    p.add_argument("--allow-data-change", action="store_true",
                   help="with --resume: continue on data other than the run's (recorded)")
    add_progress_flag(p)
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="config overrides, e.g. train.lr=1e-3")
    p.set_defaults(func=run)


def resolve_config(args: argparse.Namespace):
    """The config of a train command: --config (or the run's own with --resume) + overrides."""
    if args.config is not None:
        raw = read_yaml(args.config)
    elif args.resume:
        raw = read_yaml(args.out / "config.yaml")
    else:
        raise ValueError("--config is required (unless --resume continues a run)")
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    return config_from_dict(apply_overrides(raw, overrides))


def run(args: argparse.Namespace) -> int:
    from discrete_diffusion.training.interrupt import TrainingInterrupted
    from discrete_diffusion.training.trainer import Trainer  # torch-heavy: import on use

    writable_folder(args.out, create=False)  # fail now, not at the first checkpoint
    config = resolve_config(args)
    data_arg, record = data_for_run(args.out, args.data, resume=args.resume,
                                    allow_change=args.allow_data_change)
    data = build_data(config, data_arg)
    trainer = Trainer(config, data, args.out, resume=args.resume,
                      progress=not args.no_progress, data_record=record)
    try:
        summary = trainer.fit()
    except TrainingInterrupted as stop:
        if trainer.main:
            print(stop, file=sys.stderr)
        return stop.exit_code
    if trainer.main:
        shown = {k: v for k, v in summary.get("train", {}).items()
                 if k in ("loss", "bits_per_unit")}
        if summary.get("eval"):
            shown["validation_bits_per_unit"] = summary["eval"]["bits_per_unit"]
        print(f"trained to step {summary['step']} in {args.out} ({summary['skipped']} skipped "
              f"updates): {json.dumps(shown)}")
    return 0
