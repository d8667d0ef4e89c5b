"""Core cost of the mathematics layer: a D3PM loss step against a plain cross-entropy, and the
memory and build time of the transition tables.

Table 1: for each process and K, the process CPU time of one "loss step" on a [B, L] batch of
random data with given random logits (float32 [B, L, K]; t uniform in 1..T per example):

    x_t = q_sample(x_0, t); log q = q_posterior_logits(x_0, x_t, t);
    log p = p_logits(logits, x_t, t); KL(q || p) summed per example

as a ratio to torch.nn.functional.cross_entropy(logits, x_0) on the same logits; beside it,
`training_losses(..., loss="vb")` with a denoiser returning the same logits (the path training
takes, with the transitions' fused KL where they have one). All run side by side, alternating,
one thread; the median over repeats is reported. Forward only (the default) or forward +
backward through the logits (--backward).

Table 2: `Transition.table_bytes()` and build time (process CPU seconds of `D3PM(...)`) of the
discretized Gaussian at K = 256 and the nearest-neighbour process at K = 8193 (random unit
embeddings, d = 64, k = 5), T = 1000, beside the reference implementation's memory.

Table 3: the discretized Gaussian at K = 256, T = 1000 with the whole cumulative table
(checkpoint_every = 1) against every second matrix kept (the default there, m = 2): table
memory, build time, the transition work of a training step (`training_losses(loss="vb")` with a
denoiser returning fixed logits, image batch [B, 3, 16, 16], t uniform) and of a full T-step
bound (`nll_bound`, same denoiser, one image [1, 3, 8, 8]).

    python benchmarks/bench_core.py [--repeats 15] [--skip-nn-8193] [--backward]
    python benchmarks/bench_core.py --checkpoints-only --repeats 5   # table 3 alone
    python benchmarks/bench_core.py --profile uniform:256   # torch.profiler of one loss step
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import discrete_diffusion as dd
from discrete_diffusion.categorical import categorical_kl

T = 1000
SIZES = {28: (16, 256), 256: (16, 256), 8193: (4, 256)}  # K -> (B, L): 4096 / 1024 tokens
TARGET = 1.5  # loss step / cross-entropy, for uniform, absorbing and mask-uniform


@dataclass(frozen=True)
class Case:
    """One process of table 1: a name, a builder for K, and the K it is run at."""

    name: str
    build: Callable[[int], dd.D3PM]
    sizes: tuple[int, ...]
    target: bool


def _embeddings(num_classes: int, dim: int = 64, seed: int = 0) -> torch.Tensor:
    """Random unit vectors float64 [K, dim]."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(num_classes, dim, dtype=torch.float64, generator=g)
    return e / e.norm(dim=1, keepdim=True)


def uniform(k: int) -> dd.D3PM:
    return dd.D3PM(dd.transitions.Uniform(num_classes=k), dd.schedules.cosine(T))


def absorbing(k: int) -> dd.D3PM:
    return dd.D3PM(dd.transitions.Absorbing(num_classes=k, mask_index=k - 1),
                   dd.schedules.jsd(T))


def mask_uniform(k: int) -> dd.D3PM:
    tr = dd.transitions.MaskUniform(num_classes=k, mask_index=k - 1,
                                    uniform_betas=dd.schedules.cosine(T))
    return dd.D3PM(tr, dd.schedules.jsd(T))


def gaussian(k: int) -> dd.D3PM:
    return dd.D3PM(dd.transitions.DiscretizedGaussian(num_classes=k), dd.schedules.linear(T))


def nearest_neighbor(k: int) -> dd.D3PM:
    return dd.D3PM(dd.transitions.NearestNeighbor(_embeddings(k), k=5), dd.schedules.linear(T))


CASES = (
    Case("uniform", uniform, (28, 256, 8193), True),
    Case("absorbing", absorbing, (28, 256, 8193), True),
    Case("mask-uniform", mask_uniform, (28, 256, 8193), True),
    Case("discretized-gaussian", gaussian, (28, 256), False),
    Case("nearest-neighbor", nearest_neighbor, (28, 256), False),
)


