"""text8 data: vocabulary, splits, crops, chunks, cache, statistics, codec, bad input."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from discrete_diffusion.data import text8
from discrete_diffusion.data.base import codec_from_dir
from discrete_diffusion.data.text8 import CharCodec, Config, build, split_bounds

SEQ = 16


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISCRETE_DIFFUSION_CACHE", str(tmp_path / "cache"))


def _text(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "zebra", "quiz", "jumps", "over"]
    out = ""
    while len(out) < n:
        out += words[rng.integers(len(words))] + " "
    return out[:n]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text8.txt"
    path.write_text(_text(20 * SEQ * 10))  # 3,200 characters
    return path


def test_split_bounds_standard_and_fractional() -> None:
    assert split_bounds(100_000_000) == {"train": (0, 90_000_000),
                                         "validation": (90_000_000, 95_000_000),
                                         "test": (95_000_000, 100_000_000)}
    b = split_bounds(1000)
    assert b == {"train": (0, 900), "validation": (900, 950), "test": (950, 1000)}


def test_splits_and_ids_match_the_file(text_file) -> None:
    src = build(Config(seq_len=SEQ), str(text_file))
    raw = text_file.read_text()
    ids = np.array([ord(c) - 97 if c != " " else 26 for c in raw])
    for split, (a, b) in split_bounds(len(raw)).items():
        np.testing.assert_array_equal(np.asarray(src.split(split)), ids[a:b])
    assert src.num_classes == 27 and src.mask_index is None and src.unit == "char"
    assert src.example_shape == (SEQ,)


def test_eval_chunks_are_the_split_without_remainder(text_file) -> None:
    src = build(Config(seq_len=SEQ), str(text_file))
    test_ids = np.asarray(src.split("test"))
    n = test_ids.size // SEQ
    batches = list(src.eval_batches("test", 3))
    assert [b.shape[0] for b in batches] == [3] * (n // 3) + ([n % 3] if n % 3 else [])
    joined = torch.cat(batches).reshape(-1).numpy()
    np.testing.assert_array_equal(joined, test_ids[: n * SEQ])
    assert src.num_examples("test") == n
    assert sum(b.shape[0] for b in src.eval_batches("test", 4, max_examples=5)) == 5


def test_train_crops_are_substrings_seeded_sharded_and_resumable(text_file) -> None:
    src = build(Config(seq_len=SEQ), str(text_file))
    train = "".join(text8.ALPHABET[i] for i in np.asarray(src.split("train")))
    it = src.train_batches(4, seed=7)
    first = [next(it) for _ in range(3)]
    for batch in first:
        assert batch.shape == (4, SEQ) and batch.dtype == torch.long
        for row in batch:
            assert src.codec().decode(row) in train
    again = src.train_batches(4, seed=7)
    assert all(torch.equal(a, next(again)) for a in first)
    state = it.state_dict()
    resumed = src.train_batches(4, seed=7, state=state)
    assert torch.equal(next(resumed), next(it))
    other_rank = src.train_batches(4, seed=7, rank=1, world_size=2)
    assert not torch.equal(next(other_rank), first[0])
    other_seed = src.train_batches(4, seed=8)
    assert not torch.equal(next(other_seed), first[0])


def test_second_load_reads_the_cache(text_file, monkeypatch) -> None:
    first = build(Config(seq_len=SEQ), str(text_file))

    def fail(*args, **kwargs):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(text8, "read_text8_bytes", fail)
    second = build(Config(seq_len=SEQ), str(text_file))
    assert isinstance(second.split("train"), np.memmap)
    np.testing.assert_array_equal(np.asarray(first.split("train")), second.split("train"))
    # a changed file (size and mtime) is a different cache entry, so it is read again
    text_file.write_text(_text(4000, seed=1))
    with pytest.raises(AssertionError, match="read again"):
        build(Config(seq_len=SEQ), str(text_file))


def test_zip_as_distributed(tmp_path, text_file) -> None:
    z = tmp_path / "text8.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(text_file, "text8")
    a = build(Config(seq_len=SEQ), str(z))
    b = build(Config(seq_len=SEQ), str(text_file))
    np.testing.assert_array_equal(np.asarray(a.split("test")), np.asarray(b.split("test")))


def test_info_statistics(text_file) -> None:
    src = build(Config(seq_len=SEQ, embedding_dim=5), str(text_file))
    info = src.info()
    counts = np.bincount(np.asarray(src.split("train")), minlength=27)
    np.testing.assert_allclose(info.marginal.numpy(), counts / counts.sum())
    assert info.marginal.dtype == torch.float64
    assert info.embeddings.shape == (27, 5) and torch.isfinite(info.embeddings).all()
    again = build(Config(seq_len=SEQ, embedding_dim=5), str(text_file)).info()
    assert torch.equal(info.embeddings, again.embeddings)


@pytest.mark.parametrize(("content", "match"), [
    ("hello World", r"'W'.*offset 6 \(line 1\)"),
    ("ok\nno", r"'\\n'.*offset 2 \(line 1\)"),
    ("abc1", r"'1'.*offset 3"),
])
def test_characters_outside_the_vocabulary(tmp_path, content: str, match: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(content + " a" * 2000)
    with pytest.raises(ValueError, match=match) as err:
        build(Config(seq_len=SEQ), str(path))
    assert "\n" not in str(err.value)


def test_too_short_empty_and_missing(tmp_path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("abc " * 10)
    with pytest.raises(ValueError, match="too short"):
        build(Config(seq_len=SEQ), str(short))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="too short"):
        build(Config(seq_len=SEQ), str(empty))
    with pytest.raises(FileNotFoundError, match="not found"):
        build(Config(seq_len=SEQ), str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="no text8 data"):
        build(Config(seq_len=SEQ), None)


def test_codec_round_trip_infill_and_save(tmp_path) -> None:
    codec = CharCodec()
    ids = codec.encode("hello world")
    assert ids.tolist()[:2] == [7, 4] and ids.tolist()[5] == 26
    assert codec.decode(ids) == "hello world"
    assert codec.decode(torch.tensor([0, 27, 1])) == "a_b"
    held_ids, held = codec.parse_infill("he__o")
    assert held.tolist() == [True, True, False, False, True]
    assert held_ids[held].tolist() == codec.encode("heo").tolist()
    with pytest.raises(ValueError, match=r"'A' at position 1"):
        codec.encode("aAb")
    codec.save(tmp_path / "c")
    loaded = codec_from_dir(tmp_path / "c")
    assert isinstance(loaded, CharCodec)
    out = tmp_path / "s.txt"
    text = loaded.render(torch.stack([ids, ids]), out=out)
    assert text == "hello world\nhello world\n" and out.read_text() == text


def test_unknown_split(text_file) -> None:
    src = build(Config(seq_len=SEQ), str(text_file))
    with pytest.raises(ValueError, match="unknown split"):
        src.num_examples("dev")
    assert src.num_examples("valid") == src.num_examples("validation")


TINY = ["data.seq_len=16", "model.num_layers=1", "model.d_model=16", "model.num_heads=2",
        "model.mlp_dim=32", "train.batch_size=4", "train.eval_every=0", "train.log_every=1",
        "train.ckpt_every=0", "train.eval_examples=0"]


@pytest.mark.parametrize(("preset", "extra"), [
    ("text8-absorbing-cpu-small", ["method.num_steps=10"]),
    ("text8-ar-cpu-small", []),
])
def test_cli_train_eval_sample(tmp_path, text_file, capsys, preset, extra) -> None:
    import json
    from pathlib import Path

    from discrete_diffusion.cli.main import main

    config = Path(__file__).resolve().parent.parent / "configs" / f"{preset}.yaml"
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--data", str(text_file), "--out", str(run),
                 "--steps", "2", "--no-progress", *TINY, *extra]) == 0
    out = tmp_path / "eval.json"
    steps = ["10", "5"] if extra else []
    assert main(["eval", "--checkpoint", str(run), "--data", str(text_file), "--max-examples",
                 "3", "--json", str(out), *(["--steps", *steps] if steps else [])]) == 0
    results = json.loads(out.read_text())
    rows = results if isinstance(results, list) else results.get("results", [results])
    assert rows and all(0 < r["bits_per_char"] < 20 and r["num_sequences"] == 3 for r in rows)
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(run), "--num", "2",
                 *(["--steps", "5"] if extra else [])]) == 0
    lines = [s for s in capsys.readouterr().out.splitlines() if len(s) == 16]
    assert len(lines) >= 2 and all(set(s) <= set(text8.ALPHABET) for s in lines[:2])


def _deflated_zip(path, text: str) -> bytes:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("text8", text)
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["flipped", "truncated", "truncated-no-suffix"])
def test_damaged_zip_says_so_and_how_to_get_a_good_copy(tmp_path, capsys, damage) -> None:
    """Flipped deflate bytes (a zlib error) and a cut-off download (no central directory, which
    zipfile would not even call a zip) both name the archive as damaged, not as text."""
    from discrete_diffusion.cli.main import main

    good = _deflated_zip(tmp_path / "good.zip", _text(20 * SEQ * 10))
    if damage == "flipped":
        bad = bytearray(good)
        start = 30 + len("text8")  # the deflate stream follows the local header and the name
        for i in range(start + 8, start + 40):
            bad[i] ^= 0xFF
        path = tmp_path / "text8.zip"
    else:
        bad = bytearray(good[: len(good) // 2])
        path = tmp_path / ("text8.zip" if damage == "truncated" else "text8")
    path.write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="damaged or incomplete") as err:
        build(Config(seq_len=SEQ), str(path))
    assert "d3pm data download-text8 --dir DIR" in str(err.value)
    assert "d3pm data text8" not in str(err.value).replace("download-text8", "")
    config = tmp_path / "c.yaml"
    config.write_text("data: {kind: text8, seq_len: 16}\nmodel: {kind: mlp, hidden: 8, layers: 1}\n"
                      "method: {kind: diffusion, transition: uniform, num_steps: 4}\n"
                      "train: {steps: 1, batch_size: 2, device: cpu}\n")
    assert main(["train", "--config", str(config), "--data", str(path),
                 "--out", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "damaged or incomplete" in lines[0], lines
