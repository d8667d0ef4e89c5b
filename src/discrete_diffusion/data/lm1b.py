"""LM1B-style sentence data with a SentencePiece vocabulary (the paper's Table 2).

Sources, by `path` (or the CLI's --data):
* a text file with one sentence per line: split by line order into 90% / 5% / 5%;
* a folder with `train.txt` and `test.txt` (and optionally `validation.txt`; without it the test
  split doubles as validation, as in the paper's LM1B setup);
* "hf:lm1b" (or "hf:NAME"): the public data set through the `datasets` package (optional extra
  `lm1b`), which needs a network on first use.
Tokenisation: a SentencePiece model (`spm_model`, or one with `vocab_size` pieces, 8192 in the
paper, trained on the training sentences and cached). Each sentence becomes BOS ids EOS; all
sentences of a split form one token stream cut into rows of `seq_len` = 128 tokens (packing, as
the paper; the remainder is dropped). Training shuffles rows each epoch; evaluation reads rows in
order. Bits and perplexity are per token (unit "token").
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from discrete_diffusion.data.base import Codec
from discrete_diffusion.data.text_cache import cache_key, cached_arrays, smallest_uint
from discrete_diffusion.data.text_stats import add_statistics
from discrete_diffusion.data.token_stream import TokenStreamSource
from discrete_diffusion.extras import require
from discrete_diffusion.files import atomic_path, atomic_write_json, atomic_write_text, cache_dir

MODEL_FILE = "spm.model"
MASK_TEXT = "_"
_PREP_VERSION = 1


# ----- SentencePiece ---------------------------------------------------------------------------
def load_processor(model_path: str | Path):
    """A SentencePiece processor for the model file at `model_path` (one-line error if missing)."""
    spm = require("sentencepiece", "text", "SentencePiece tokenisation")

    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"SentencePiece model not found: {path}")
    return spm.SentencePieceProcessor(model_file=str(path))


def read_sentences(paths: list[str | Path] | str | Path) -> list[str]:
    """Non-empty stripped lines of the given UTF-8 files."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out: list[str] = []
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"sentence file not found: {p}")
        with open(p, encoding="utf-8", errors="replace") as f:
            out += [s for s in (line.strip() for line in f) if s]
    return out


def train_sentencepiece(inputs: list[str | Path] | str | Path, out: str | Path,
                        vocab_size: int = 8192, max_sentences: int = 2_000_000,
                        seed: int = 0) -> Path:
    """Train a unigram SentencePiece model on sentence files; returns the .model path.

    At most `max_sentences` sentences are used, sampled with numpy's PCG64 seeded by `seed`, so
    the same inputs give the same model. Ids: 0 <unk>, 1 <s> (BOS), 2 </s> (EOS).
    """
    spm = require("sentencepiece", "text", "SentencePiece training")
    sentences = read_sentences(inputs)
    if not sentences:
        raise ValueError(f"no sentences in {inputs}")
    if len(sentences) > max_sentences:
        keep = np.sort(np.random.default_rng(seed).choice(len(sentences), max_sentences, False))
        sentences = [sentences[i] for i in keep]
    out = Path(out)
    if out.suffix != ".model":
        out = out.with_name(out.name + ".model")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "wb") as writer:
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences), model_writer=writer, vocab_size=vocab_size,
                model_type="unigram", character_coverage=0.9995, minloglevel=2,
                unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=True,
            )
        except RuntimeError as err:
            raise ValueError(f"SentencePiece training failed: {str(err).splitlines()[0]}") from err
    return out


