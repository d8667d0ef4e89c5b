"""Table 3 at CPU scale: the four D3PM image processes on CIFAR-10 at 16x16, equal CPU budgets.

    python benchmarks/bench_cifar_small.py OUT_DIR --data ../shared/data/cifar10-jpeg
        [--budget 1200] [--jobs 2] [--images 128] [--fid-samples 128] [--fid-reference 1000]
        [--only NAME ...] [--seed 0] [--reuse]
    python benchmarks/bench_cifar_small.py OUT_DIR --table [--plot PNG]
    python benchmarks/bench_cifar_small.py OUT_DIR --data PATH --oracle [--images 64]

Each configs/cifar10-*-cpu-small.yaml preset (16x16, 256 levels, 3 channels, T = 250) is
trained by the project's Trainer, one single-threaded process per preset, for the same budget
of process CPU seconds (time.process_time: other load on the machine does not change what a
model gets). The final weights are saved (OUT_DIR/<preset>/run, with run/train.json: budget,
seconds, updates; --reuse evaluates such a run again without retraining), then, with the EMA
weights:
    * the full bound (eq. 1, all T terms, x_t drawn once per term) on --images test images drawn
      at random (seeded) from the test split, decomposed into L_T, L_0 and bands of t
      (benchmarks/digits_diagnose.py's `bound_terms`), in bits/dim with the standard error over
      images;
    * --fid-samples ancestral samples (all T steps), a grid of the first 64
      (OUT_DIR/<preset>/samples.png);
    * FID of those samples against --fid-reference test images at the same resolution (the
      project's Inception features, images upscaled to 299x299). With a few hundred images FID
      is strongly biased upwards: it only ranks models measured with the same numbers here.
--oracle checks the three processes at K = 256 without a network: with p~(x_0 | x_t) = m(x_0),
the per-position level histograms of the training split (+0.5 per count), eq. 4 is the exact
reverse of the model m, so each process's bound must equal -log m(x_0) in expectation.
Results: OUT_DIR/<preset>/result.json; the table: stdout and OUT_DIR/table.md. --plot draws
the sample grids beside the bound by band of t.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
PRESETS = {  # table row -> preset (the paper's losses and schedules, Table 3)
    "uniform L_vb (cosine)": "cifar10-uniform-cpu-small",
    "absorbing L_lambda (1/(T-t+1))": "cifar10-absorbing-cpu-small",
    "Gauss L_lambda (linear)": "cifar10-gauss-cpu-small",
    "Gauss + logistic L_lambda (linear)": "cifar10-gauss-logistic-cpu-small",
}
BANDS = (1, 5, 15, 40, 62, 125, 188, 250)  # upper ends of the bands of t (T = 250)


def train_for_budget(preset: str, data: str, run_dir: Path, budget: float, seed: int,
                     reuse: bool = False):
    """Train `preset` until `budget` process CPU seconds are spent, save; (trainer, seconds).

    The spent seconds and updates go to run_dir/train.json. With `reuse`, a run that holds one
    for this budget is loaded from its last checkpoint instead of trained again."""
    from budgets import preset_trainer, train_for

    record = run_dir / "train.json"
    if reuse and record.is_file():
        done = json.loads(record.read_text())
        if done["budget"] != budget:
            raise SystemExit(f"{run_dir} was trained for {done['budget']} CPU-s, not {budget}")
        trainer = preset_trainer(preset, data, run_dir, seed, resume=True)
        if trainer.step != done["steps"]:
            raise SystemExit(f"{run_dir}: checkpoint at step {trainer.step}, "
                             f"train.json says {done['steps']}")
        return trainer, done["train_cpu_s"]
    trainer = preset_trainer(preset, data, run_dir, seed)
    spent = train_for(trainer, budget, lambda updates, seconds: print(  # the run is alive
        f"{preset}: {updates} updates, {seconds:.0f} CPU-s", flush=True))
    trainer.save()
    record.write_text(json.dumps({"budget": budget, "train_cpu_s": spent,
                                  "steps": trainer.step}) + "\n")
    return trainer, spent


def test_images(source, count: int, seed: int):
    """`count` test images drawn without replacement (seeded): the split is stored by class."""
    import torch

    test = source.splits["test"]
    order = np.random.default_rng(seed).permutation(len(test))[:count]
    return torch.from_numpy(test[np.sort(order)].astype(np.int64))


def decomposed_bound(method, model, x_0, seed: int, batch: int = 32) -> dict:
    """The full bound of each image and its mean terms per t, bits/dim."""
    import torch
    from digits_diagnose import bound_terms

    from discrete_diffusion.methods.diffusion import as_denoiser

    denoiser = as_denoiser(model, method.excluded)
    dims = x_0[0].numel() * math.log(2)
    priors, terms = [], []
    for i, chunk in enumerate(x_0.split(batch)):
        prior, per_t = bound_terms(method.process, denoiser, chunk, seed + i)
        priors.append(prior)
        terms.append(per_t)
    prior, per_t = torch.cat(priors), torch.cat(terms, 1)  # [N], [T, N]
    total = (prior + per_t.sum(0)) / dims
    return {"bits_per_dim": float(total.mean()),
            "stderr": float(total.std() / math.sqrt(len(total))),
            "prior_bpd": float(prior.mean() / dims),
            "per_t_bpd": (per_t.mean(1) / dims).tolist()}


def bands(per_t: list[float]) -> dict[str, float]:
    """L_0 and the diffusion terms summed by band of t (row t - 1 holds L_{t-1})."""
    out, low = {"L_0": per_t[0]}, 2
    for high in BANDS[1:]:
        out[f"t {low}-{high}"] = sum(per_t[low - 1:high])
        low = high + 1
    return out


def run_one(name: str, args: argparse.Namespace) -> dict:
    """Train, evaluate, sample and score one preset (in its own single-threaded process)."""
    import torch

    torch.set_num_threads(1)
    from discrete_diffusion.figures.samples import write_samples

    preset, folder = PRESETS[name], args.out / PRESETS[name]
    trainer, spent = train_for_budget(preset, args.data, folder / "run", args.budget, args.seed,
                                      args.reuse)
    model, method, source = trainer.eval_model.eval(), trainer.method, trainer.data
    t0 = time.process_time()
    result = {"name": name, "preset": preset, "data": source.description, "steps": trainer.step,
              "train_cpu_s": spent, "T": method.num_steps, "test_images": args.images}
    result.update(decomposed_bound(method, model, test_images(source, args.images, args.seed),
                                   args.seed))
    result["eval_cpu_s"] = time.process_time() - t0
    print(f"{preset}: {result['bits_per_dim']:.4f} +- {result['stderr']:.4f} bits/dim", flush=True)
    (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")  # kept if stopped
    if args.fid_samples:
        t0 = time.process_time()
        gen = torch.Generator().manual_seed(args.seed)
        samples = torch.cat([method.sample(model, len(c), generator=gen)
                             for c in torch.arange(args.fid_samples).split(64)])
        result["sample_cpu_s"] = time.process_time() - t0
        write_samples(source.codec(), samples[:64], folder / "samples.png")
        np.save(folder / "samples.npy", samples.numpy().astype(np.uint8))
        result["fid"] = fid_of(samples, source, args)
        result["fid_samples"] = args.fid_samples
        result["fid_reference"] = args.fid_reference
    (folder / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def fid_of(samples, source, args: argparse.Namespace) -> float:
    """FID of `samples` against --fid-reference test images (reference features cached)."""
    from discrete_diffusion.evaluation import fid

    net_path = fid.default_network_path()
    net = fid.load_network(net_path)
    ref_images = test_images(source, args.fid_reference, args.seed + 1)
    ref = fid.reference_statistics(f"{source.name}-test-{args.fid_reference}", net_path,
                                   lambda: fid.features(net, ref_images.split(50), 256),
                                   args.out / "fid-cache")
    return fid.fid(samples.split(50), ref, net, 256)


def reference(args: argparse.Namespace) -> None:
    """The FID reference statistics once, before the workers race for them."""
    import torch

    torch.set_num_threads(1)
    from discrete_diffusion.training.builders import build_data
    from discrete_diffusion.training.config import config_from_dict, read_yaml

    config = config_from_dict(read_yaml(ROOT / "configs" / f"{PRESETS[next(iter(PRESETS))]}.yaml"))
    source = build_data(config, args.data)
    fid_of(torch.zeros(2, *source.example_shape, dtype=torch.long), source, args)


def oracle(args: argparse.Namespace) -> str:
    """The bound of the per-position marginal denoiser under each preset's process."""
    import torch

    torch.set_num_threads(1)
    from digits_diagnose import bound_terms

    from discrete_diffusion.training.builders import build_data, build_method
    from discrete_diffusion.training.config import config_from_dict, read_yaml

    lines = []
    for name, preset in list(PRESETS.items())[:3]:  # the logistic head shares the Gaussian's
        config = config_from_dict(read_yaml(ROOT / "configs" / f"{preset}.yaml"))
        source = build_data(config, args.data)
        method = build_method(config, source.info())
        train = torch.from_numpy(source.splits["train"].astype(np.int64))  # [N, C, H, W]
        shape = train.shape[1:]
        index = torch.arange(train[0].numel()) * 256 + train.flatten(1)  # position * K + level
        counts = torch.bincount(index.flatten(), minlength=train[0].numel() * 256)
        counts = counts.double().reshape(*shape, 256) + 0.5
        log_m = (counts / counts.sum(-1, keepdim=True)).log()  # [C, H, W, 256]
        x_0 = test_images(source, args.images, args.seed)
        dims = x_0[0].numel() * math.log(2)
        nll = -log_m.expand(len(x_0), -1, -1, -1, -1).gather(-1, x_0[..., None])[..., 0]
        marginal = log_m.float()[None]
        prior, terms = bound_terms(method.process,
                                   lambda x_t, t, m=marginal: m.expand(len(x_t), -1, -1, -1, -1),
                                   x_0, args.seed)
        total = (prior + terms.sum(0)) / dims
        lines.append(f"{name}: -log m(x_0) {float(nll.flatten(1).sum(1).mean() / dims):.4f}, "
                     f"bound {float(total.mean()):.4f} +- "
                     f"{float(total.std() / math.sqrt(len(total))):.4f} bits/dim")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def _launch(name: str, args: argparse.Namespace) -> subprocess.Popen:
    log = open(args.out / f"{PRESETS[name]}.log", "w")
    cmd = [sys.executable, __file__, str(args.out), "--one", name, "--data", args.data,
           "--budget", str(args.budget), "--images", str(args.images),
           "--fid-samples", str(args.fid_samples), "--fid-reference", str(args.fid_reference),
           "--seed", str(args.seed)] + (["--reuse"] if args.reuse else [])
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def run_all(args: argparse.Namespace) -> list[dict]:
    """The presets `args.jobs` at a time, each in its own single-threaded process."""
    from budgets import run_parallel

    if args.fid_samples:
        reference(args)
    return run_parallel(args.only or PRESETS, lambda name: _launch(name, args),
                        lambda name: args.out / PRESETS[name] / "result.json", args.jobs,
                        log_path=lambda name: args.out / f"{PRESETS[name]}.log")


