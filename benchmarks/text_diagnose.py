"""Why a character-level D3PM learns or stalls: the neighbour graph, oracle bounds, and the
bound decomposed by bands of t during training.

    python benchmarks/text_diagnose.py OUT_DIR --data TEXT8_FILE --graph
    python benchmarks/text_diagnose.py OUT_DIR --data TEXT8_FILE --oracle [--sequences 16]
    python benchmarks/text_diagnose.py OUT_DIR --data TEXT8_FILE --path [--processes NAME ...]
    python benchmarks/text_diagnose.py OUT_DIR --data TEXT8_FILE --posterior [--processes NAME ...]
    python benchmarks/text_diagnose.py OUT_DIR --data TEXT8_FILE --preset text8-nn-cpu-small
        [--budgets 0 300 900] [--sequences 16] [--set method.loss=hybrid ...] [--tag NAME]
    python benchmarks/text_diagnose.py OUT_DIR --table

--graph prints the k nearest neighbours of every character in the process of the NN preset (the
PPMI-SVD embeddings of the training split, as training builds them), the share of neighbour
pairs that are both vowels or both consonants, and the spectral gap.

--oracle bounds the processes with two denoisers that need no network, on the first
--sequences test sequences: the unigram marginal p~(x_0 | x_t) = m(x_0) (exact reverse of the
i.i.d. model: the bound must equal the unigram cross-entropy, a check of the process), and the
exact per-position posterior of a bigram Markov chain fitted to the training split
(forward-backward in log space; eq. 4 with p~ = the posterior divided by q(x_t^i | x_0^i)). The
second says how much of the bigram chain's information a process lets a factorised reverse step
recover: a process whose bigram-oracle bound stays near the unigram entropy is not a sensible
process for this data, whatever the network.

--path evaluates the bound along the geometric path log p~ = (1 - w) log m + w log p~_bigram
from the marginal (w = 0, where training stalls) to the bigram oracle (w = 1): whether, and in
which terms, the bound rewards a first step from the plateau towards using x_t.

--posterior compares the bound with the bigram cavity marginal (the bound's optimum p~) and
with the full posterior p(x_0^i | x_t) (the optimum of the cross-entropy term): eq. 4 multiplies
p~ by q(x_t | x_{t-1}) itself, so a p~ that already holds the evidence of x_t^i counts it twice.

--preset trains configs/<preset>.yaml (one thread) and, each time the next budget of process
CPU seconds is spent (0 = untrained), evaluates every term of the bound separately with the EMA
weights (x_t from the same seeded stream at every budget); OUT_DIR/<tag>-<budget>.json.
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
sys.path.insert(0, str(ROOT / "benchmarks"))
BANDS = (1, 10, 50, 100, 250, 500, 750, 1000)  # upper ends of the bands of t (T = 1000)
VOWELS = set("aeiou")


def trainer_for(preset: str, data: str, run_dir: Path, seed: int, overrides: list[str]):
    """The preset's Trainer with periodic work off (and `overrides`, as `d3pm train --set`)."""
    from budgets import preset_trainer

    return preset_trainer(preset, data, run_dir, seed, overrides)


def test_sequences(source, count: int) -> Tensor:
    return torch.cat(list(source.eval_batches("test", count, max_examples=count)))


def graph_report(process) -> str:
    """The neighbour lists, with the vowel/consonant agreement and the spectral gap."""
    transition = process.transition
    chars = "abcdefghijklmnopqrstuvwxyz "[: transition.num_classes]
    nbrs = transition.neighbors.tolist()
    lines, same, pairs = [], 0, 0
    for i, row in enumerate(nbrs):
        lines.append(f"'{chars[i]}': " + " ".join(f"'{chars[j]}'" for j in row))
        for j in row:
            if " " not in (chars[i], chars[j]):
                same += (chars[i] in VOWELS) == (chars[j] in VOWELS)
                pairs += 1
    base = sum((a in VOWELS) == (b in VOWELS) for a in chars[:26] for b in chars[:26] if a != b)
    lines.append(f"same kind (vowel-vowel or consonant-consonant): {same}/{pairs} = "
                 f"{same / pairs:.2f} of neighbour pairs (chance: {base / (26 * 25):.2f})")
    lines.append(f"spectral gap of the rate matrix: {transition.spectral_gap:.4f}")
    return "\n".join(lines)


