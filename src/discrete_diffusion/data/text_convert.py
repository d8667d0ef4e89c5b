"""Convert any English text into text8 format.

text8 (Matt Mahoney's `wikifil.pl` filter) keeps only the 26 lower-case letters and the space:
upper case is folded to lower case, each digit is spelled out as a word ("1" -> " one "), every
other character becomes a space, and runs of spaces collapse into one.

`convert_file` refuses input that is mostly not text (see `check_text`): converting a binary
file would give a text8 file of random letters with exit 0.
"""

from __future__ import annotations

import re
from pathlib import Path

from discrete_diffusion.files import atomic_path
from discrete_diffusion.progress import progress_bar

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SPACES = re.compile(" {2,}")
_CHUNK_CHARS = 1 << 22
MAX_UNDECODABLE = 0.05  # share of characters that were not valid UTF-8
MAX_NUL = 0.001  # share of NUL characters (binary files and UTF-16 have many)
MIN_LETTERS = 0.2  # share of a-z / A-Z (English prose: ~0.75; random bytes: ~0.1)
_MIN_CHECKED = 64  # characters below which the shares say too little to refuse


class _Text8Table(dict):
    """str.translate table: a-z kept, digits spelled out, everything else one space."""

    def __missing__(self, code: int) -> str:
        return " "


def _build_table() -> _Text8Table:
    table = _Text8Table()
    for c in range(ord("a"), ord("z") + 1):
        table[c] = chr(c)
    for d, word in enumerate(DIGIT_WORDS):
        table[ord("0") + d] = f" {word} "
    return table


_TABLE = _build_table()


def _raw_convert(text: str) -> str:
    """Lower-case, translate and collapse spaces (leading/trailing spaces kept)."""
    return _SPACES.sub(" ", text.lower().translate(_TABLE))


def to_text8(text: str) -> str:
    """Turn `text` into text8 format: a-z and single spaces, no leading or trailing space.

    Args:
        text: any Unicode string.
    Returns:
        The converted string; "" when nothing of `text` survives.

    Example:
        >>> to_text8("In 1984, Orwell's Café!")
        'in one nine eight four orwell s caf'
    """
    return _raw_convert(text).strip(" ")


class TextShares:
    """Running counts of a text read in chunks, for `check_text`."""

    def __init__(self) -> None:
        self.chars = self.undecodable = self.nul = self.letters = 0

    def add(self, chunk: str) -> None:
        self.chars += len(chunk)
        self.undecodable += chunk.count("\ufffd")
        self.nul += chunk.count("\0")
        # ASCII letters = the chunk's length less what remains once they are deleted
        self.letters += len(chunk) - len(chunk.translate(_DELETE_LETTERS))


_DELETE_LETTERS = {c: None for c in range(ord("A"), ord("z") + 1) if chr(c).isalpha()}


def check_text(shares: TextShares, origin: str) -> None:
    """Refuse (ValueError) input that is mostly not text: more than 5% undecodable as UTF-8,
    more than 0.1% NUL characters (binary data, UTF-16), or under 20% ASCII letters."""
    n = shares.chars
    if n < _MIN_CHECKED:
        return
    advice = "; give a UTF-8 text file (is this a binary, compressed or UTF-16 file?)"
    if shares.undecodable > MAX_UNDECODABLE * n:
        raise ValueError(f"{origin}: not text: {100 * shares.undecodable / n:.0f}% of the first "
                         f"{n:,} characters are not valid UTF-8{advice}")
    if shares.nul > MAX_NUL * n:
        raise ValueError(f"{origin}: not text: {shares.nul:,} NUL bytes in the first {n:,} "
                         f"characters{advice}")
    if shares.letters < MIN_LETTERS * n:
        raise ValueError(f"{origin}: not text: only {100 * shares.letters / n:.0f}% of the "
                         f"first {n:,} characters are letters{advice}")


def convert_file(input_path: str | Path, output_path: str | Path) -> int:
    """Stream `input_path` (UTF-8; undecodable bytes become spaces) into a text8 file.

    The output is written to a temporary file and moved into place, so an interrupted run
    leaves no half-written file. Input that is mostly not text is refused (`check_text`), as
    soon as a chunk shows it. Returns the number of characters written.
    """
    src, dst = Path(input_path), Path(output_path)
    if not src.is_file():
        raise FileNotFoundError(f"input text not found: {src}")
    if dst.resolve() == src.resolve():
        raise ValueError(f"output {dst} would overwrite the input; choose another path")
    written = 0
    pending_space = False  # a space owed between two chunks; dropped at either end
    shares = TextShares()
    with atomic_path(dst) as tmp, progress_bar(total=src.stat().st_size, desc="convert",
                                               unit="B") as bar:
        with open(src, encoding="utf-8", errors="replace") as fin, open(tmp, "w") as fout:
            while chunk := fin.read(_CHUNK_CHARS):
                shares.add(chunk)
                check_text(shares, str(src))
                piece = _raw_convert(chunk)
                pending_space = pending_space or piece.startswith(" ")
                body = piece.strip(" ")
                if body:
                    if pending_space and written:
                        fout.write(" ")
                        written += 1
                    fout.write(body)
                    written += len(body)
                    pending_space = piece.endswith(" ")
                bar.update(min(fin.buffer.tell(), bar.total) - bar.n)
        if written == 0:
            raise ValueError(f"{src}: no letters or digits to convert (the text8 output is empty)")
    return written
