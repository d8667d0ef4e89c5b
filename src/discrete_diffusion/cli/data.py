"""`d3pm data ...`: prepare text data.

    d3pm data text8 --input IN --output OUT          any English text -> text8 format
    d3pm data enwiki --output OUT                    the embedded Wikipedia excerpt as text8
    d3pm data download-text8 --dir DIR               fetch and verify the official text8.zip
    d3pm data spm --input FILES --vocab-size 8192 --out MODEL   train a SentencePiece model
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from discrete_diffusion.cli.common import add_progress_flag
from discrete_diffusion.files import atomic_path, writable_file, writable_folder


def _text8(args: argparse.Namespace) -> int:
    from discrete_diffusion.data.text_convert import convert_file

    if not Path(args.input).is_file():
        raise FileNotFoundError(f"input text not found: {args.input}")
    n = convert_file(args.input, writable_file(args.output))
    print(f"wrote {n:,} characters in text8 format to {args.output}")
    return 0


def _enwiki(args: argparse.Namespace) -> int:
    from discrete_diffusion.data.corpus import enwiki_text8_path

    out = Path(args.output)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    writable_file(out)
    src = enwiki_text8_path()
    with atomic_path(out) as tmp:
        shutil.copyfile(src, tmp)
    print(f"wrote {out.stat().st_size:,} characters of English Wikipedia (text8 format) to {out}")
    return 0


def _download_text8(args: argparse.Namespace) -> int:
    from discrete_diffusion.data.text8 import download

    path = download(writable_folder(args.dir))
    print(f"verified {path}")
    return 0


def _spm(args: argparse.Namespace) -> int:
    from discrete_diffusion.data.lm1b import train_sentencepiece

    out = Path(args.out)
    writable_file(out if out.suffix == ".model" else out.with_name(out.name + ".model"))
    model = train_sentencepiece(args.input, args.out, vocab_size=args.vocab_size,
                                max_sentences=args.max_sentences, seed=args.seed)
    print(f"wrote SentencePiece model ({args.vocab_size} pieces) to {model}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `data` command and its sub-commands; each sets `func(args) -> exit code`."""
    parser = subparsers.add_parser("data", help="prepare text data (text8, enwiki, spm)")
    sub = parser.add_subparsers(dest="data_command", required=True)

    p = sub.add_parser("text8", help="convert any English text to text8 format")
    p.add_argument("--input", required=True, help="UTF-8 text file")
    p.add_argument("--output", required=True, help="text8-format file to write")
    add_progress_flag(p)
    p.set_defaults(func=_text8)

    p = sub.add_parser("enwiki", help="write the embedded Wikipedia excerpt in text8 format")
    p.add_argument("--output", required=True)
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=_enwiki)

    p = sub.add_parser("download-text8", help="download and verify text8.zip")
    p.add_argument("--dir", required=True, help="folder to hold text8.zip")
    p.set_defaults(func=_download_text8)

    p = sub.add_parser("spm", help="train a SentencePiece model on sentence files")
    p.add_argument("--input", required=True, nargs="+", help="text files, one sentence a line")
    p.add_argument("--vocab-size", type=int, default=8192, help="pieces (paper: 8192)")
    p.add_argument("--out", required=True, help="model path (.model is added if missing)")
    p.add_argument("--max-sentences", type=int, default=2_000_000,
                   help="sentences sampled for training the model")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_spm)
    return parser