def loss_step(proc: dd.D3PM, x_0: torch.Tensor, t: torch.Tensor, logits: torch.Tensor,
              g: torch.Generator) -> torch.Tensor:
    """KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) summed per example, float [B]."""
    x_t = proc.q_sample(x_0, t, generator=g)
    log_q = proc.q_posterior_logits(x_0, x_t, t)
    log_p = proc.p_logits(logits, x_t, t)
    return categorical_kl(log_q, log_p).sum(-1)


def cross_entropy(logits: torch.Tensor, x_0: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), x_0.flatten())


def _cpu_seconds(fn: Callable[[], torch.Tensor], backward: bool) -> float:
    start = time.process_time()
    out = fn()
    if backward:
        out.sum().backward()
    return time.process_time() - start


def training_step(proc: dd.D3PM, x_0: torch.Tensor, logits: torch.Tensor,
                  g: torch.Generator) -> torch.Tensor:
    """`training_losses(loss="vb")` with a denoiser that returns `logits`: the path training
    takes (q_sample, fused posterior KL where the transition has one, L_T, ce)."""
    return proc.training_losses(lambda x_t, t: logits, x_0, loss="vb", generator=g)["loss"]


def measure(proc: dd.D3PM, k: int, repeats: int, backward: bool) -> tuple[float, float, float]:
    """Median CPU seconds of (cross-entropy, loss step, training_losses), run alternately."""
    g = torch.Generator().manual_seed(0)
    b, length = SIZES[k]
    x_0 = torch.randint(0, k, (b, length), generator=g)
    t = torch.randint(1, T + 1, (b,), generator=g)
    logits = torch.randn(b, length, k, generator=g).requires_grad_(backward)
    times: list[list[float]] = [[], [], []]
    for i in range(repeats + 2):  # the first two rounds warm caches and allocator
        runs = (lambda: cross_entropy(logits, x_0), lambda: loss_step(proc, x_0, t, logits, g),
                lambda: training_step(proc, x_0, logits, g))
        for j, fn in enumerate(runs):
            seconds = _cpu_seconds(fn, backward)
            if i >= 2:
                times[j].append(seconds)
    ce, step, train = (statistics.median(v) for v in times)
    return ce, step, train


