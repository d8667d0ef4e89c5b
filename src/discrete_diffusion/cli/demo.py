"""`d3pm demo swissroll`: the paper's Figure 1 on a quantized 2-D swiss roll, on the CPU.

Each point is two categorical variables with 32 bins each. For the uniform, discretized Gaussian
and absorbing processes (the absorbing one adds a mask state, id 32, so its model has K = 33)
the demo trains a small MLP denoiser (a short loop over `D3PM.training_losses`), prints the
full variational bound (eq. 1) on held-out points before and after training, in bits per point,
and writes the figure: forward samples x_t, the matrices Qbar_t and samples of the learned
reverse process at t = 0, T/4, T/2, 3T/4, T.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from discrete_diffusion.cli.common import add_progress_flag
from discrete_diffusion.files import atomic_write_text, writable_folder

if TYPE_CHECKING:  # heavy imports stay inside functions: `d3pm --help` must be instant
    from torch import Tensor, nn

    from discrete_diffusion.data.swissroll import SwissRollSource
    from discrete_diffusion.figures.swissroll import ProcessPanels
    from discrete_diffusion.process import D3PM
    from discrete_diffusion.transitions import Transition

BINS = 32  # the arms of the roll lie ~7 bins apart; 32 x 32 matrices stay readable as images
NUM_STEPS = 100  # T
BATCH_SIZE = 256
LEARNING_RATE = 2e-3
FIGURE = "swissroll.png"
MLP_SIZES = {"hidden": 128, "layers": 2, "embed_dim": 16}


@dataclass(frozen=True)
class DemoProcess:
    """A forward process of the figure: its title, transition for `bins` data values, schedule
    of T steps, and whether it adds the mask state `bins`."""

    name: str
    transition: Callable[[int], Transition]
    schedule: Callable[[int], Tensor]
    mask: bool = False


def geometric(num_steps: int, start: float = 1e-3, stop: float = 1.0) -> Tensor:
    """beta_t growing geometrically from `start` to `stop`, float64 [T].

    For the discretized Gaussian with 32 bins a step spreads a point by a standard deviation of
    about 31 sqrt(beta_t / 8) bins, so the spreads add up to ~3 bins by T/4 (the roll blurs),
    ~7 bins (the gap between arms) by T/2, and to many times the grid by T (uniform).
    """
    import torch

    return torch.logspace(math.log10(start), math.log10(stop), num_steps, dtype=torch.float64)


def demo_processes() -> tuple[DemoProcess, ...]:
    """Uniform (cosine schedule), discretized Gaussian (geometric schedule) and absorbing
    (beta_t = 1/(T - t + 1), which masks everything at T)."""
    import discrete_diffusion as dd

    return (
        DemoProcess("uniform", lambda k: dd.transitions.Uniform(num_classes=k),
                    dd.schedules.cosine),
        DemoProcess("discretized Gaussian",
                    lambda k: dd.transitions.DiscretizedGaussian(num_classes=k),
                    geometric),
        DemoProcess("absorbing", lambda k: dd.transitions.Absorbing(num_classes=k + 1,
                                                                    mask_index=k),
                    dd.schedules.jsd, mask=True),
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `demo swissroll` to the `d3pm` command."""
    demo = subparsers.add_parser("demo", help="self-contained demonstrations (no data needed)")
    kinds = demo.add_subparsers(dest="demo", required=True, metavar="DEMO")
    roll = kinds.add_parser(
        "swissroll", help="the paper's Figure 1: forward and learned reverse processes on a "
                          "quantized swiss roll (about a minute on a CPU)")
    roll.add_argument("--out", required=True, type=Path, help="folder for the figure")
    roll.add_argument("--train-steps", type=int, default=1500,
                      help="optimizer steps per process (default 1500)")
    roll.add_argument("--seed", type=int, default=0, help="seed of data, models and samples")
    roll.add_argument("--points", type=int, default=2000,
                      help="held-out points for the bound, and points per scatter (default 2000)")
    roll.add_argument("--overwrite", action="store_true",
                      help=f"replace an existing {FIGURE} in --out")
    add_progress_flag(roll)
    roll.set_defaults(func=run_swissroll)