def bigram_model(ids, num_classes: int) -> tuple[Tensor, Tensor]:
    """log pi [K] (unigram) and log A [K, K] (A[a, b] = P(next = b | a)) of the training ids,
    +0.5 per count."""
    x = torch.from_numpy(ids.astype("int64")).reshape(-1)
    counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts.index_put_((x[:-1], x[1:]), torch.ones(len(x) - 1, dtype=torch.float64),
                      accumulate=True)
    counts += 0.5
    uni = counts.sum(1)
    return (uni / uni.sum()).log(), (counts / counts.sum(1, keepdim=True)).log()


def log_evidence(process, x_t: Tensor, t: Tensor, num_classes: int) -> Tensor:
    """log q(x_t^i | x_0^i = k) for the data classes k < num_classes ([MASK], if added, is
    never an x_0), float64 [B, L, K]; one t per call."""
    qbar = process.cumulative_matrix(int(t[0])).double()
    return qbar.t()[x_t][..., :num_classes].clamp_min(1e-300).log()


def bigram_denoiser(process, log_pi: Tensor, log_a: Tensor):
    """p~(x_0^i | x_t) = posterior / q(x_t^i | x_0^i) under the bigram chain (a 'cavity'
    marginal: forward messages into i times backward messages into i, in log space)."""
    def denoiser(x_t: Tensor, t: Tensor) -> Tensor:
        K = len(log_pi)
        log_e = log_evidence(process, x_t, t, K)
        B, L = x_t.shape
        fwd = torch.empty(B, L, K, dtype=torch.float64)
        bwd = torch.empty(B, L, K, dtype=torch.float64)
        fwd[:, 0] = log_pi
        for i in range(1, L):  # fwd[i](k) = log p(x_0^i = k, x_t^{<i})
            fwd[:, i] = torch.logsumexp((fwd[:, i - 1] + log_e[:, i - 1])[..., None] + log_a, 1)
        bwd[:, L - 1] = 0.0
        for i in range(L - 2, -1, -1):  # bwd[i](k) = log p(x_t^{>i} | x_0^i = k)
            bwd[:, i] = torch.logsumexp(log_a + (log_e[:, i + 1] + bwd[:, i + 1])[:, None], -1)
        cavity = fwd + bwd
        return (cavity - cavity.logsumexp(-1, keepdim=True)).float()
    return denoiser


def posterior_denoiser(process, log_pi: Tensor, log_a: Tensor):
    """The bigram chain's full per-position posterior p(x_0^i | x_t), own x_t^i included: the
    optimum of the cross-entropy term, where the bound's optimum is the cavity marginal
    (`bigram_denoiser`), since eq. 4 multiplies p~ by q(x_t | x_{t-1}) itself."""
    cavity = bigram_denoiser(process, log_pi, log_a)

    def denoiser(x_t: Tensor, t: Tensor) -> Tensor:
        log_e = log_evidence(process, x_t, t, len(log_pi))
        return (cavity(x_t, t).double() + log_e).log_softmax(-1).float()
    return denoiser


# Rows of the oracle table: (preset, overrides).
ORACLE_PROCESSES = {
    "uniform, cosine": ("text8-uniform-cpu-small", []),
    "NN k = 5, mutual information": ("text8-nn-cpu-small", []),
    "absorbing, 1/(T-t+1)": ("text8-absorbing-cpu-small", []),
    "NN k = 5, linear": ("text8-nn-cpu-small", ["method.schedule=linear"]),
    "NN k = 2, mutual information": ("text8-nn-cpu-small", ["method.transition.knn=2"]),
    "NN k = 10, mutual information": ("text8-nn-cpu-small", ["method.transition.knn=10"]),
}


