"""Cost of one whole training step (forward + backward + AdamW step) of the real text network
with a D3PM loss, against the same network trained with plain cross-entropy on x_0.

Network: the transformer denoiser of the cpu-small presets (2 layers, d = 128, 4 heads, MLP 512,
rotary positions), B x L = 8 x 128, T = 1000. Variants, each with its own copy of the same
initial network and its own AdamW:

    ce              F.cross_entropy(model(x_0, T), x_0): the baseline (t input fixed)
    absorbing-hyb   D3PM absorbing, jsd schedule, L_vb + 0.01 L_ce (the text8 preset)
    absorbing-vb    the same with L_vb alone
    uniform         D3PM uniform, cosine schedule, L_vb (the text8 uniform preset)
    mask-uniform    absorbing (jsd) + uniform (cosine) resampling, hybrid loss

through `DiffusionMethod.losses`, the path the trainer takes. The absorbing and mask-uniform
processes add a mask token to K_data = K - 1 data classes; uniform and ce use K classes, so
every network has a K-wide head. The loss is reduced as the trainer does (mean over the
batch of loss / positions).

The variants run round-robin, one step each per round, so that load changes on a shared
machine hit all of them alike; per variant the median over rounds of the process CPU time
(`time.process_time`, one thread) is reported, the ratio of medians to ce, and the median and
quartiles of the per-round ratio (the step of the variant over the ce step of the same round).

    python benchmarks/bench_train_step.py [--rounds 30] [--sizes 8193,28]
    python benchmarks/bench_train_step.py --profile absorbing-hyb:8193   # torch.profiler table
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from discrete_diffusion.data.base import DataInfo  # noqa: E402
from discrete_diffusion.methods import diffusion  # noqa: E402
from discrete_diffusion.networks import transformer  # noqa: E402

T = 1000
BATCH, LENGTH = 8, 128
NETWORK = transformer.Config(num_layers=2, d_model=128, num_heads=4, mlp_dim=512)
TARGETS = {"absorbing-hyb": 1.05, "absorbing-vb": 1.05, "uniform": 1.3, "mask-uniform": 1.5}
VARIANTS = ("ce", "absorbing-hyb", "absorbing-vb", "uniform", "mask-uniform")


@dataclass
class Variant:
    """A network, its optimizer and the loss of one training step."""

    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss: Callable[[torch.nn.Module, torch.Tensor, torch.Generator], torch.Tensor]

    def step(self, x_0: torch.Tensor, gen: torch.Generator) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.model, x_0, gen).backward()
        self.optimizer.step()


def _method(name: str, k_data: int) -> diffusion.DiffusionMethod:
    opts = {"absorbing-hyb": ("absorbing", "jsd", "hybrid"),
            "absorbing-vb": ("absorbing", "jsd", "vb"),
            "uniform": ("uniform", "cosine", "vb"),
            "mask-uniform": ("mask_uniform", "jsd", "hybrid")}[name]
    cfg = diffusion.Config(transition=opts[0], schedule=opts[1], loss=opts[2], num_steps=T)
    return diffusion.build(cfg, DataInfo(num_classes=k_data, example_shape=(LENGTH,)))


def build_variant(name: str, k: int) -> Variant:
    """Variant `name` at K classes (the mask included where there is one)."""
    if name == "ce":
        def loss(model, x_0, gen):
            t = torch.full((x_0.shape[0],), T, dtype=torch.long)
            logits = model(x_0, t)
            return F.cross_entropy(logits.reshape(-1, k), x_0.reshape(-1))
    else:
        method = _method(name, k - 1 if name in ("absorbing-hyb", "absorbing-vb",
                                                 "mask-uniform") else k)
        assert method.num_classes == k

        def loss(model, x_0, gen):
            out = method.losses(model, x_0, generator=gen)
            return (out["loss"] / x_0.shape[1]).mean()
    torch.manual_seed(0)
    model = transformer.TransformerDenoiser(NETWORK, k, T, LENGTH)
    return Variant(name, model, torch.optim.AdamW(model.parameters(), lr=1e-4), loss)


def run(k: int, rounds: int, warmup: int, names: tuple[str, ...]) -> dict[str, list[float]]:
    """Per variant, the CPU seconds of each measured round."""
    variants = [build_variant(n, k) for n in names]
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(warmup + rounds):
        x_0 = torch.randint(0, k - 1, (BATCH, LENGTH), generator=gen)  # never the mask id
        for v in variants:
            start = time.process_time()
            v.step(x_0, gen)
            if r >= warmup:
                times[v.name].append(time.process_time() - start)
    return times


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def report(k: int, times: dict[str, list[float]]) -> None:
    base = times["ce"]
    print(f"\nK = {k}, B x L = {BATCH} x {LENGTH}, {len(base)} rounds")
    print("| variant | ms/step median | ms/step p25-p75 | ratio of medians | per-round ratio "
          "median (p25-p75) | target |")
    print("|---|---:|---:|---:|---:|---|")
    for name, ts in times.items():
        lo, med, hi = quartiles([1e3 * t for t in ts])
        ratios = [t / b for t, b in zip(ts, base)]
        r_lo, r_med, r_hi = quartiles(ratios)
        target = TARGETS.get(name)
        verdict = "-" if target is None or k != 8193 else (
            f"<= {target}: {'met' if r_med <= target else 'MISSED'}")
        ratio = med / (1e3 * statistics.median(base))
        print(f"| {name} | {med:.1f} | {lo:.1f}-{hi:.1f} | {ratio:.3f} | "
              f"{r_med:.3f} ({r_lo:.3f}-{r_hi:.3f}) | {verdict} |")


def profile(spec: str, steps: int = 5) -> None:
    """Print the torch.profiler operator table of `steps` training steps of `name:K`."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    name, k = spec.split(":")
    v = build_variant(name, int(k))
    gen = torch.Generator().manual_seed(0)
    x_0 = torch.randint(0, int(k) - 1, (BATCH, LENGTH), generator=gen)
    for _ in range(3):
        v.step(x_0, gen)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            v.step(x_0, gen)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--sizes", default="8193,28", help="comma-separated K values")
    parser.add_argument("--only", default=",".join(VARIANTS[1:]),
                        help="comma-separated variants besides ce")
    parser.add_argument("--profile", default="", help="NAME:K, print a profiler table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.profile:
        profile(args.profile)
        return
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"threads {torch.get_num_threads()}, network {NETWORK}")
    names = ("ce", *[n for n in args.only.split(",") if n and n != "ce"])
    for k in (int(s) for s in args.sizes.split(",")):
        report(k, run(k, args.rounds, args.warmup, names))


if __name__ == "__main__":
    main()