def check_args(args: argparse.Namespace) -> Path:
    """Validate the options and create --out (so that an unwritable folder fails before the
    training); returns the figure path."""
    if args.train_steps < 0:
        raise ValueError(f"--train-steps must be >= 0, got {args.train_steps}")
    if args.points < 2:
        raise ValueError(f"--points must be >= 2 (a standard error needs two), got {args.points}")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} exists and is not a folder")
    figure = args.out / FIGURE
    if figure.exists() and not args.overwrite:
        raise FileExistsError(f"{figure} exists; choose another --out or pass --overwrite")
    writable_folder(args.out)
    return figure


def run_swissroll(args: argparse.Namespace) -> int:
    """Train, evaluate and draw; prints the bounds and the figure path. Returns 0."""
    import torch

    from discrete_diffusion.data import swissroll
    from discrete_diffusion.figures.swissroll import forward_reverse_figure

    figure = check_args(args)
    torch.set_num_threads(1)  # batches of 256 x 2 tokens: more threads only add overhead
    source = swissroll.build(swissroll.Config(bins=BINS, num_test=args.points, seed=args.seed))
    x_test = source.split("test")
    print(f"swiss roll: {BINS} bins per coordinate, {source.num_examples('train')} training and "
          f"{len(x_test)} held-out points, T = {NUM_STEPS}; histogram entropy of the training "
          f"points {histogram_entropy_bits(source.split('train')):.2f} bits/point", flush=True)
    blocks, results = [], {}
    for i, spec in enumerate(demo_processes()):
        block, result = run_process(spec, source, x_test, args.train_steps, args.seed + i)
        blocks.append(block)
        results[spec.name] = result
    title = (f"D3PM on a quantized swiss roll ({BINS} bins per coordinate, T = {NUM_STEPS}, "
             f"{args.train_steps} training steps per process)")
    forward_reverse_figure(blocks, figure_times(), BINS, figure, title=title)
    atomic_write_text(args.out / "bounds.json", json.dumps(results, indent=2) + "\n")
    print(f"wrote {figure}")
    return 0