class SentencePieceCodec(Codec):
    """Token ids <-> text through a SentencePiece model; ids >= vocab (the mask) show as '_'."""

    kind = "sentencepiece"

    def __init__(self, model_path: str | Path) -> None:
        self.model_path = Path(model_path)
        self.sp = load_processor(self.model_path)
        self.vocab_size = int(self.sp.get_piece_size())

    def encode(self, text: str) -> Tensor:
        return torch.tensor(self.sp.encode(text), dtype=torch.long)

    def decode(self, ids: Tensor) -> str:
        """LongTensor [L] -> text; BOS/EOS show as <s> </s>, the mask as '_'."""
        pieces = [self.sp.id_to_piece(i) if 0 <= i < self.vocab_size else f"\u2581{MASK_TEXT}"
                  for i in ids.tolist()]
        return "".join(pieces).replace("\u2581", " ").strip()

    def parse_infill(self, text: str) -> tuple[Tensor, Tensor]:
        """Each '_' is one masked token; the text between is encoded as pieces."""
        ids: list[int] = []
        held: list[bool] = []
        for part in re.split(f"({re.escape(MASK_TEXT)})", text):
            if part == MASK_TEXT:
                ids.append(0)
                held.append(False)
            elif part.strip():
                pieces = self.sp.encode(part.strip())
                ids += pieces
                held += [True] * len(pieces)
        return torch.tensor(ids, dtype=torch.long), torch.tensor(held, dtype=torch.bool)

    def render(self, x: Tensor, out: str | Path | None = None) -> str:
        rows = x.reshape(-1, x.shape[-1]) if x.dim() > 1 else x[None]
        text = "\n".join(self.decode(r) for r in rows) + "\n"
        if out is not None:
            atomic_write_text(Path(out), text)
        return text

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.model_path.resolve() != (d / MODEL_FILE).resolve():
            with atomic_path(d / MODEL_FILE) as tmp:
                shutil.copyfile(self.model_path, tmp)
        atomic_write_json(d / "codec.json", {"kind": self.kind, "model": MODEL_FILE})

    @classmethod
    def load(cls, directory: str | Path) -> SentencePieceCodec:
        return cls(Path(directory) / MODEL_FILE)


# ----- sources -----------------------------------------------------------------------------
@dataclass
class Config:
    """LM1B settings.

    Attributes:
        path: sentence file, folder (train.txt / test.txt [/ validation.txt]) or "hf:lm1b".
        spm_model: a SentencePiece .model; "" trains one with `vocab_size` pieces (cached).
        vocab_size: pieces of a trained model (8192 in the paper).
        seq_len: tokens per packed row (128 in the paper).
        embedding_dim, embedding_window: the PPMI-SVD embeddings (nearest-neighbour process).
    """

    path: str = ""
    spm_model: str = ""
    vocab_size: int = 8192
    seq_len: int = 128
    embedding_dim: int = 64
    embedding_window: int = 2


def _split_files(path: Path) -> dict[str, list[Path]]:
    if path.is_dir():
        train, test = path / "train.txt", path / "test.txt"
        if not (train.is_file() and test.is_file()):
            raise FileNotFoundError(f"folder {path} needs train.txt and test.txt")
        valid = path / "validation.txt"
        return {"train": [train], "validation": [valid if valid.is_file() else test],
                "test": [test]}
    if not path.is_file():
        raise FileNotFoundError(f"LM1B sentence file not found: {path}")
    return {"all": [path]}


def _sentences_by_split(path: Path) -> dict[str, list[str]]:
    files = _split_files(path)
    if "all" not in files:
        return {s: read_sentences(f) for s, f in files.items()}
    lines = read_sentences(files["all"])
    n_train, n_valid = int(round(0.9 * len(lines))), int(round(0.05 * len(lines)))
    return {"train": lines[:n_train], "validation": lines[n_train:n_train + n_valid],
            "test": lines[n_train + n_valid:]}


def hf_sentences(name: str = "lm1b") -> dict[str, list[str]]:
    """Train and test sentences of a Hugging Face data set (test doubles as validation)."""
    datasets = require("datasets", "lm1b", 'the "hf:" LM1B source')
    try:
        ds = datasets.load_dataset(name)
    except Exception as err:  # network, hub and script errors all mean "not available"
        raise RuntimeError(f"could not load data set {name!r} through `datasets` (offline?): "
                           f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                           ) from err
    test = list(ds["test"]["text"])
    return {"train": list(ds["train"]["text"]), "validation": test, "test": test}


