"""text8: character-level English Wikipedia (Mahoney), the paper's Table 1 data set.

Vocabulary: a-z -> 0..25 and space -> 26 (K_data = 27, ord - 97 as the official code); an
absorbing process adds its own mask token 27 (`DataInfo.mask_index = None`).
Splits: the first 90% / next 5% / last 5% of the file, which for the real 100M-character file is
the standard 90M / 5M / 5M. Training draws random 256-character crops of the training split;
evaluation uses non-overlapping 256-character chunks of a whole split (remainder dropped).

The file is read as distributed (`text8` or `text8.zip`), checked, converted to uint8 ids once
and cached (see `text_cache`); every later load memory-maps the cache.
"""

from __future__ import annotations

import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from discrete_diffusion.data.base import Codec
from discrete_diffusion.data.text_cache import cached_arrays
from discrete_diffusion.data.text_stats import add_statistics
from discrete_diffusion.data.token_stream import TokenStreamSource
from discrete_diffusion.files import atomic_path, atomic_write_text

ALPHABET = "abcdefghijklmnopqrstuvwxyz "
MASK_CHAR = "_"
SPLIT_FRACTIONS = (0.90, 0.05, 0.05)
TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
TEXT8_ZIP_BYTES = 31_344_016
TEXT8_CHARS = 100_000_000
_PREP_VERSION = 1
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")  # local file, empty archive, spanned


# ----- codec ---------------------------------------------------------------------------------
class CharCodec(Codec):
    """Characters <-> ids for text8 (a-z, space); ids >= 27 (the mask) render as '_'."""

    kind = "text8"

    def __init__(self, alphabet: str = ALPHABET) -> None:
        self.alphabet = alphabet
        self._index = {c: i for i, c in enumerate(alphabet)}

    def encode(self, text: str) -> Tensor:
        """Text -> LongTensor [L]; a character outside the alphabet is a ValueError."""
        try:
            return torch.tensor([self._index[c] for c in text], dtype=torch.long)
        except KeyError as err:
            pos = next(i for i, c in enumerate(text) if c not in self._index)
            raise ValueError(
                f"character {err.args[0]!r} at position {pos} is not in the text8 vocabulary "
                "(a-z and space)"
            ) from None

    def decode(self, ids: Tensor) -> str:
        """LongTensor [L] -> text; out-of-alphabet ids (the mask) become '_'."""
        k = len(self.alphabet)
        return "".join(self.alphabet[i] if 0 <= i < k else MASK_CHAR for i in ids.tolist())

    def parse_infill(self, text: str) -> tuple[Tensor, Tensor]:
        """'_' marks a position to fill in: returns ids LongTensor [L] (0 where masked) and
        held BoolTensor [L] (True where the character is given)."""
        held = torch.tensor([c != MASK_CHAR for c in text], dtype=torch.bool)
        ids = self.encode("".join(c if c != MASK_CHAR else self.alphabet[0] for c in text))
        return ids, held

    def render(self, x: Tensor, out: str | Path | None = None) -> str:
        """x LongTensor [B, L] (or [L]) -> one line per example, also written to `out` if
        given."""
        rows = x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x[None]
        text = "\n".join(self.decode(r) for r in rows) + "\n"
        if out is not None:
            atomic_write_text(Path(out), text)
        return text

    def config(self) -> dict:
        return {"alphabet": self.alphabet}


# ----- reading the file ----------------------------------------------------------------------
def _lookup_table() -> np.ndarray:
    lut = np.full(256, 255, dtype=np.uint8)
    for i, c in enumerate(ALPHABET):
        lut[ord(c)] = i
    return lut


def read_text8_bytes(path: str | Path) -> bytes:
    """The raw characters of a text8 file, or of the first member of a text8 .zip."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"text8 file not found: {p}")
    if p.is_dir():
        for name in ("text8", "text8.zip"):
            if (p / name).is_file():
                return read_text8_bytes(p / name)
        raise FileNotFoundError(f"no text8 or text8.zip in folder {p}")
    if looks_like_zip(p):
        return _read_zip_member(p)
    return p.read_bytes()


def looks_like_zip(path: Path) -> bool:
    """A zip by its first bytes or its name, not by whether it can be opened: a truncated
    archive has lost its central directory, and must not be read as plain text."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head in ZIP_MAGIC or path.suffix.lower() == ".zip"


