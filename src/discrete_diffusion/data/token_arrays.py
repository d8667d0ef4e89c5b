"""Bring your own tokens: data kind "tokens" over arrays of token ids saved with numpy.

`path` is one `.npy` file (split 90% / 5% / 5% in order) or a folder with `train.npy`,
`validation.npy` (optional: test doubles as validation) and `test.npy`. Each array holds
non-negative integer ids, either one 1-D stream (training takes random `seq_len` crops,
evaluation the non-overlapping chunks) or packed rows [N, seq_len]. Arrays are opened with
`np.load(mmap_mode="r")`, checked, converted once to the smallest unsigned dtype and cached
with their statistics. `vocab_size` 0 means max id + 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from discrete_diffusion.data.base import Codec
from discrete_diffusion.data.text_cache import cached_arrays, smallest_uint
from discrete_diffusion.data.text_stats import add_statistics
from discrete_diffusion.data.token_stream import TokenStreamSource
from discrete_diffusion.files import atomic_write_text

MASK_TEXT = "_"
_PREP_VERSION = 1


class TokenCodec(Codec):
    """Ids as space-separated integers; ids >= vocab_size (a mask) show as '_'."""

    kind = "tokens"

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = int(vocab_size)

    def config(self) -> dict:
        return {"vocab_size": self.vocab_size}

    def encode(self, text: str) -> Tensor:
        try:
            ids = [int(tok) for tok in text.split()]
        except ValueError:
            bad = next(t for t in text.split() if not t.lstrip("-").isdigit())
            raise ValueError(f"token {bad!r} is not an integer id") from None
        for i, v in enumerate(ids):
            if not 0 <= v < self.vocab_size:
                raise ValueError(f"token {v} at position {i} is outside 0..{self.vocab_size - 1}")
        return torch.tensor(ids, dtype=torch.long)

    def parse_infill(self, text: str) -> tuple[Tensor, Tensor]:
        toks = text.split()
        held = torch.tensor([t != MASK_TEXT for t in toks], dtype=torch.bool)
        ids = self.encode(" ".join("0" if t == MASK_TEXT else t for t in toks))
        return ids, held

    def render(self, x: Tensor, out: str | Path | None = None) -> str:
        rows = x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x[None]
        text = "\n".join(
            " ".join(str(v) if v < self.vocab_size else MASK_TEXT for v in r.tolist())
            for r in rows
        ) + "\n"
        if out is not None:
            atomic_write_text(Path(out), text)
        return text


@dataclass
class Config:
    """Token-array settings.

    Attributes:
        path: a .npy file or a folder of train.npy / [validation.npy] / test.npy.
        seq_len: tokens per example (packed rows must have this width).
        vocab_size: K_data; 0 infers max id + 1.
        embedding_dim, embedding_window: the PPMI-SVD embeddings (nearest-neighbour process).
    """

    path: str = ""
    seq_len: int = 128
    vocab_size: int = 0
    embedding_dim: int = 32
    embedding_window: int = 2


def _split_files(path: Path) -> dict[str, Path]:
    if path.is_dir():
        train, test = path / "train.npy", path / "test.npy"
        if not (train.is_file() and test.is_file()):
            raise FileNotFoundError(f"folder {path} needs train.npy and test.npy")
        valid = path / "validation.npy"
        return {"train": train, "validation": valid if valid.is_file() else test, "test": test}
    if not path.is_file():
        raise FileNotFoundError(f"token array not found: {path}")
    return {"all": path}


def _open(path: Path, seq_len: int) -> np.ndarray:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"{path} is not a numpy .npy array: {err}") from err
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path}: token ids must be integers, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"{path}: expected a 1-D stream or rows [N, L], got shape {arr.shape}")
    if arr.ndim == 2 and arr.shape[1] != seq_len:
        raise ValueError(f"{path}: rows have {arr.shape[1]} tokens but data.seq_len={seq_len}")
    return arr


def _splits(path: Path, seq_len: int) -> dict[str, np.ndarray]:
    files = _split_files(path)
    if "all" not in files:
        return {s: _open(f, seq_len) for s, f in files.items()}
    arr = _open(files["all"], seq_len)
    n = arr.shape[0]
    a, b = int(round(0.9 * n)), int(round(0.95 * n))
    return {"train": arr[:a], "validation": arr[a:b], "test": arr[b:]}


def _check_ids(splits: dict[str, np.ndarray], vocab_size: int) -> int:
    """Validate the ids against vocab_size (0: infer max + 1); returns K_data."""
    lo = min(int(a.min()) for a in splits.values())
    hi = max(int(a.max()) for a in splits.values())
    if lo < 0:
        raise ValueError(f"token ids must be non-negative, found {lo}")
    if vocab_size and hi >= vocab_size:
        raise ValueError(f"token id {hi} is outside data.vocab_size={vocab_size}")
    return vocab_size or hi + 1


def _build(path: Path, cfg: Config) -> dict[str, np.ndarray]:
    splits = _splits(path, cfg.seq_len)
    for s, a in splits.items():
        if a.size < cfg.seq_len:
            raise ValueError(f"{path}: the {s} split has {a.size} tokens, fewer than "
                             f"data.seq_len={cfg.seq_len}")
    k = _check_ids(splits, cfg.vocab_size)
    dtype = smallest_uint(k)
    arrays = {s: np.asarray(a, dtype=dtype) for s, a in splits.items()}
    return add_statistics(arrays, k, cfg.embedding_dim, cfg.embedding_window)


def build(cfg: Config, data_arg: str | None = None) -> TokenStreamSource:
    """The token-array DataSource for `data_arg` (the CLI's --data) or `cfg.path`."""
    if cfg.seq_len < 1 or cfg.vocab_size < 0:
        raise ValueError(f"data.seq_len must be positive and data.vocab_size >= 0: {cfg}")
    path_text = data_arg or cfg.path
    if not path_text:
        raise ValueError("no token arrays given: pass --data PATH (.npy file or folder)")
    path = Path(path_text).expanduser()
    sources = list(dict.fromkeys(_split_files(path).values()))
    params = {"version": _PREP_VERSION, "seq_len": cfg.seq_len, "vocab": cfg.vocab_size,
              "dim": cfg.embedding_dim, "window": cfg.embedding_window}
    arrays = cached_arrays("tokens", sources, params, lambda: _build(path, cfg))
    k = int(arrays["marginal"].shape[0])
    return TokenStreamSource("tokens", arrays, k, cfg.seq_len, "token", TokenCodec(k))
