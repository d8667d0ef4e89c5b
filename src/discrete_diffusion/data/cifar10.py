"""CIFAR-10 (data kind "cifar10"): 50,000 train and 10,000 test colour images 32x32.

`--data PATH` may be
    * the official python tarball cifar-10-python.tar.gz (see `download`), or the folder it
      unpacks to (cifar-10-batches-py/ with data_batch_1..5 and test_batch);
    * a folder or zip laid out as <split>/<class>/<name>.png|jpg (e.g. a JPEG copy), read by
      the image-folder reader. A JPEG copy is lossy: its bits/dim are not comparable with
      published CIFAR-10 numbers; its source is named "cifar10-jpeg" and described as
      "CIFAR-10 (JPEG q75 copy)".

The batches of the tarball are Python pickles. They are read WITHOUT executing arbitrary code:
`RestrictedUnpickler.find_class` allows only the numpy names needed to rebuild an ndarray, so
a pickle that names anything else (os.system, builtins.eval, ...) is refused.
Pixels stay integers 0..255 (K = 256), the absorbing state is grey 128, random horizontal flips
in training as in the paper.

`resolution` (data.resolution, default 32 = as published) gives a CPU-sized version of the same
images: R x R (R = 16 or 8), each pixel the mean of an f x f block (f = 32 / R) rounded half
up to the nearest of the 256 levels (`image_resolution.area_downsample`). R must divide 32; an
image folder of another size S is shrunk by the same f, which must divide S. The source is then
named e.g. "cifar10-16px" ("cifar10-jpeg-16px") and its arrays are cached per resolution.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from discrete_diffusion.data.image_arrays import ImageArraySource
from discrete_diffusion.data.image_cache import cached_array, file_key
from discrete_diffusion.data.image_resolution import downsample_factor, shrunk
from discrete_diffusion.data.images import load_split
from discrete_diffusion.files import atomic_path

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
SIZE = 32

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


@dataclass(frozen=True)
class Config:
    """CIFAR-10 options: `path` (the CLI's --data overrides it), `flip` (random horizontal
    flips in training, as in the paper), `cache_dir` for decoded arrays ("" = the images/
    folder of the data cache) and `resolution`, the side R of the images (32 = as published;
    16 or 8: area-downsampled, see the module docstring)."""

    path: str = ""
    flip: bool = True
    cache_dir: str = ""
    resolution: int = SIZE

    def __post_init__(self) -> None:
        downsample_factor(self.resolution, SIZE)  # a one-line error unless R divides 32


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy's ndarray reconstruction names."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name} from a CIFAR batch")
        if name == "_reconstruct":
            core = getattr(np, "_core", None) or np.core
            return core.multiarray._reconstruct
        return getattr(np, name)


def load_batch(data: bytes, name: str = "batch") -> np.ndarray:
    """One pickled CIFAR batch -> uint8 [N, 3, 32, 32]; ValueError naming `name` otherwise."""
    try:
        batch = RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise ValueError(f"unsafe or corrupt CIFAR-10 batch {name}: {err}") from None
    except Exception as err:  # truncated or garbage pickles raise many types
        raise ValueError(f"corrupt CIFAR-10 batch {name}: {err}") from None
    pixels = batch.get("data", batch.get(b"data")) if isinstance(batch, dict) else None
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 2 or pixels.shape[1] != 3072:
        raise ValueError(f"CIFAR-10 batch {name} has no 'data' array of shape [N, 3072]")
    return pixels.astype(np.uint8).reshape(-1, 3, 32, 32)


def _read_members(path: Path, names: tuple[str, ...]) -> list[tuple[str, bytes]]:
    if path.is_dir():
        folder = path / "cifar-10-batches-py" if (path / "cifar-10-batches-py").is_dir() else path
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise FileNotFoundError(f"CIFAR-10 folder {folder} lacks {', '.join(missing)}")
        return [(str(folder / n), (folder / n).read_bytes()) for n in names]
    try:
        with tarfile.open(path, "r:*") as archive:
            found = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
            missing = [n for n in names if n not in found]
            if missing:
                raise ValueError(f"CIFAR-10 tarball {path} lacks {', '.join(missing)}")
            return [(f"{path}:{n}", archive.extractfile(found[n]).read()) for n in names]
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ValueError(f"cannot read CIFAR-10 tarball {path}: {err}") from None


def read_python_split(path: Path, split: str) -> np.ndarray:
    """uint8 [N, 3, 32, 32] of "train" (data_batch_1..5) or "test" from the tarball or folder."""
    names = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    return np.concatenate([load_batch(data, n) for n, data in _read_members(path, names)])


def is_python_version(path: Path) -> bool:
    """True for the tarball or the folder of pickled batches (not an image-folder layout)."""
    if path.is_dir():
        return (path / "test_batch").is_file() or (path / "cifar-10-batches-py").is_dir()
    return path.name.endswith((".tar.gz", ".tgz", ".tar"))


def build(cfg: Config, data_arg: str | None) -> ImageArraySource:
    """CIFAR-10 from the python tarball/folder or from an image-folder layout (a JPEG copy)."""
    data_arg = data_arg or cfg.path
    if not data_arg:
        raise ValueError("data kind 'cifar10' needs --data PATH (cifar-10-python.tar.gz or a "
                         "folder/zip of <split>/<class>/<name>.png|jpg)")
    path = Path(data_arg)
    if not path.exists():
        raise FileNotFoundError(f"no such CIFAR-10 file or folder: {path}")
    factor = downsample_factor(cfg.resolution, SIZE)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else None
    if not is_python_version(path):
        splits = {s: load_split(path, s, cfg.cache_dir, factor) for s in ("train", "test")}
        name, description = "cifar10-jpeg", "CIFAR-10 (JPEG q75 copy)"
    else:
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        splits = {}
        for s in ("train", "test"):
            key = file_key(files, f"cifar10:{s}")
            full = cached_array(key, lambda s=s: read_python_split(path, s), cache)
            splits[s] = shrunk(full, key, factor, str(path), cache)
        name, description = "cifar10", "CIFAR-10"
    if factor > 1:
        h, w = splits["train"].shape[2:]
        name = f"{name}-{h}px" if h == w else f"{name}-{h}x{w}px"
        description = f"{description}, area-downsampled to {h}x{w}"
    return ImageArraySource(name, splits, 256, flip=cfg.flip, description=description)


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(directory: str | Path, url: str = URL, md5: str = MD5) -> Path:
    """Fetch cifar-10-python.tar.gz into `directory` (kept if already there and intact).

    The file is written to a temporary name, its MD5 checked against `md5`, and only then
    moved into place; a mismatch deletes the download and raises ValueError.
    """
    target = Path(directory) / "cifar-10-python.tar.gz"
    if target.is_file() and md5_of(target) == md5:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        urllib.request.urlretrieve(url, tmp)
        got = md5_of(tmp)
        if got != md5:
            raise ValueError(f"checksum mismatch for {url}: MD5 {got}, expected {md5}")
    return target
