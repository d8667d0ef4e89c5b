"""Convert any English text into text8 format.

text8 (Matt Mahoney's `wikifil.pl` filter) keeps only the 26 lower-case letters and the space:
upper case is folded to lower case, each digit is spelled out as a word ("1" -> " one "), every
other character becomes a space, and runs of spaces collapse into one.
"""

from __future__ import annotations

import re
from pathlib import Path

from discrete_diffusion.files import atomic_path

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SPACES = re.compile(" {2,}")
_CHUNK_CHARS = 1 << 22


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


def convert_file(input_path: str | Path, output_path: str | Path) -> int:
    """Stream `input_path` (UTF-8; undecodable bytes become spaces) into a text8 file.

    The output is written to a temporary file and moved into place, so an interrupted run
    leaves no half-written file. Returns the number of characters written.
    """
    src, dst = Path(input_path), Path(output_path)
    if not src.is_file():
        raise FileNotFoundError(f"input text not found: {src}")
    if dst.resolve() == src.resolve():
        raise ValueError(f"output {dst} would overwrite the input; choose another path")
    written = 0
    pending_space = False  # a space owed between two chunks; dropped at either end
    with atomic_path(dst) as tmp:
        with open(src, encoding="utf-8", errors="replace") as fin, open(tmp, "w") as fout:
            while chunk := fin.read(_CHUNK_CHARS):
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
        if written == 0:
            raise ValueError(f"{src}: no letters or digits to convert (the text8 output is empty)")
    return written