def table(results: list[dict]) -> str:
    order = {n: i for i, n in enumerate(PRESETS)}
    rows = sorted(results, key=lambda r: order.get(r["name"], 99))
    if not rows:
        return "no results"
    r0 = rows[0]
    lines = [f"{r0['data']}, T = {r0['T']}, {max(r['train_cpu_s'] for r in rows):.0f} CPU-s of "
             f"training each; full bound on {r0['test_images']} test images; FID of "
             f"{r0.get('fid_samples', 0)} samples vs {r0.get('fid_reference', 0)} test images",
             "", "| model | updates | bits/dim | stderr | FID |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        fid = f"{r['fid']:.1f}" if "fid" in r else "n/a"
        lines.append(f"| {r['name']} | {r['steps']} | {r['bits_per_dim']:.4f} | "
                     f"{r['stderr']:.4f} | {fid} |")
    keys = ["L_T"] + list(bands(r0["per_t_bpd"]))
    lines += ["", "The bound by term, bits/dim (L_T, L_0, sums of L_{t-1} over bands of t):", "",
              "| model | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for r in rows:
        parts = [r["prior_bpd"], *bands(r["per_t_bpd"]).values()]
        lines.append(f"| {r['name']} | " + " | ".join(f"{v:.4f}" for v in parts) + " |")
    return "\n".join(lines)


def plot(results: list[dict], out: Path, path: Path) -> None:
    """Sample grids (first 16 of each model) above bars of the bound by term and band of t."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from discrete_diffusion.figures.grid import tile

    order = {n: i for i, n in enumerate(PRESETS)}
    rows = sorted(results, key=lambda r: order.get(r["name"], 99))
    fig = plt.figure(figsize=(3.2 * len(rows), 7.0))
    grid = fig.add_gridspec(2, len(rows), height_ratios=[1.0, 1.1])
    for i, r in enumerate(rows):
        ax = fig.add_subplot(grid[0, i])
        samples = out / r["preset"] / "samples.npy"
        if samples.is_file():
            images = np.load(samples)[:16]  # uint8 [16, 3, H, W]
            ax.imshow(tile(images, 4, pad=1, fill=255).transpose(1, 2, 0),
                      interpolation="nearest")
        fid = f"FID {r['fid']:.0f}" if "fid" in r else "no samples"
        ax.set_title(f"{r['name']}\n{r['bits_per_dim']:.3f} bits/dim, {fid}", fontsize=8)
        ax.axis("off")
    ax = fig.add_subplot(grid[1, :])
    keys = ["L_T", *bands(rows[0]["per_t_bpd"])]
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        values = [r["prior_bpd"], *bands(r["per_t_bpd"]).values()]
        ax.bar(np.arange(len(keys)) + (i - len(rows) / 2 + 0.5) * width, values, width,
               label=r["name"])
    ax.set_xticks(np.arange(len(keys)), keys, fontsize=8)
    ax.set_ylabel("bits/dim in the term or band")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (runs, grids, results)")
    parser.add_argument("--data", help="CIFAR-10: the python tarball, or a folder/zip of images")
    parser.add_argument("--budget", type=float, default=1200.0, help="training CPU seconds")
    parser.add_argument("--jobs", type=int, default=2, help="presets trained at once")
    parser.add_argument("--images", type=int, default=128, help="test images for the bound")
    parser.add_argument("--fid-samples", type=int, default=128, help="0: no samples, no FID")
    parser.add_argument("--fid-reference", type=int, default=1000, help="test images for FID")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reuse", action="store_true",
                        help="evaluate runs already trained to --budget (run/train.json)")
    parser.add_argument("--only", nargs="+", choices=list(PRESETS), metavar="NAME")
    parser.add_argument("--table", action="store_true", help="print the table of OUT and exit")
    parser.add_argument("--plot", type=Path, help="with --table: also draw grids and bands here")
    parser.add_argument("--oracle", action="store_true", help="check the processes and exit")
    parser.add_argument("--one", choices=list(PRESETS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.table:
        results = [json.loads(p.read_text()) for p in sorted(args.out.glob("*/result.json"))]
        print(table(results))
        if args.plot and results:
            plot(results, args.out, args.plot)
        return 0
    if not args.data:
        parser.error("--data is required (CIFAR-10 tarball, folder or zip)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.oracle:
        (args.out / "oracle.md").write_text(oracle(args) + "\n")
        return 0
    if args.one:
        print(json.dumps({k: v for k, v in run_one(args.one, args).items() if k != "per_t_bpd"}))
        return 0
    results = run_all(args)
    text = table(results)
    (args.out / "table.md").write_text(text + "\n")
    print(text)
    return 0 if len(results) == len(args.only or PRESETS) else 1


if __name__ == "__main__":
    sys.exit(main())
