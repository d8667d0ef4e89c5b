"""`d3pm eval`: the bound of a trained model on a data split, with standard errors.

    d3pm eval --checkpoint RUN_DIR_OR_FILE --data PATH --split test --steps continuous 1000 20
              [--max-examples N] [--batch-size B] [--json OUT.json] [--time-samples N]
              [--seed S]

--steps takes step counts and, for a continuous-time method, the word `continuous` (the
continuous-time bound, a Monte-Carlo estimate; its JSON entries carry "steps": "continuous").
Defaults: all T steps, the whole split, batch size 32, seed 0, EMA weights when the run has them.
The JSON holds "results", one entry per step count: steps, bits_per_token, stderr,
num_sequences (+ bits_per_char for characters, perplexity for tokens) or, for images, steps,
bits_per_dim, stderr, num_images; with --time-samples N also sample_seconds_per_example
{"mean", "std", "runs"} (batch size 1), and "skipped_updates", the training updates of the run
that were skipped as non-finite (also printed after the table; a warning on stderr when they are
more than 1% of the updates).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from discrete_diffusion.cli.common import add_progress_flag, device_of
from discrete_diffusion.files import atomic_write_text, writable_file
from discrete_diffusion.progress import progress_bar


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate the likelihood bound of a trained model")
    p.add_argument("--checkpoint", required=True, help="run folder (latest) or checkpoint file")
    p.add_argument("--data", help="data argument of the run's data kind")
    p.add_argument("--split", default="test", help="data split (default test)")
    p.add_argument("--steps", type=parse_steps, nargs="+",
                   help="inference step counts, or 'continuous' for the continuous-time bound "
                        "of a continuous-time method (default: T, all steps)")
    p.add_argument("--max-examples", type=int, help="evaluate the first N examples only")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", type=Path, help="write the results to this JSON file")
    p.add_argument("--time-samples", type=int, default=0,
                   help="also time N samples at batch size 1 for each step count")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte-Carlo noise")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add_progress_flag(p)
    p.set_defaults(func=run)


def parse_steps(value: str) -> int | str:
    """An --steps entry: an integer, or the word "continuous"."""
    if value == "continuous":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an integer or 'continuous', got {value!r}") from None


def check_steps(steps_list: list[int | str], method, kind: str) -> None:
    """Each step count must be in 1..T; "continuous" needs a continuous-time method."""
    for steps in steps_list:
        if steps == "continuous":
            if not getattr(method, "continuous_time", False):
                raise ValueError(f"--steps continuous: method {kind!r} has no continuous-time "
                                 f"bound; give step counts")
        elif not 1 <= steps <= method.num_steps:
            raise ValueError(f"--steps {steps}: the number of inference steps must be in "
                             f"1..T = {method.num_steps}")


def check_data_matches(data, info) -> None:
    """The data must be what the model was trained on: same vocabulary and example shape."""
    if data.num_classes != info.num_classes or tuple(data.example_shape) != info.example_shape:
        raise ValueError(f"data ({data.num_classes} classes, shape {tuple(data.example_shape)}) "
                         f"does not match the run ({info.num_classes} classes, shape "
                         f"{info.example_shape})")


def run(args: argparse.Namespace) -> int:
    from discrete_diffusion.evaluation.bound import evaluate_bound, named_result
    from discrete_diffusion.evaluation.timing import time_sampling
    from discrete_diffusion.training.builders import build_data, load_trained

    if args.batch_size < 1 or (args.max_examples is not None and args.max_examples < 1):
        raise ValueError("--batch-size and --max-examples must be positive")
    if args.json is not None:
        writable_file(args.json)  # before the evaluation, not after it
    device = device_of(args.device)
    trained = load_trained(args.checkpoint, device)
    data = build_data(trained.config, args.data)
    check_data_matches(data, trained.info)
    steps_list = args.steps or [None]
    check_steps(args.steps or [], trained.method, trained.config.method_kind)
    total = min(data.num_examples(args.split), args.max_examples or 10**18)
    gen = torch.Generator(device).manual_seed(args.seed)
    batches = data.eval_batches(args.split, args.batch_size, max_examples=args.max_examples)
    with progress_bar(total=total, desc=f"eval {args.split}", unit="example",
                      leave=False) as bar:
        entries = evaluate_bound(trained.method, trained.model, batches, steps_list, gen,
                                 unit=trained.info.unit, device=device,
                                 progress=lambda n: bar.update(n - bar.n))
    results = []
    for entry in entries:
        result = named_result({**entry, "steps": entry["steps"] or trained.method.num_steps})
        if args.time_samples > 0:
            timed_steps = None if entry["steps"] == "continuous" else entry["steps"]
            mean, std = time_sampling(trained.method, trained.model, args.time_samples,
                                      steps=timed_steps, generator=gen)
            result["sample_seconds_per_example"] = {"mean": mean, "std": std,
                                                    "runs": args.time_samples}
        results.append(result)
    print_table(results, trained.info.unit)
    skipped, step = int(trained.checkpoint.state.get("skipped", 0)), trained.checkpoint.step
    print(f"checkpoint {trained.checkpoint.path}: step {step}, {skipped} skipped updates")
    if skipped > 0.01 * step:
        print(f"warning: {skipped} of the {step} training updates of this checkpoint were "
              f"skipped as non-finite", file=sys.stderr)
    if args.json is not None:
        record = {"checkpoint": str(trained.checkpoint.path), "step": step,
                  "split": args.split, "unit": trained.info.unit, "ema": trained.uses_ema,
                  "seed": args.seed, "skipped_updates": skipped, "results": results}
        atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")
    return 0


def print_table(results: list[dict], unit: str) -> None:
    key = "bits_per_dim" if unit == "dim" else "bits_per_token"
    count = "num_images" if unit == "dim" else "num_sequences"
    header = f"{'steps':>10}  {'bits/' + unit:>12}  {'stderr':>9}  {count:>13}"
    extra = "perplexity" in results[0]
    timed = "sample_seconds_per_example" in results[0]
    header += f"  {'perplexity':>11}" * extra + f"  {'s/sample':>10}" * timed
    print(header)
    for r in results:
        stderr = f"{r['stderr']:9.4f}" if r["stderr"] is not None else f"{'n/a':>9}"
        line = f"{r['steps']:>10}  {r[key]:12.4f}  {stderr}  {r[count]:>13}"
        if extra:
            line += f"  {r['perplexity']:11.3f}"
        if timed:
            line += f"  {r['sample_seconds_per_example']['mean']:10.4f}"
        print(line)