def pack(sentences: list[str], sp, seq_len: int, dtype: np.dtype) -> np.ndarray:
    """BOS ids EOS for each sentence, concatenated and cut into rows [N, seq_len]."""
    stream: list[int] = []
    for ids in sp.encode(sentences):
        stream += [sp.bos_id(), *ids, sp.eos_id()]
    n = len(stream) // seq_len
    return np.asarray(stream[: n * seq_len], dtype=dtype).reshape(n, seq_len)


def _cached_model(cfg: Config, key_sources: list[Path], params: dict,
                  load_sentences: Callable[[], dict[str, list[str]]]) -> Path:
    """cfg.spm_model, or a model trained on the training sentences (cached)."""
    if cfg.spm_model:
        return Path(cfg.spm_model).expanduser()
    key = cache_key(key_sources, {**params, "vocab": cfg.vocab_size})
    model = cache_dir() / "lm1b" / f"spm-{cfg.vocab_size}-{key}.model"
    if not model.is_file():
        tmp_txt = model.with_name(model.name + ".train.txt")
        tmp_txt.parent.mkdir(parents=True, exist_ok=True)
        tmp_txt.write_text("\n".join(load_sentences()["train"]) + "\n")
        try:
            train_sentencepiece(tmp_txt, model, vocab_size=cfg.vocab_size)
        finally:
            tmp_txt.unlink(missing_ok=True)
    return model


def prepare(data: str, cfg: Config) -> tuple[dict[str, np.ndarray], Path]:
    """Token rows per split (cached, memory-mapped) and the SentencePiece model path."""
    if not data:
        raise ValueError("no LM1B data given: pass --data FILE|FOLDER|hf:lm1b")
    hf = data.startswith("hf:")
    sources = [] if hf else [f for fs in _split_files(Path(data)).values() for f in fs]
    params = {"version": _PREP_VERSION, "data": data, "seq_len": cfg.seq_len,
              "dim": cfg.embedding_dim, "window": cfg.embedding_window}
    sentences: dict[str, list[str]] | None = None

    def load_sentences() -> dict[str, list[str]]:
        nonlocal sentences
        if sentences is None:
            sentences = hf_sentences(data[3:]) if hf else _sentences_by_split(Path(data))
        return sentences

    model = _cached_model(cfg, sources, params, load_sentences)
    sources_with_model = [*sources, model]

    def build() -> dict[str, np.ndarray]:
        return _build_arrays(load_sentences(), load_processor(model), cfg)

    return cached_arrays("lm1b", sources_with_model, params, build), model


def _build_arrays(sentences: dict[str, list[str]], sp, cfg: Config) -> dict[str, np.ndarray]:
    k = int(sp.get_piece_size())
    dtype = smallest_uint(k)
    arrays = {s: pack(sentences[s], sp, cfg.seq_len, dtype) for s in ("train", "validation",
                                                                         "test")}
    for s, rows in arrays.items():
        if rows.shape[0] == 0:
            raise ValueError(f"the {s} split has fewer than {cfg.seq_len} tokens: too little text")
    return add_statistics(arrays, k, cfg.embedding_dim, cfg.embedding_window)


def build(cfg: Config, data_arg: str | None = None) -> TokenStreamSource:
    """The LM1B DataSource for `data_arg` (the CLI's --data) or `cfg.path`."""
    if cfg.seq_len < 2:
        raise ValueError(f"data.seq_len must be at least 2, got {cfg.seq_len}")
    arrays, model = prepare(data_arg or cfg.path, cfg)
    codec = SentencePieceCodec(model)
    return TokenStreamSource("lm1b", arrays, codec.vocab_size, cfg.seq_len, "token", codec)