def table_loss_step(repeats: int, backward: bool, names: set[str] | None) -> None:
    mode = "forward + backward" if backward else "forward"
    print(f"\nTable 1: loss step / cross-entropy ({mode}, 1 thread, median of {repeats}, T = {T})")
    print(f"| process | K | B x L | cross-entropy ms | loss step ms | ratio | target <= {TARGET} "
          f"| training_losses ms | ratio |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for case in CASES:
        if names and case.name not in names:
            continue
        for k in case.sizes:
            proc = case.build(k)
            ce, step, train = measure(proc, k, repeats, backward)
            b, length = SIZES[k]
            verdict = ("met" if step / ce <= TARGET else "MISSED") if case.target else "-"
            print(f"| {case.name} | {k} | {b} x {length} | {ce * 1e3:.2f} | {step * 1e3:.2f} "
                  f"| {step / ce:.2f} | {verdict} | {train * 1e3:.2f} | {train / ce:.2f} |",
                  flush=True)


def _build_cost(build: Callable[[], dd.D3PM]) -> tuple[dd.D3PM, float, float]:
    """The process, its build CPU seconds and wall seconds, with one BLAS thread (scipy's
    eigensolver ignores torch.set_num_threads)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        cpu, wall = time.process_time(), time.perf_counter()
        proc = build()
        return proc, time.process_time() - cpu, time.perf_counter() - wall


def table_memory(skip_nn: bool) -> None:
    print(f"\nTable 2: transition tables at T = {T} (table_bytes; build = D3PM(...) construction, "
          f"1 thread; peak RSS = the benchmark process's maximum so far)")
    print("| process | K | tables MB | build CPU s | build wall s | peak RSS GB "
          "| reference implementation |")
    print("|---|---:|---:|---:|---:|---:|---|")
    rows = [("discretized-gaussian", 256, lambda: gaussian(256),
             "~1 GB (two float64 [T, K, K] arrays)")]
    if not skip_nn:
        rows.append(("nearest-neighbor", 8193, lambda: nearest_neighbor(8193),
                     "~3.5 GB (13 float32 K x K matrix powers)"))
    for name, k, build, reference in rows:
        proc, cpu, wall = _build_cost(build)
        mb = proc.transition.table_bytes() / 1e6
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
        print(f"| {name} | {k} | {mb:,.0f} | {cpu:.1f} | {wall:.1f} | {rss:.2f} | {reference} |",
              flush=True)
        del proc


def _gaussian_with(every: int) -> tuple[dd.D3PM, float]:
    proc, cpu, _ = _build_cost(lambda: dd.D3PM(
        dd.transitions.DiscretizedGaussian(num_classes=256, checkpoint_every=every),
        dd.schedules.linear(T)))
    return proc, cpu


def table_checkpoints(repeats: int, batch: int = 8) -> None:
    """Table 3: the whole Gaussian table (m = 1) against the default checkpoints (m = 2)."""
    k = 256
    print(f"\nTable 3: discretized Gaussian K = {k}, T = {T}, whole cumulative table against "
          f"checkpoints (1 thread; training step: median of {repeats}, [{batch}, 3, 16, 16]; "
          f"full bound: one run, [1, 3, 8, 8])")
    print("| checkpoint_every | tables MB | build CPU s | training step ms | full bound s |")
    print("|---:|---:|---:|---:|---:|")
    g = torch.Generator().manual_seed(0)
    x_0 = torch.randint(0, k, (batch, 3, 16, 16), generator=g)
    logits = torch.randn(batch, 3, 16, 16, k, generator=g)
    x_small = torch.randint(0, k, (1, 3, 8, 8), generator=g)
    logits_small = torch.randn(1, 3, 8, 8, k, generator=g)
    for every in (1, 2):
        proc, build = _gaussian_with(every)
        mb = proc.transition.table_bytes() / 1e6
        step = lambda p=proc: training_step(p, x_0, logits, g)  # noqa: E731
        steps = [_cpu_seconds(step, False) for _ in range(repeats + 1)][1:]
        full = lambda p=proc: p.nll_bound(lambda x_t, t: logits_small, x_small)  # noqa: E731
        with torch.no_grad():
            bound = _cpu_seconds(full, False)
        print(f"| {proc.transition.checkpoint_every} | {mb:,.0f} | {build:.1f} "
              f"| {statistics.median(steps) * 1e3:.1f} | {bound:.1f} |", flush=True)
        del proc


def profile(spec: str, backward: bool) -> None:
    """Print the torch.profiler operator table of 10 loss steps of `name:K`."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    name, k = spec.split(":")
    case = next((c for c in CASES if c.name == name), None)
    if case is None:
        raise SystemExit(f"unknown process {name!r}; known: {', '.join(c.name for c in CASES)}")
    proc, k = case.build(int(k)), int(k)
    measure(proc, k, 3, backward)  # warm up
    g = torch.Generator().manual_seed(0)
    b, length = SIZES.get(k, (16, 256))
    x_0 = torch.randint(0, k, (b, length), generator=g)
    t = torch.randint(1, T + 1, (b,), generator=g)
    logits = torch.randn(b, length, k, generator=g)
    with torch_profile(activities=[ProfilerActivity.CPU], with_stack=False) as prof:
        for _ in range(10):
            loss_step(proc, x_0, t, logits, g)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument("--skip-nn-8193", action="store_true",
                        help="skip the nearest-neighbour build at K = 8193 (minutes)")
    parser.add_argument("--only", default="", help="comma-separated process names of table 1")
    parser.add_argument("--no-memory", action="store_true", help="skip table 2")
    parser.add_argument("--memory-only", action="store_true", help="print table 2 alone")
    parser.add_argument("--no-checkpoints", action="store_true", help="skip table 3")
    parser.add_argument("--checkpoints-only", action="store_true", help="print table 3 alone")
    parser.add_argument("--profile", default="", metavar="NAME:K",
                        help="profile one loss step instead of printing the tables")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.profile:
        profile(args.profile, args.backward)
        return
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; times are process CPU seconds")
    names = set(args.only.split(",")) if args.only else None
    if args.checkpoints_only:
        table_checkpoints(args.repeats)
        return
    if not args.memory_only:
        table_loss_step(args.repeats, args.backward, names)
    if not args.no_memory:
        table_memory(args.skip_nn_8193)
    if not args.no_checkpoints and not args.memory_only:
        table_checkpoints(args.repeats)


if __name__ == "__main__":
    main()
