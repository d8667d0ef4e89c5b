"""Where the digits bound is spent: L_T, the diffusion terms by band of t, and L_0 (eq. 1).

    python benchmarks/digits_diagnose.py OUT_DIR --preset digits-gauss-cpu-small
                                         [--budgets 0 120 480] [--images 128] [--seed 0]
                                         [--data digits|blur33]
    python benchmarks/digits_diagnose.py OUT_DIR --table
    python benchmarks/digits_diagnose.py OUT_DIR --oracle

Trains one configs/<preset>.yaml with the project's Trainer (one thread, as
benchmarks/bench_digits.py) and, each time the training has spent the next budget of process
CPU seconds (0 = the untrained initial state), evaluates the EMA weights on the first --images
test digits: every term of the bound is computed separately,

    L_T = KL(q(x_T | x_0) || p(x_T)),
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t = 2..T,
    L_0 = -log p(x_0 | x_1),

with x_t ~ q(x_t | x_0) drawn from the same seeded stream at every budget (common random
numbers, so differences between budgets are not noise in x_t). Results go to
OUT_DIR/<preset>-<budget>.json (per-t means in bits/dim, per-image totals); --table prints the
decomposition of every result in OUT_DIR.

--oracle checks the processes themselves, without a network: with p~(x_0 | x_t) = m(x_0), the
per-pixel marginals of the training digits, eq. 4 is the exact reverse of m(x_0) q(x_{1:T} | x_0),
so every process's bound must equal -log m(x_0) (up to L_T and one-sample noise); with the exact
posterior of a 10-class mixture (`mixture_denoiser`) the excess over -log m(x_0) is the cost of
the factorised reverse step at this T.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # budgets.py
DIMS = 64  # 1 x 8 x 8 pixels per digit
# Upper ends of the bands of t in the tables, for T = 250: the Gaussian's linear schedule
# destroys most of a pixel's information by t = 62, so its small t get finer bands.
UPPER_ENDS = (5, 15, 40, 62, 125, 188, 250)


def blurred_splits() -> dict:
    """The digits split blurred by the 3x3 binomial kernel [1, 2, 1]^2 / 16 and requantised to
    33 levels (round(2 * blurred)): a smoother variant, 18 % of pixels at 0 or 32 against 58 %
    at 0 or 16 in the originals. uint8 [N, 1, 8, 8]."""
    import numpy as np

    from discrete_diffusion.data.digits import load_digit_splits

    kernel = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0]) / 16
    out = {}
    for split, x in load_digit_splits().items():
        pad = np.pad(x[:, 0].astype(np.float64), ((0, 0), (1, 1), (1, 1)))
        blur = sum(kernel[i, j] * pad[:, i:i + 8, j:j + 8] for i in range(3) for j in range(3))
        out[split] = np.round(2 * blur).astype(np.uint8)[:, None]
    return out


def build_source(data: str):
    """The built-in digits ("digits") or their blurred 33-level variant ("blur33")."""
    from discrete_diffusion.data import digits
    from discrete_diffusion.data.image_arrays import ImageArraySource

    if data == "digits":
        return digits.build(digits.Config(), "digits")
    return ImageArraySource("digits-blur33", blurred_splits(), 33, flip=False,
                            description="digits blurred, 33 grey levels")


def build_trainer(preset: str, run_dir: Path, seed: int, data: str):
    """The preset's Trainer on `data` (see build_source), with periodic work switched off."""
    from budgets import preset_trainer

    return preset_trainer(preset, build_source(data), run_dir, seed)


def _kl(log_q: Tensor, log_p: Tensor) -> Tensor:
    """KL(q || p) over the last axis [..., K] -> [...]; 0 log 0 = 0."""
    return torch.where(log_q > -math.inf, log_q.exp() * (log_q - log_p), 0.0).sum(-1)