def oracle_report(source, data: str, sequences: int, seed: int, only: list[str]) -> str:
    """Bounds of the marginal and bigram-oracle denoisers under the presets' processes."""
    log_pi, log_a = bigram_model(source.split("train"), source.num_classes)
    x_0 = test_sequences(source, sequences)
    n = x_0.numel() * math.log(2)
    nll_uni = -log_pi[x_0].sum() / n
    nll_bi = -(log_pi[x_0[:, 0]].sum() + log_a[x_0[:, :-1], x_0[:, 1:]].sum()) / n
    lines = [f"{sequences} test sequences of {x_0.shape[1]} characters: -log p(x_0) under the "
             f"unigram model {nll_uni:.4f}, under the bigram chain {nll_bi:.4f} bits/char", "",
             "| process | marginal denoiser | bigram oracle | oracle by band of t (L_0, then "
             + ", ".join(_band_names()[1:]) + ") |", "|---|---:|---:|---|"]
    marginal = log_pi.float()
    for name in only or ORACLE_PROCESSES:
        process = _process_of(*ORACLE_PROCESSES[name], data, seed)
        row = [bound_bits(process, den, x_0, seed)
               for den in (lambda x_t, t: marginal.expand(*x_t.shape, -1),
                           bigram_denoiser(process, log_pi, log_a))]
        bands_ = ", ".join(f"{v:.3f}" for v in _bands(row[1]["per_t"]).values())
        lines.append(f"| {name} | {row[0]['total']:.4f} | "
                     f"{row[1]['total']:.4f} +- {row[1]['stderr']:.4f} | {bands_} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


PATH_WEIGHTS = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)


def geometric_path(log_m: Tensor, oracle, weight: float):
    """The denoiser log p~ = (1 - w) log m + w log p~_oracle (renormalised): w = 0 is the
    marginal solution where training stalls, w = 1 the bigram oracle."""
    def denoiser(x_t: Tensor, t: Tensor) -> Tensor:
        mixed = (1 - weight) * log_m + weight * oracle(x_t, t).double()
        return mixed.log_softmax(-1).float()
    return denoiser


def path_report(source, data: str, sequences: int, seed: int, only: list[str]) -> str:
    """The bound, by band of t, along the geometric path from the marginal to the bigram oracle:
    how much the bound rewards a first step from the plateau towards using x_t, per process.
    Every weight sees the same draws of x_t (same seed)."""
    log_pi, log_a = bigram_model(source.split("train"), source.num_classes)
    x_0 = test_sequences(source, sequences)
    lines = [f"Bound (bits/char, {sequences} test sequences) of log p~ = (1 - w) log m + w log "
             "p~_bigram, by weight w; then by band of t (" + ", ".join(_band_names()) + ")", "",
             "| process | " + " | ".join(f"w = {w:g}" for w in PATH_WEIGHTS) + " |",
             "|---|" + "---:|" * len(PATH_WEIGHTS)]
    bands_lines = []
    for name in only or ORACLE_PROCESSES:
        process = _process_of(*ORACLE_PROCESSES[name], data, seed)
        oracle = bigram_denoiser(process, log_pi, log_a)
        totals = []
        for w in PATH_WEIGHTS:
            bound = bound_bits(process, geometric_path(log_pi, oracle, w), x_0, seed)
            totals.append(bound["total"])
            bands_lines.append(f"| {name} | {w:g} | " + " | ".join(
                f"{v:.4f}" for v in _bands(bound["per_t"]).values()) + " |")
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in totals) + " |")
        print(lines[-1], flush=True)
    head = "| process | w | " + " | ".join(_band_names()) + " |"
    return "\n".join([*lines, "", head, "|---|---:|" + "---:|" * len(_band_names()),
                      *bands_lines])


