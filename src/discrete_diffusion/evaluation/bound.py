"""The likelihood bound on held-out data, with Monte-Carlo standard errors.

For each requested number of inference steps S the per-example bound -log p(x_0) <= L (nats,
`Method.nll`) is divided by (positions * ln 2) to give bits per unit; the result is the mean over
all examples, its standard error std / sqrt(n) (sample std, ddof = 1: the spread of the
per-example bound reflects both the data and the one-sample noise of each term, so this is the
uncertainty of the reported mean), and, for unit "token", perplexity = exp(mean nats per token).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from discrete_diffusion.methods.base import Method


def summarise(bits: Tensor, steps: int | str | None, unit: str = "token") -> dict:
    """Mean, standard error and count of per-example bits per unit `bits` [n]."""
    bits = bits.double()
    n = bits.numel()
    if n == 0:
        raise ValueError("no examples to evaluate")
    mean = float(bits.mean())
    stderr = float(bits.std(correction=1) / math.sqrt(n)) if n > 1 else None
    out = {"steps": steps, "bits_per_unit": mean, "stderr": stderr, "count": n, "unit": unit}
    if unit == "token":
        out["perplexity"] = math.exp(mean * math.log(2))
    return out


@torch.no_grad()
def evaluate_bound(method: Method, model: nn.Module, batches: Iterable[Tensor],
                   steps_list: Sequence[int | str | None], generator: torch.Generator | None = None,
                   *, unit: str = "token", device: torch.device | str | None = None,
                   progress=None) -> list[dict]:
    """Bound in bits per unit for every entry of `steps_list` (None = all T steps; the word
    "continuous" is passed through to `Method.nll`: the continuous-time bound).

    Args:
        batches: one pass of LongTensor [B, *example_shape] (each batch is used for every
            step count, so the comparison between step counts is paired).
        generator: noise of the Monte-Carlo terms (on `device`).
        unit: "char", "token" or "dim"; "token" adds perplexity.
        progress: optional callable(num_examples_done).
    Returns:
        One dict per step count: steps, bits_per_unit, stderr, count, unit (+ perplexity).
    """
    per_steps: list[list[Tensor]] = [[] for _ in steps_list]
    done = 0
    for x_0 in batches:
        x_0 = x_0.to(device) if device is not None else x_0
        positions = math.prod(x_0.shape[1:])
        for bucket, steps in zip(per_steps, steps_list):
            nats = method.nll(model, x_0, steps=steps, generator=generator)
            bucket.append(nats.double().cpu() / (positions * math.log(2)))
        done += x_0.shape[0]
        if progress is not None:
            progress(done)
    return [summarise(torch.cat(bucket) if bucket else torch.empty(0), steps, unit)
            for bucket, steps in zip(per_steps, steps_list)]


def named_result(entry: dict) -> dict:
    """An `evaluate_bound` entry with the field names of `d3pm eval --json`: bits_per_token,
    stderr, num_sequences (+ bits_per_char, perplexity) for sequences; bits_per_dim, stderr,
    num_images for images."""
    out = {"steps": entry["steps"]}
    if entry["unit"] == "dim":
        out.update(bits_per_dim=entry["bits_per_unit"], stderr=entry["stderr"],
                   num_images=entry["count"])
        return out
    out.update(bits_per_token=entry["bits_per_unit"], stderr=entry["stderr"],
               num_sequences=entry["count"])
    if entry["unit"] == "char":
        out["bits_per_char"] = entry["bits_per_unit"]
    if "perplexity" in entry:
        out["perplexity"] = entry["perplexity"]
    return out
