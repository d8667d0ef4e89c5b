"""`d3pm sample`: draw samples from a trained model; infill or reconstruct text.

    d3pm sample --checkpoint RUN_DIR_OR_FILE --num N [--steps S] [--seed S] [--out PATH]
                [--progressive] [--infill TEXT] [--corrupt TEXT --noise-level F]
                [--save-npy FILE] [--sampler NAME] [--stats FILE]

Text codecs print the samples (and write them to --out when given); image codecs write a PNG
grid to --out, an array to --save-npy, or both (one of them is required for images).
--progressive renders x_t at t = T, 0.9T, ..., 0. --infill holds the given characters ('_'
marks a position to fill; a shorter text leaves the rest free).
--corrupt draws x_t ~ q(x_t | x_0) at t = round(F * T) from the encoded text and denoises it
back from t, printing original / corrupted / reconstructed. EMA weights are used when present.
--sampler picks the step rule (ancestral, first_hitting, remdm, remdm:eta=0.05, tau_leaping,
confidence; see `discrete_diffusion.sampling`); --stats writes JSON {"sampler", "steps",
"nfe_per_sample", "seconds"}, the network passes counted as rows given to the model per sample.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import Tensor, nn

PROGRESSIVE_FRACTIONS = [i / 10 for i in range(10, -1, -1)]  # t = T, 0.9T, ..., 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sample", help="sample from a trained model")
    p.add_argument("--checkpoint", required=True, help="run folder (latest) or checkpoint file")
    p.add_argument("--num", type=int, default=4, help="number of samples (default 4)")
    p.add_argument("--steps", type=int, help="inference steps (default: all T)")
    p.add_argument("--infill", metavar="TEXT", help="hold this text; '_' marks positions to fill")
    p.add_argument("--corrupt", metavar="TEXT", help="corrupt this text and reconstruct it")
    p.add_argument("--noise-level", type=float, help="F in [0, 1]: corrupt at t = round(F T)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path,
                   help="output file (for images: a PNG grid; --out or --save-npy is required)")
    p.add_argument("--progressive", action="store_true", help="render x_t from T down to 0")
    p.add_argument("--save-npy", type=Path, metavar="FILE",
                   help="also save the samples as an int array [N, ...] (.npy), e.g. for "
                        "`d3pm figures fid --samples FILE`")
    p.add_argument("--sampler", default="ancestral", metavar="NAME",
                   help="step rule: ancestral (default), first_hitting, remdm[:eta=E], "
                        "tau_leaping, confidence")
    p.add_argument("--stats", type=Path, metavar="FILE",
                   help="write JSON {sampler, steps, nfe_per_sample, seconds}")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    if args.num < 1:
        raise ValueError(f"--num must be positive, got {args.num}")
    if args.infill is not None and args.corrupt is not None:
        raise ValueError("give --infill or --corrupt, not both")
    if (args.corrupt is None) != (args.noise_level is None):
        raise ValueError("--corrupt and --noise-level go together")
    if args.noise_level is not None and not 0.0 <= args.noise_level <= 1.0:
        raise ValueError(f"--noise-level must be in [0, 1], got {args.noise_level}")


def run(args: argparse.Namespace) -> int:
    from discrete_diffusion.cli.common import device_of
    from discrete_diffusion.figures.samples import write_samples, write_trajectory
    from discrete_diffusion.files import writable_file
    from discrete_diffusion.training.builders import load_trained

    _check_args(args)
    if args.save_npy is not None and args.save_npy.suffix != ".npy":
        raise ValueError(f"--save-npy needs a .npy file name, got {args.save_npy}")
    for path in (args.out, args.save_npy):  # before the sampling, not after it
        if path is not None:
            writable_file(path)
    device = device_of(args.device)
    trained = load_trained(args.checkpoint, device)
    codec = trained.codec()
    if codec.kind == "image" and args.out is None and args.save_npy is None:
        raise ValueError("image samples need --out PNG (a grid) or --save-npy FILE (an array)")
    if codec.kind == "image" and args.out is None and args.progressive:
        raise ValueError("--progressive image samples need --out PNG")
    gen = torch.Generator(device).manual_seed(args.seed)
    if args.corrupt is not None:
        return _reconstruct(args, trained, codec, gen)
    fixed = _infill(args.infill, codec, trained.info.example_shape) if args.infill else None
    out = _counted(args, trained, lambda model: trained.method.sample(
        model, args.num, steps=args.steps, generator=gen, fixed=fixed,
        trajectory=args.progressive, sampler=args.sampler))
    if args.progressive:
        x, path = out
        text = write_trajectory(codec, _pick(path, trained.method.num_steps), out=args.out)
    elif codec.kind == "image" and args.out is None:
        x, text = out, None  # --save-npy alone: the array is the output
    else:
        x = out
        text = write_samples(codec, out.cpu(), out=args.out)
    if args.save_npy is not None:
        _save_npy(x, args.save_npy)
    if text and codec.kind != "image":  # an image codec returns the file it wrote
        print(text)
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0


class _RowCounter(nn.Module):
    """The model, counting the rows (sequences) given to it: network passes per sample."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x: Tensor, *args: Tensor) -> Tensor:
        self.rows += x.shape[0]
        return self.model(x, *args)