def posterior_report(source, data: str, sequences: int, seed: int, only: list[str]) -> str:
    """Bounds with the bigram cavity (the bound's optimum) against the full posterior (the
    cross-entropy's optimum, own-position evidence counted twice by eq. 4)."""
    log_pi, log_a = bigram_model(source.split("train"), source.num_classes)
    x_0 = test_sequences(source, sequences)
    lines = [f"Bound (bits/char, {sequences} test sequences) with p~ = the bigram cavity marginal "
             "and with p~ = the full posterior", "",
             "| process | cavity (bound's optimum) | posterior (CE's optimum) |", "|---|---:|---:|"]
    for name in only or ORACLE_PROCESSES:
        process = _process_of(*ORACLE_PROCESSES[name], data, seed)
        row = []
        for make in (bigram_denoiser, posterior_denoiser):
            bound = bound_bits(process, make(process, log_pi, log_a), x_0, seed)
            row.append(f"{bound['total']:.4f} +- {bound['stderr']:.4f}")
        lines.append(f"| {name} | {row[0]} | {row[1]} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def bound_bits(process, denoiser, x_0: Tensor, seed: int) -> dict:
    """The full bound (every term, `digits_diagnose.bound_terms`) of a data-vocabulary
    denoiser in bits/char: mean total, its standard error over sequences, L_T and the mean
    term per t (row t - 1 holds L_{t-1})."""
    from digits_diagnose import bound_terms

    prior, terms = bound_terms(process, _padded(denoiser, process), x_0, seed)
    scale = x_0.shape[1] * math.log(2)
    total = (prior + terms.sum(0)) / scale
    return {"total": float(total.mean()), "stderr": float(total.std() / math.sqrt(len(total))),
            "prior": float(prior.mean() / scale), "per_t": (terms.mean(1) / scale).tolist()}


def data_source(data: str):
    """The text data of the --data argument, as the cpu-small presets build it."""
    from discrete_diffusion.training.builders import build_data
    from discrete_diffusion.training.config import load_config

    return build_data(load_config(ROOT / "configs" / "text8-nn-cpu-small.yaml"), data)


def _process_of(preset: str, overrides: list[str], data: str, seed: int):
    """The D3PM of a preset with `overrides`."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return trainer_for(preset, data, Path(tmp), seed, overrides).method.process


def _padded(den, process):
    """A data-vocabulary denoiser for a process with an added [MASK] (logit -inf for it)."""
    extra = process.num_classes
    def wrapped(x_t: Tensor, t: Tensor) -> Tensor:
        logits = den(x_t, t)
        if logits.shape[-1] < extra:
            pad = torch.full((*logits.shape[:-1], extra - logits.shape[-1]), -1e4)
            logits = torch.cat([logits, pad], -1)
        return logits
    return wrapped


def _band_names() -> list[str]:
    return list(_bands([0.0] * BANDS[-1]))


def _bands(per_t: list[float]) -> dict[str, float]:
    """L_0 and the terms summed by band of t (row t - 1 holds L_{t-1}), for T = 1000."""
    scale = len(per_t) / BANDS[-1]
    ends = [max(2, round(e * scale)) for e in BANDS[1:]]
    out, low = {"L_0": per_t[0]}, 2
    for high in ends:
        out[f"t {low}-{high}"] = sum(per_t[low - 1:high])
        low = high + 1
    return out


def train_and_decompose(args: argparse.Namespace) -> None:
    """Train args.preset, evaluating the decomposed bound at each budget of CPU seconds; the
    gradient norms (before clipping) and the cross-entropy term are recorded per update."""
    from discrete_diffusion.methods.diffusion import as_denoiser

    tag = args.tag or args.preset
    trainer = trainer_for(args.preset, args.data, args.out / f"run-{tag}", args.seed, args.set)
    norms, ce = _spy(trainer)
    x_0 = test_sequences(trainer.data, args.sequences)
    start = time.process_time()
    for budget in sorted(args.budgets):
        while time.process_time() - start < budget:
            trainer.train_step()
        spent, t0 = time.process_time() - start, time.process_time()
        method, model = trainer.method, trainer.eval_model.eval()
        result = {"tag": tag, "preset": args.preset, "set": args.set, "budget": budget,
                  "train_cpu_s": spent, "steps": trainer.step, "sequences": len(x_0),
                  "grad_norms": norms[:], "ce_bits": ce[:],
                  "grad_clip": trainer.config.train.grad_clip}
        if hasattr(method.process, "q_posterior_logits"):  # a D3PM: every term
            bound = bound_bits(method.process, as_denoiser(model, method.excluded), x_0,
                               args.seed)
            result.update(prior_bpc=bound["prior"], per_t_bpc=bound["per_t"],
                          total=bound["total"], stderr=bound["stderr"])
        else:  # continuous time: its exact discrete bound on the 1000-step grid
            from discrete_diffusion.evaluation.bound import evaluate_bound

            gen = torch.Generator().manual_seed(args.seed)
            (entry,) = evaluate_bound(method, model, [x_0], [1000], gen, unit="char")
            result.update(total=entry["bits_per_unit"], stderr=entry["stderr"])
        result["eval_cpu_s"] = time.process_time() - t0
        (args.out / f"{tag}-{budget:g}.json").write_text(json.dumps(result) + "\n")
        print(f"{tag} @ {budget:g} CPU-s ({trainer.step} updates): {result['total']:.4f} +- "
              f"{result['stderr']:.4f} bits/char", flush=True)
        start += time.process_time() - t0  # evaluation is not training budget


def _spy(trainer) -> tuple[list[float], list[float]]:
    """Lists that fill with each update's gradient norm and mean cross-entropy term (bits per
    position), read from what the trainer records."""
    norms: list[float] = []
    ce: list[float] = []
    add = trainer.stats.add

    def spy(name, values, t=None):
        if name == "grad_norm":
            norms.append(float(values.detach().reshape(-1)[0]))
        elif name == "ce_bits":
            ce.append(float(values.detach().double().mean()))
        return add(name, values, t)

    trainer.stats.add = spy
    return norms, ce


def table(out: Path) -> str:
    rows = sorted((json.loads(p.read_text()) for p in out.glob("*.json")),
                  key=lambda r: (r["tag"], r["budget"]))
    keys = ["L_T", *_band_names()]
    lines = ["| run | CPU-s | updates | bits/char | stderr | " + " | ".join(keys) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(keys)]
    for r in rows:
        parts = [r["prior_bpc"], *_bands(r["per_t_bpc"]).values()] if "per_t_bpc" in r else []
        lines.append(f"| {r['tag']} | {r['budget']:g} | {r['steps']} | {r['total']:.4f} | "
                     f"{r['stderr']:.4f} | " + " | ".join(f"{v:.3f}" for v in parts) + " |")
    lines += ["", "Gradient norms before clipping (median over each run's updates so far; share "
              "above the clip) and the cross-entropy term (bits/char, mean of the last 100 "
              "updates):", "", "| run | CPU-s | median grad norm | share clipped | CE term |",
              "|---|---:|---:|---:|---:|"]
    for r in rows:
        if not r.get("grad_norms"):
            continue
        norms = torch.tensor(r["grad_norms"])
        clip = r.get("grad_clip") or math.inf
        ce = r["ce_bits"][-100:]
        lines.append(f"| {r['tag']} | {r['budget']:g} | {float(norms.median()):.3g} | "
                     f"{float((norms > clip).double().mean()):.2f} | "
                     f"{sum(ce) / max(len(ce), 1):.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--data", help="text8-format file (or 'enwiki')")
    parser.add_argument("--graph", action="store_true", help="print the NN graph and exit")
    parser.add_argument("--oracle", action="store_true", help="oracle bounds and exit")
    parser.add_argument("--path", action="store_true",
                        help="bounds from the marginal towards the bigram oracle and exit")
    parser.add_argument("--posterior", action="store_true",
                        help="bounds of the bigram cavity against the full posterior and exit")
    parser.add_argument("--processes", nargs="+", choices=list(ORACLE_PROCESSES),
                        metavar="NAME", help="with --oracle, --path, --posterior: these rows")
    parser.add_argument("--preset", help="configs/<preset>.yaml to train and decompose")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, as d3pm train --set")
    parser.add_argument("--tag", help="name of the results (default: the preset)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0, 300, 900])
    parser.add_argument("--sequences", type=int, default=16, help="first N test sequences")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--table", action="store_true", help="print the table of OUT and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.out))
        return 0
    if not args.data:
        parser.error("--data is required")
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.graph:
        print(graph_report(_process_of("text8-nn-cpu-small", [], args.data, args.seed)))
    elif args.oracle or args.path or args.posterior:
        report, name = ((oracle_report, "oracle-more" if args.processes else "oracle")
                        if args.oracle else (path_report, "path") if args.path
                        else (posterior_report, "posterior"))
        text = report(data_source(args.data), args.data, args.sequences, args.seed,
                      args.processes)
        (args.out / f"{name}.md").write_text(text + "\n")
        print(text)
    elif args.preset:
        train_and_decompose(args)
    else:
        parser.error("one of --graph, --oracle, --preset or --table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
