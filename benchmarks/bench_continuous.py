"""Continuous-time against discrete-time objectives, and the samplers, side by side on text8-format
data: the same network and the same budget of process CPU seconds for every model.

    python benchmarks/bench_continuous.py train   --data enwiki --runs RUNS [--budget 900]
    python benchmarks/bench_continuous.py eval    --data enwiki --runs RUNS [--eval-examples 32]
    python benchmarks/bench_continuous.py samplers --runs RUNS [--num 8]
    python benchmarks/bench_continuous.py report  --runs RUNS [--plot quality.png]

`train` runs the library's Trainer on each preset of MODELS until `--budget` seconds of process
CPU time (time.process_time, fair on a shared machine) have been spent on updates, then writes a
checkpoint into RUNS/<preset>. `eval` gives bits/char with standard errors on the first
`--eval-examples` 256-character test chunks: the continuous Monte-Carlo bound (continuous-time
models) and the exact discrete bounds at 1000, 256 and 20 steps (every diffusion model), and the
exact autoregressive likelihood. `samplers` draws `--num` sequences from the absorbing and
uniform models with every applicable sampler and step count, and measures network passes per
sequence, process CPU seconds per sequence, the NLL of the samples under the autoregressive
model trained here (bits/char) and the unigram entropy of the samples (bits; the data's is
printed beside it: low entropy with low NLL means degenerate text). `report` prints the tables
and plots quality against network passes. Each phase appends JSON lines to RUNS/results.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from discrete_diffusion.data.base import codec_from_dir  # noqa: E402
from discrete_diffusion.evaluation.bound import evaluate_bound  # noqa: E402
from discrete_diffusion.training.builders import build_data, load_trained  # noqa: E402
from discrete_diffusion.training.config import load_config  # noqa: E402
from discrete_diffusion.training.trainer import Trainer  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
MODELS = {
    "text8-absorbing-ct-cpu-small": "continuous-time absorbing",
    "text8-absorbing-cpu-small": "D3PM absorbing (L_lambda)",
    "text8-uniform-ct-cpu-small": "continuous-time uniform",
    "text8-uniform-cpu-small": "D3PM uniform (L_vb)",
    "text8-ar-cpu-small": "autoregressive",
}
AR = "text8-ar-cpu-small"
STEPS = ("continuous", 1000, 256, 20)
SAMPLERS = {  # sampler -> the models it applies to
    "ancestral": ("absorbing", "uniform"),
    "first_hitting": ("absorbing",),
    "confidence": ("absorbing",),
    "remdm": ("absorbing",),
    "tau_leaping": ("absorbing", "uniform"),
}
SAMPLE_STEPS = (1000, 256, 64, 16)


def record(runs: Path, row: dict) -> None:
    print(json.dumps(row), flush=True)
    with open(runs / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def results(runs: Path, phase: str) -> list[dict]:
    path = runs / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [r for r in rows if r["phase"] == phase]


# ----- phases --------------------------------------------------------------------------------
def train(args: argparse.Namespace) -> None:
    for preset in args.only or MODELS:
        config = load_config(CONFIGS / f"{preset}.yaml",
                             [f"data.path={args.data}", f"train.seed={args.seed}",
                              "train.device=cpu", "train.steps=1000000000", "train.eval_every=0",
                              "train.ckpt_every=0", "train.sample_every=0", *args.set])
        data = build_data(config, args.data)  # preparation is cached: not charged to training
        trainer = Trainer(config, data, args.runs / preset, progress=False)
        start = time.process_time()
        while time.process_time() - start < args.budget:
            trainer.train_step()
        spent = time.process_time() - start
        trainer.save()
        record(args.runs, {"phase": "train", "preset": preset, "updates": trainer.step,
                           "train_cpu_s": spent, "skipped": trainer.skipped})


def evaluate(args: argparse.Namespace) -> None:
    for preset in args.only or MODELS:
        run = load_trained(args.runs / preset)
        data = build_data(run.config, args.data)
        continuous = run.config.method_kind == "continuous"
        if continuous:  # draws of t per example in the Monte-Carlo continuous bound
            run.method.cfg = dataclasses.replace(run.method.cfg, eval_samples=args.t_draws)
        wanted = [s if s == "continuous" else int(s) for s in args.steps]
        steps = [None] if preset == AR else [s for s in wanted if continuous or s != "continuous"]
        gen = torch.Generator().manual_seed(args.seed + 1)
        start = time.process_time()
        batches = data.eval_batches("test", args.eval_batch, max_examples=args.eval_examples)
        out = evaluate_bound(run.method, run.model, batches, steps, gen, unit="char")
        for res, s in zip(out, steps):
            record(args.runs, {"phase": "eval", "preset": preset, "steps": s or "exact",
                               "bits_per_char": res["bits_per_unit"], "stderr": res["stderr"],
                               "count": res["count"], "eval_cpu_s": time.process_time() - start})


class Counted(torch.nn.Module):
    """The model with a count of the sequences (rows) it has been given."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.rows += x_t.shape[0]
        return self.model(x_t, t)