@torch.no_grad()
def bound_terms(process, denoiser, x_0: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """Per-image terms of the bound in nats: prior [B] and terms [T, B] (row t - 1 = L_{t-1},
    row 0 = L_0)."""
    gen = torch.Generator().manual_seed(seed)
    T, B = process.num_steps, x_0.shape[0]
    terms = torch.zeros(T, B, dtype=torch.float64)
    for t_int in range(T, 0, -1):
        t = torch.full((B,), t_int, dtype=torch.long)
        x_t = process.q_sample(x_0, t, generator=gen)
        log_p = process.p_logits(denoiser(x_t, t), x_t, t)
        if t_int == 1:
            per_pos = -log_p.gather(-1, x_0[..., None])[..., 0]
        else:
            per_pos = _kl(process.q_posterior_logits(x_0, x_t, t), log_p)
        terms[t_int - 1] = per_pos.flatten(1).sum(1).double()
    return process.prior_kl(x_0).double(), terms


def evaluate(trainer, images: int, seed: int, data: str) -> dict:
    """The decomposed bound of the EMA weights on the first `images` test digits."""
    from discrete_diffusion.methods.diffusion import as_denoiser

    method, model = trainer.method, trainer.eval_model.eval()
    x_0 = torch.cat(list(build_source(data).eval_batches("test", images, max_examples=images)))
    prior, terms = bound_terms(method.process, as_denoiser(model, method.excluded), x_0, seed)
    total = (prior + terms.sum(0)) / (DIMS * math.log(2))
    return {"images": int(x_0.shape[0]), "T": method.num_steps,
            "prior_bpd": float(prior.mean() / (DIMS * math.log(2))),
            "per_t_bpd": (terms.mean(1) / (DIMS * math.log(2))).tolist(),
            "total_bpd_per_image": total.tolist()}


def run(args: argparse.Namespace) -> None:
    """Train args.preset, evaluating at each budget of process CPU seconds."""
    torch.set_num_threads(1)
    trainer = build_trainer(args.preset, args.out / f"run-{args.preset}", args.seed, args.data)
    spent, start = 0.0, time.process_time()
    for budget in sorted(args.budgets):
        while time.process_time() - start < budget:
            trainer.train_step()
        spent = time.process_time() - start
        t0 = time.process_time()
        result = evaluate(trainer, args.images, args.seed, args.data)
        result.update(preset=args.preset, data=args.data, budget=budget, train_cpu_s=spent,
                      steps=trainer.step, eval_cpu_s=time.process_time() - t0)
        path = args.out / f"{args.preset}-{budget:g}.json"
        path.write_text(json.dumps(result) + "\n")
        print(f"{path.name}: {summarise(result)['total']:.4f} bits/dim", flush=True)
        start += time.process_time() - t0  # evaluation is not training budget


def _class_histograms() -> tuple[Tensor, Tensor, Tensor]:
    """log pi_c [C], log m_c(x_0^i) [C, 64, 17] of the 10 digit classes of the training split
    (+0.5 per count), and the test digits [360, 64], split as data/digits.py does."""
    import numpy as np
    from sklearn.datasets import load_digits

    from discrete_diffusion.data import digits

    raw = load_digits()
    order = np.random.default_rng(digits.SPLIT_SEED).permutation(len(raw.images))
    x = torch.from_numpy(raw.images.astype("int64")).reshape(-1, DIMS)
    y = torch.from_numpy(raw.target)
    train, labels = x[order[digits.NUM_TEST:]], y[order[digits.NUM_TEST:]]
    one_hot = torch.nn.functional.one_hot(train, 17).double()
    counts = torch.stack([one_hot[labels == c].sum(0) for c in range(10)]) + 0.5
    log_pi = torch.stack([(labels == c).double().mean() for c in range(10)]).log()
    return log_pi, (counts / counts.sum(-1, keepdim=True)).log(), x[order[:digits.NUM_TEST]]


def mixture_denoiser(process, log_pi: Tensor, log_mc: Tensor):
    """p~(x_0^i | x_t) = m(x_0^i | x_t) / q(x_t^i | x_0^i) for m(x_0) = sum_c pi_c prod_i
    m_c(x_0^i): eq. 4 then gives the exact per-pixel marginals of m's reverse step, so the
    bound exceeds -log m(x_0) only by what a reverse step factorised over pixels cannot hold."""
    def denoiser(x_t: Tensor, t: Tensor) -> Tensor:
        x = x_t.reshape(len(x_t), DIMS)
        qbar = process.cumulative_matrix(int(t[0])).double()  # t is one value per call here
        log_l = qbar.t()[x].clamp_min(1e-300).log()  # [B, 64, K] log q(x_t^i | x_0^i = k)
        joint = log_mc[None] + log_l[:, None]  # [B, C, 64, K]
        evidence = torch.logsumexp(joint, -1)  # [B, C, 64]
        log_w = (log_pi + evidence.sum(-1)).log_softmax(-1)  # m(c | x_t)
        post = torch.logsumexp(log_w[..., None, None] + joint - evidence[..., None], 1)
        return (post - log_l).clamp(-1e4, 1e4).float().reshape(*x_t.shape, -1)
    return denoiser


def oracle_check(images: int, seed: int) -> str:
    """Bounds of two non-network denoisers under the presets' three processes (T = 250), bits/dim
    on the first `images` test digits: the per-pixel marginal p~(x_0 | x_t) = m(x_0) (exact,
    the bound must equal -log m(x_0)) and the 10-class mixture of `mixture_denoiser`."""
    import discrete_diffusion as dd

    log_pi, log_mc, test = _class_histograms()
    log_m = torch.logsumexp(log_mc + log_pi[:, None, None], 0)  # [64, K] pixel marginals
    x_0 = test[:images].reshape(-1, 1, 8, 8)
    flat = x_0.reshape(len(x_0), DIMS)
    nll_m = -log_m[None].expand(len(flat), -1, -1).gather(-1, flat[..., None]).sum((1, 2))
    lp = log_mc[None].expand(len(flat), -1, -1, -1).gather(
        -1, flat[:, None, :, None].expand(-1, 10, -1, 1)).sum((2, 3))
    nll_mix = -torch.logsumexp(lp + log_pi, -1)
    scale = DIMS * math.log(2)
    lines = [f"-log m(x_0): marginal {float(nll_m.mean()) / scale:.4f}, "
             f"10-class mixture {float(nll_mix.mean()) / scale:.4f} bits/dim"]
    processes = {"gaussian, linear 4e-4 -> 0.08": (dd.transitions.DiscretizedGaussian(17),
                                                   dd.schedules.linear(250, 4e-4, 0.08)),
                 "absorbing, jsd": (dd.transitions.Absorbing(17, 8), dd.schedules.jsd(250)),
                 "uniform, cosine": (dd.transitions.Uniform(17), dd.schedules.cosine(250))}
    marginal = log_m.float().reshape(1, 8, 8, 17)
    for name, (transition, betas) in processes.items():
        process = dd.D3PM(transition, betas)
        for kind, den in (("marginal", lambda x_t, t: marginal.expand(*x_t.shape, 17)),
                          ("mixture", mixture_denoiser(process, log_pi, log_mc))):
            prior, terms = bound_terms(process, den, x_0, seed)
            total = (prior + terms.sum(0)) / scale
            lines.append(f"{name}, {kind}: bound {float(total.mean()):.4f} +- "
                         f"{float(total.std() / math.sqrt(len(total))):.4f} bits/dim")
    return "\n".join(lines)


def summarise(r: dict) -> dict:
    """Bits/dim of L_T, L_0, the diffusion terms by band of t (UPPER_ENDS, scaled to T), the
    total and its stderr."""
    per_t, T = r["per_t_bpd"], r["T"]
    ends = sorted({max(2, round(e * T / 250)) for e in UPPER_ENDS} | {T})
    out = {"L_T": r["prior_bpd"], "L_0": per_t[0]}
    low = 2
    for high in ends:  # row t - 1 holds L_{t-1}
        out[f"t {low}-{high}"] = sum(per_t[low - 1:high])
        low = high + 1
    totals = torch.tensor(r["total_bpd_per_image"], dtype=torch.float64)
    out["total"] = float(totals.mean())
    out["stderr"] = float(totals.std() / math.sqrt(totals.numel()))
    return out


def table(out: Path) -> str:
    """Markdown table of every OUT/<preset>-<budget>.json."""
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    if not rows:
        raise FileNotFoundError(f"no results in {out}")
    rows.sort(key=lambda r: (r["preset"], r["budget"]))
    keys = list(summarise(rows[0]))
    lines = ["| preset | CPU-s | updates | " + " | ".join(keys) + " |",
             "|---|---:|---:|" + "---:|" * len(keys)]
    for r in rows:
        s = summarise(r)
        lines.append(f"| {r['preset']} | {r['budget']:g} | {r['steps']} | "
                     + " | ".join(f"{s[k]:.4f}" for k in keys) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--preset", help="configs/<preset>.yaml to train and decompose")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0, 120, 480],
                        help="training CPU seconds at which to evaluate")
    parser.add_argument("--images", type=int, default=128, help="first N test digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", choices=["digits", "blur33"], default="digits",
                        help="the digits, or their blurred 33-level variant")
    parser.add_argument("--table", action="store_true", help="print the table of OUT and exit")
    parser.add_argument("--oracle", action="store_true",
                        help="check the bound of the marginal denoiser and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.out))
        return 0
    if args.oracle:
        torch.set_num_threads(1)
        print(oracle_check(args.images, args.seed))
        return 0
    if not args.preset or not (ROOT / "configs" / f"{args.preset}.yaml").is_file():
        parser.error(f"--preset: no configs/{args.preset}.yaml")
    args.out.mkdir(parents=True, exist_ok=True)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