def figure_times() -> list[int]:
    return [0, NUM_STEPS // 4, NUM_STEPS // 2, 3 * NUM_STEPS // 4, NUM_STEPS]


def histogram_entropy_bits(x: Tensor) -> float:
    """Plug-in entropy of the joint histogram of points [N, 2], bits (a rough reference)."""
    import torch

    _, counts = torch.unique(x, dim=0, return_counts=True)
    p = counts.double() / counts.sum()
    return float(-(p * p.log2()).sum())


def run_process(spec: DemoProcess, source: SwissRollSource, x_test: Tensor, steps: int,
                seed: int) -> tuple[ProcessPanels, dict]:
    """Build, evaluate, train, evaluate and sample one process; returns its figure block and
    its bounds {"before": [mean, se], "after": [mean, se]} in bits per point."""
    import torch

    import discrete_diffusion as dd
    from discrete_diffusion.figures.swissroll import ProcessPanels
    from discrete_diffusion.networks import mlp

    torch.manual_seed(seed)
    proc = dd.D3PM(spec.transition(BINS), spec.schedule(NUM_STEPS))
    model = mlp.build(mlp.Config(**MLP_SIZES), source.info(), proc.num_classes, NUM_STEPS)
    before = bound_bits(proc, model, x_test, seed, f"{spec.name}: bound")
    _print_bound(spec.name, "before", before)
    train(proc, model, source, steps, seed, spec.name)
    after = bound_bits(proc, model, x_test, seed, f"{spec.name}: bound")
    _print_bound(spec.name, "after", after)
    forward, matrices = forward_panels(proc, x_test, seed)
    reverse = reverse_panels(proc, model, len(x_test), seed, spec.name)
    note = (f"bound {before[0]:.2f} ± {before[1]:.2f} → {after[0]:.2f} ± {after[1]:.2f} "
            f"bits/point (before → after training)")
    name = f"{spec.name} (mask state M = {BINS}, K = {BINS + 1})" if spec.mask else spec.name
    block = ProcessPanels(name, forward, matrices, reverse, note=note, mask=spec.mask)
    return block, {"before": list(before), "after": list(after), "num_classes": proc.num_classes}


def _print_bound(name: str, when: str, bound: tuple[float, float]) -> None:
    print(f"{name}: bound {when} training {bound[0]:.3f} ± {bound[1]:.3f} bits/point", flush=True)


def train(proc: D3PM, model: nn.Module, source: SwissRollSource, steps: int, seed: int,
          name: str) -> None:
    """Adam on the hybrid loss (L_vb + 0.01 L_ce, section 3.4), cosine learning-rate decay."""
    import torch

    from discrete_diffusion.progress import progress_bar

    if steps == 0:
        return
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    decay = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.5 * (1.0 + math.cos(math.pi * i / steps)))
    batches = source.train_batches(BATCH_SIZE, seed=seed)
    g = torch.Generator().manual_seed(seed)
    model.train()
    bar = progress_bar(total=steps, desc=f"{name}: train", unit="step")
    recent = []  # one-sample bound estimates are noisy: show the mean of the last 50 steps
    for i in range(steps):
        losses = proc.training_losses(model, next(batches), generator=g)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        decay.step()
        recent = recent[-49:] + [losses["bound"].mean().item() / math.log(2.0)]
        if i % 50 == 49:
            bar.set_postfix(bound=f"{sum(recent) / len(recent):.2f} bits/point")
        bar.update(1)
    bar.close()
    model.eval()


def bound_bits(proc: D3PM, model: nn.Module, x: Tensor, seed: int,
               desc: str) -> tuple[float, float]:
    """The full bound (L_T + sum L_{t-1} + L_0, eq. 1) on points x [N, 2]: mean and standard
    error over points, bits per point."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with _Progress(desc) as progress:
        nats = proc.nll_bound(model, x, generator=g, progress=progress)
    bits = nats.double() / math.log(2.0)
    return float(bits.mean()), float(bits.std() / math.sqrt(len(bits)))


class _Progress:
    """A progress bar driven by the process's progress(done, total) callbacks."""

    def __init__(self, desc: str) -> None:
        from discrete_diffusion.progress import progress_bar

        self.bar = progress_bar(total=NUM_STEPS, desc=desc, unit="step", leave=False)

    def __call__(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def forward_panels(proc: D3PM, x_0: Tensor, seed: int) -> tuple[list[Tensor], list[Tensor]]:
    """Samples x_t ~ q(x_t | x_0) (eq. 3) and the matrices Qbar_t at the figure's times."""
    import torch

    g = torch.Generator().manual_seed(seed)
    forward, matrices = [], []
    for t in figure_times():
        forward.append(x_0 if t == 0 else proc.q_sample(x_0, t, generator=g))
        matrices.append(proc.cumulative_matrix(t))
    return forward, matrices


def reverse_panels(proc: D3PM, model: nn.Module, num: int, seed: int,
                   name: str) -> list[Tensor]:
    """x_t along one run of the learned reverse process, at the figure's times."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with _Progress(f"{name}: sample") as progress:
        _, trajectory = proc.sample(model, (num, 2), generator=g, return_trajectory=True,
                                    progress=progress)
    states = dict(trajectory)
    missing = [t for t in figure_times() if t not in states]
    if missing:
        raise RuntimeError(f"the sampler's trajectory lacks t = {missing}")
    return [states[t] for t in figure_times()]
