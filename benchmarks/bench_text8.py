"""Table 1 at laptop scale: D3PM absorbing / uniform / NN and the autoregressive baseline on
text8-format data, each trained for the same budget of process CPU seconds.

    python benchmarks/bench_text8.py /path/to/text8-format.txt [--budget 360] [--threads 1]

For every CPU-small preset (configs/text8-*-cpu-small.yaml) the library's own Trainer runs
updates until `--budget` seconds of process CPU time (time.process_time: fair on a shared
machine) have been spent on training; then the bound is evaluated on the first
`--eval-examples` non-overlapping 256-character test chunks with 1000, 256 and 20 inference
steps (256 on the rounded grid t_i = round(i T / 256), as D3PM.timestep_grid gives; the
autoregressive likelihood is exact) and one example is sampled at batch size 1 to time it
(process CPU seconds, `--sample-runs` runs). Prints a table shaped like Table 1: bits/char
+- standard error (number of test sequences) and sample seconds per example.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from discrete_diffusion.evaluation.bound import evaluate_bound
from discrete_diffusion.training.trainer import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from budgets import preset_trainer, train_for  # noqa: E402

PRESETS = {
    "D3PM absorbing (L_lambda=0.01)": "text8-absorbing-cpu-small",
    "D3PM uniform (L_vb)": "text8-uniform-cpu-small",
    "D3PM NN (L_vb)": "text8-nn-cpu-small",
    "Transformer decoder (AR)": "text8-ar-cpu-small",
}
STEPS = (1000, 256, 20)


def train_for_budget(preset: str, data_path: str, budget: float, run_dir: Path,
                     seed: int, overrides: list[str]) -> tuple[Trainer, int, float]:
    """Train `preset` until `budget` CPU seconds; returns the trainer, updates and seconds.
    The data are prepared (and cached) before the clock starts: not charged to training."""
    trainer = preset_trainer(preset, data_path, run_dir, seed,
                             [f"data.path={data_path}", "train.device=cpu", *overrides])
    spent = train_for(trainer, budget)
    return trainer, trainer.step, spent


def cpu_sample_time(method, model, steps: int | None, runs: int, seed: int) -> tuple[float, float]:
    """Process CPU seconds to draw one example (after one warm-up draw): mean and std."""
    gen = torch.Generator().manual_seed(seed)
    method.sample(model, 1, steps=steps, generator=gen)
    times = []
    for _ in range(runs):
        start = time.process_time()
        method.sample(model, 1, steps=steps, generator=gen)
        times.append(time.process_time() - start)
    return statistics.fmean(times), statistics.stdev(times) if runs > 1 else 0.0


def bench_one(name: str, preset: str, args: argparse.Namespace, root: Path) -> list[dict]:
    trainer, updates, spent = train_for_budget(preset, args.data, args.budget, root / preset,
                                               args.seed, args.set)
    model, method, data = trainer.model.eval(), trainer.method, trainer.data
    is_ar = preset.startswith("text8-ar")
    steps_list = [None] if is_ar else list(STEPS)
    gen = torch.Generator().manual_seed(args.seed + 1)
    t0 = time.process_time()
    results = evaluate_bound(method, model, data.eval_batches("test", args.eval_batch,
                                                              max_examples=args.eval_examples),
                             steps_list, gen, unit="char")
    eval_cpu = time.process_time() - t0
    rows = []
    for res, steps in zip(results, steps_list):
        mean, std = cpu_sample_time(method, model, steps, args.sample_runs, args.seed + 2)
        rows.append({"model": name, "preset": preset, "steps": steps or data.seq_len,
                     "exact": is_ar, "bits_per_char": res["bits_per_unit"],
                     "stderr": res["stderr"], "num_sequences": res["count"],
                     "sample_cpu_s": mean, "sample_cpu_s_std": std, "updates": updates,
                     "train_cpu_s": spent, "eval_cpu_s": eval_cpu})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| Model | Model steps | NLL (bits/char) | test sequences | sample time (CPU s) "
             "| updates |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (-r["steps"], r["model"])):
        bound = "" if r["exact"] else "<= "
        err = f" +- {r['stderr']:.3f}" if r["stderr"] is not None else ""
        lines.append(f"| {r['model']} | {r['steps']} | {bound}{r['bits_per_char']:.3f}{err} | "
                     f"{r['num_sequences']} | {r['sample_cpu_s']:.3f} +- "
                     f"{r['sample_cpu_s_std']:.3f} | {r['updates']} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="text8-format file (a-z and space), e.g. enwiki-excerpt.txt")
    p.add_argument("--budget", type=float, default=360.0, help="training CPU seconds per model")
    p.add_argument("--eval-examples", type=int, default=32, help="test sequences evaluated")
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--sample-runs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", default=None, help="preset names to run (default all)")
    p.add_argument("--set", nargs="*", default=[], metavar="section.key=value",
                   help="config overrides applied to every preset (reported in the header)")
    p.add_argument("--runs", default=None, help="folder for the run folders (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not Path(args.data).is_file():
        print(f"error: data file not found: {args.data}", file=sys.stderr)
        return 2
    root = Path(args.runs) if args.runs else Path(tempfile.mkdtemp(prefix="bench_text8_"))
    print(f"# data {args.data}; budget {args.budget:.0f} CPU s per model; "
          f"{args.threads} thread(s); overrides {args.set or 'none'}; runs in {root}",
          flush=True)
    rows: list[dict] = []
    for name, preset in PRESETS.items():
        if args.only and preset not in args.only:
            continue
        rows += bench_one(name, preset, args, root)
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(math.isfinite(r["bits_per_char"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