def _counted(args: argparse.Namespace, trained, draw):
    """draw(model) with the model's rows counted and the wall clock read (CUDA synchronised);
    writes --stats when asked."""
    model = _RowCounter(trained.model)
    device = next(trained.model.parameters()).device
    start = time.perf_counter()
    out = draw(model)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if args.stats is not None:
        from discrete_diffusion.files import atomic_write_json

        steps = args.steps if args.steps is not None else trained.method.num_steps
        args.stats.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.stats, {"sampler": args.sampler, "steps": steps,
                                       "nfe_per_sample": model.rows / args.num,
                                       "seconds": seconds}, indent=1)
        print(f"wrote {args.stats}")
    return out


def _save_npy(x: Tensor, path: Path) -> None:
    """Write the samples [N, ...] as a .npy array, atomically (temp file, then rename)."""
    import numpy as np

    from discrete_diffusion.files import atomic_path

    with atomic_path(path) as tmp:
        np.save(tmp, x.cpu().numpy().astype(np.int64 if x.max() > 65535 else np.uint16))
    print(f"wrote {path}")


def _fit_length(ids: Tensor, shape: tuple[int, ...], what: str) -> int:
    if len(shape) != 1:
        raise ValueError(f"{what} needs sequence data; this model's examples have shape {shape}")
    if len(ids) > shape[0]:
        raise ValueError(f"{what} text has {len(ids)} units but examples hold {shape[0]}")
    return shape[0] - len(ids)


def _infill(text: str, codec, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """(held mask [L], values [L]); positions beyond the text are free."""
    ids, held = codec.parse_infill(text)
    pad = _fit_length(ids, shape, "--infill")
    return (torch.cat([held.bool(), torch.zeros(pad, dtype=torch.bool)]),
            torch.cat([ids.long(), torch.zeros(pad, dtype=torch.long)]))


def _pick(path: list[tuple[int, Tensor]], num_steps: int) -> list[tuple[int, Tensor]]:
    """The trajectory entries nearest to t = T, 0.9T, ..., 0 (no repeats)."""
    chosen: list[tuple[int, Tensor]] = []
    for f in PROGRESSIVE_FRACTIONS:
        target = round(f * num_steps)
        t, x = min(path, key=lambda item: abs(item[0] - target))
        if not chosen or chosen[-1][0] != t:
            chosen.append((t, x.cpu()))
    return chosen


def _reconstruct(args, trained, codec, gen) -> int:
    method = trained.method
    if not hasattr(method, "corrupt"):
        raise ValueError(f"method {trained.config.method_kind!r} cannot reconstruct (--corrupt)")
    x_0 = codec.encode(args.corrupt).long()
    if _fit_length(x_0, trained.info.example_shape, "--corrupt"):
        raise ValueError(f"--corrupt text has {len(x_0)} units; this model needs exactly "
                         f"{trained.info.example_shape[0]}")
    x_0 = x_0.to(gen.device).expand(args.num, -1)
    t = round(args.noise_level * method.num_steps)
    x_t = method.corrupt(x_0, t, generator=gen)
    x_rec = _counted(args, trained, lambda model: method.sample(
        model, args.num, steps=args.steps, generator=gen, start=(t, x_t), sampler=args.sampler))
    shown = x_t.cpu()  # codecs show an added mask token as "_"
    print(f"original:\n{codec.render(x_0[:1].cpu())}")
    print(f"corrupted (t = {t} of {method.num_steps}):\n{codec.render(shown)}")
    print(f"reconstructed:\n{codec.render(x_rec.cpu(), out=args.out)}")
    return 0
