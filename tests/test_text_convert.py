"""The text8 converter: function, streaming file conversion and `d3pm data text8`."""

from __future__ import annotations

import re

import pytest

from discrete_diffusion.cli.main import main
from discrete_diffusion.data import text_convert
from discrete_diffusion.data.text_convert import convert_file, to_text8


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("In 1984 there were 2 cats.", "in one nine eight four there were two cats"),
        ("a0b", "a zero b"),
        ("tabs\tand\nnew  lines", "tabs and new lines"),
        ("Café naïve — “quoted” Ωmega", "caf na ve quoted mega"),
        ("don't stop-me", "don t stop me"),
        ("   ", ""),
        ("", ""),
    ],
)
def test_to_text8_cases(text: str, expected: str) -> None:
    assert to_text8(text) == expected


def test_output_alphabet_and_single_spaces() -> None:
    text = "".join(chr(c) for c in range(0, 0x2000, 7)) * 3
    out = to_text8(text)
    assert re.fullmatch(r"[a-z ]*", out)
    assert "  " not in out and out == out.strip()


def test_convert_file_matches_function_across_chunks(tmp_path, monkeypatch) -> None:
    text = "First line, 42 words!\n\n  Second: ÉTÉ 7 ...  end  " * 50
    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text(text, encoding="utf-8")
    monkeypatch.setattr(text_convert, "_CHUNK_CHARS", 13)  # many chunk boundaries
    n = convert_file(src, dst)
    assert dst.read_text() == to_text8(text)
    assert n == len(to_text8(text))


def test_convert_file_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        convert_file(tmp_path / "missing.txt", tmp_path / "out.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("!!! ... ???")
    with pytest.raises(ValueError, match="no letters or digits"):
        convert_file(empty, tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()
    src = tmp_path / "a.txt"
    src.write_text("abc")
    with pytest.raises(ValueError, match="overwrite the input"):
        convert_file(src, src)


def test_cli_text8(tmp_path, capsys) -> None:
    src, dst = tmp_path / "in.txt", tmp_path / "out.txt"
    src.write_text("The year 2021; D3PM.")
    assert main(["data", "text8", "--input", str(src), "--output", str(dst)]) == 0
    assert dst.read_text() == "the year two zero two one d three pm"
    assert main(["data", "text8", "--input", str(tmp_path / "nope"), "--output", str(dst)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]