def _read_zip_member(path: Path) -> bytes:
    """The `text8` member (else the first file) of a zip; a damaged or incomplete archive is a
    one-line ValueError that says how to get a good copy."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
            if not names:
                raise ValueError(f"{path}: the zip archive is empty")
            return zf.read("text8" if "text8" in names else names[0])
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        if isinstance(err, OSError) and err.filename is not None:
            raise  # the file system failed (e.g. permission), not the archive
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(
            f"{path}: the zip archive is damaged or incomplete ({reason}); download a good copy "
            "with `d3pm data download-text8 --dir DIR` (it verifies size and content)"
        ) from None


def text8_to_ids(raw: bytes, origin: str = "text8 data") -> np.ndarray:
    """Bytes in text8 format -> uint8 ids [N]; any other byte is a one-line ValueError."""
    ids = _lookup_table()[np.frombuffer(raw, dtype=np.uint8)]
    bad = np.flatnonzero(ids == 255)
    if bad.size:
        pos = int(bad[0])
        ch = raw[pos : pos + 1].decode("latin-1")
        line = raw.count(b"\n", 0, pos) + 1
        raise ValueError(
            f"{origin}: character {ch!r} (byte {raw[pos]}) at offset {pos} (line {line}) is not "
            "in the text8 vocabulary (a-z and space); convert the text first with "
            "`d3pm data text8 --input IN --output OUT`"
        )
    return ids


def split_bounds(n: int) -> dict[str, tuple[int, int]]:
    """[start, stop) of train / validation / test: 90M/5M/5M for text8, the same fractions else."""
    n_train = int(round(n * SPLIT_FRACTIONS[0]))
    n_valid = int(round(n * SPLIT_FRACTIONS[1]))
    return {
        "train": (0, n_train),
        "validation": (n_train, n_train + n_valid),
        "test": (n_train + n_valid, n),
    }


def download(directory: str | Path, url: str = TEXT8_URL) -> Path:
    """Download text8.zip from Matt Mahoney's site into `directory` and verify it.

    No authoritative cryptographic checksum of text8.zip is published, so the check is the
    archive size (31,344,016 bytes, the size TensorFlow's word2vec tutorial verifies), then the
    unzipped length (100,000,000 characters) and the character set (a-z and space only).
    Returns the path of the verified zip; a failed check deletes the download.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    dest = d / "text8.zip"
    if not dest.exists():
        with atomic_path(dest) as tmp:
            urllib.request.urlretrieve(url, tmp)  # noqa: S310 (fixed http URL of the data set)
    try:
        verify_text8_zip(dest)
    except ValueError:
        dest.unlink()
        raise
    return dest


def verify_text8_zip(path: Path) -> None:
    """Size, unzipped length and character set of the official text8.zip (see `download`)."""
    size = path.stat().st_size
    if size != TEXT8_ZIP_BYTES:
        raise ValueError(f"{path}: {size} bytes, expected {TEXT8_ZIP_BYTES} for text8.zip")
    raw = read_text8_bytes(path)
    if len(raw) != TEXT8_CHARS:
        raise ValueError(f"{path}: unzipped {len(raw)} characters, expected {TEXT8_CHARS}")
    text8_to_ids(raw, str(path))


# ----- data source ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """text8 data settings.

    Attributes:
        path: text8 / text8.zip / a folder holding one / any text8-format file, or "enwiki"
            for the embedded Wikipedia excerpt; the CLI's --data overrides it.
        seq_len: characters per example (256 in the paper).
        embedding_dim: width of the PPMI-SVD embeddings (nearest-neighbour process).
        embedding_window: co-occurrence window of those embeddings.
    """

    path: str = ""
    seq_len: int = 256
    embedding_dim: int = 16
    embedding_window: int = 2


def resolve_path(path: str) -> Path:
    """'enwiki' -> the cached embedded corpus; anything else is a file system path."""
    if path == "enwiki":
        from discrete_diffusion.data.corpus import enwiki_text8_path

        return enwiki_text8_path()
    if not path:
        raise ValueError("no text8 data given: pass --data PATH (a text8 file) or --data enwiki")
    return Path(path).expanduser()


def prepare(path: Path, cfg: Config) -> dict[str, np.ndarray]:
    """Read, check, split and compute statistics, cached by the file's path, size and mtime."""
    source = path / "text8" if path.is_dir() and (path / "text8").is_file() else path
    if source.is_dir():
        source = source / "text8.zip"
    if not source.exists():
        raise FileNotFoundError(f"text8 file not found: {source}")
    params = {
        "version": _PREP_VERSION,
        "dim": cfg.embedding_dim,
        "window": cfg.embedding_window,
        "min_len": cfg.seq_len,
    }
    return cached_arrays("text8", [source], params, lambda: _build_arrays(source, cfg))


def _build_arrays(source: Path, cfg: Config) -> dict[str, np.ndarray]:
    ids = text8_to_ids(read_text8_bytes(source), str(source))
    need = int(np.ceil(cfg.seq_len / SPLIT_FRACTIONS[1]))
    if ids.size < need:
        raise ValueError(
            f"{source}: {ids.size} characters is too short; validation and test (5% each) need at "
            f"least one {cfg.seq_len}-character chunk, i.e. >= {need} characters"
        )
    arrays = {s: ids[a:b] for s, (a, b) in split_bounds(ids.size).items()}
    return add_statistics(arrays, len(ALPHABET), cfg.embedding_dim, cfg.embedding_window)


def build(cfg: Config, data_arg: str | None = None) -> TokenStreamSource:
    """The text8 DataSource for `data_arg` (the CLI's --data) or `cfg.path`."""
    if cfg.seq_len < 1:
        raise ValueError(f"data.seq_len must be positive, got {cfg.seq_len}")
    arrays = prepare(resolve_path(data_arg or cfg.path), cfg)
    return TokenStreamSource("text8", arrays, len(ALPHABET), cfg.seq_len, "char", CharCodec())