def unigram_entropy(x: torch.Tensor) -> float:
    counts = Counter(x.reshape(-1).tolist())
    total = sum(counts.values())
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def samplers(args: argparse.Namespace) -> None:
    ar = load_trained(args.runs / AR)
    positions = ar.info.example_shape[0]
    for preset in args.only or [p for p in MODELS if p != AR]:
        run = load_trained(args.runs / preset)
        kind = "absorbing" if "absorbing" in preset else "uniform"
        codec = codec_from_dir(args.runs / preset / "data")
        for sampler, kinds in SAMPLERS.items():
            if kind not in kinds:
                continue
            for steps in SAMPLE_STEPS:
                counted = Counted(run.model)
                gen = torch.Generator().manual_seed(args.seed + 3)
                start = time.process_time()
                x = run.method.sample(counted, args.num, steps=steps, generator=gen,
                                      sampler=sampler)
                seconds = (time.process_time() - start) / args.num
                nll = ar.method.nll(ar.model, x).double() / (positions * math.log(2))
                record(args.runs, {
                    "phase": "samplers", "preset": preset, "sampler": sampler, "steps": steps,
                    "nfe_per_sample": counted.rows / args.num, "cpu_s_per_sample": seconds,
                    "ar_nll_bits_per_char": float(nll.mean()),
                    "ar_nll_stderr": float(nll.std() / math.sqrt(nll.numel())),
                    "unigram_entropy_bits": unigram_entropy(x), "num": args.num,
                    "example": codec.decode(x[0])[:100]})


# ----- the report ------------------------------------------------------------------------------
def report(args: argparse.Namespace) -> None:
    lines = ["| model | updates | " + " | ".join(f"{s} steps" if s != "continuous" else s
                                               for s in STEPS) + " |",
             "|---|---|" + "---|" * len(STEPS)]
    trained = {r["preset"]: r for r in results(args.runs, "train")}
    evals = results(args.runs, "eval")
    for preset, name in MODELS.items():
        cells = []
        for s in STEPS:
            hit = [r for r in evals if r["preset"] == preset  # AR: exact, in the 1000 column
                   and (r["steps"] == s or (preset == AR and s == 1000))]
            cells.append(f"{hit[-1]['bits_per_char']:.3f} +- {hit[-1]['stderr']:.3f}"
                         if hit else "-")
        updates = trained.get(preset, {}).get("updates", "-")
        lines.append(f"| {name} | {updates} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    rows = results(args.runs, "samplers")
    if not rows:
        return
    print("\n| model | sampler | steps | passes / sample | CPU s / sample | AR NLL (bits/char) "
          "| unigram entropy (bits) |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {MODELS[r['preset']]} | {r['sampler']} | {r['steps']} | "
              f"{r['nfe_per_sample']:.1f} | {r['cpu_s_per_sample']:.2f} | "
              f"{r['ar_nll_bits_per_char']:.3f} +- {r['ar_nll_stderr']:.3f} | "
              f"{r['unigram_entropy_bits']:.3f} |")
    if args.plot:
        plot(rows, args.plot)


def plot(rows: list[dict], out: str) -> None:
    """Top: NLL of the samples under the AR model; bottom: their unigram entropy (4.12 bits
    for the data); both against network passes per sample, one column per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = [p for p in MODELS if any(r["preset"] == p for r in rows)]
    fig, axes = plt.subplots(2, len(presets), figsize=(4.5 * len(presets), 7), squeeze=False)
    for column, preset in enumerate(presets):
        panels = (("ar_nll_bits_per_char", "AR NLL of samples (bits/char)"),
                  ("unigram_entropy_bits", "unigram entropy (bits)"))
        for row, (key, label) in enumerate(panels):
            ax = axes[row][column]
            for sampler in SAMPLERS:
                pts = sorted((r["nfe_per_sample"], r[key]) for r in rows
                             if r["preset"] == preset and r["sampler"] == sampler)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=sampler)
            ax.set_xscale("log")
            ax.set_xlabel("network passes per sample")
            ax.set_ylabel(label)
            if row == 0:
                ax.set_title(MODELS[preset])
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("phase", choices=("train", "eval", "samplers", "report"))
    p.add_argument("--data", default="enwiki", help="text8-format file, or enwiki")
    p.add_argument("--runs", type=Path, required=True, help="folder of the run folders")
    p.add_argument("--budget", type=float, default=900.0, help="training CPU seconds per model")
    p.add_argument("--eval-examples", type=int, default=32)
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument("--steps", nargs="+", default=[str(s) for s in STEPS],
                   help="bounds to evaluate: 'continuous' and/or step counts")
    p.add_argument("--t-draws", type=int, default=16,
                   help="draws of t per example in the continuous bound")
    p.add_argument("--num", type=int, default=8, help="samples per sampler and step count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="*", default=None, help="presets to run (default all)")
    p.add_argument("--set", nargs="*", default=[], metavar="section.key=value",
                   help="config overrides for `train` (an ablation: use its own --runs)")
    p.add_argument("--plot", default=None, help="PNG of sample quality against passes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    args.runs.mkdir(parents=True, exist_ok=True)
    {"train": train, "eval": evaluate, "samplers": samplers, "report": report}[args.phase](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
