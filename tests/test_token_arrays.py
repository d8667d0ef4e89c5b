"""Bring-your-own token arrays: streams, rows, folder layout, vocab inference and checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from discrete_diffusion.data import token_arrays
from discrete_diffusion.data.base import codec_from_dir
from discrete_diffusion.data.token_arrays import Config, TokenCodec, build


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISCRETE_DIFFUSION_CACHE", str(tmp_path / "cache"))


def _save(path, array) -> str:
    np.save(path, array)
    return str(path)


def test_stream_split_vocab_inferred_and_crops(tmp_path) -> None:
    ids = np.random.default_rng(0).integers(0, 37, size=2000).astype(np.int32)
    ids[5] = 40  # max id 40 -> K = 41 (ids need not all occur)
    src = build(Config(seq_len=8), _save(tmp_path / "ids.npy", ids))
    assert src.num_classes == 41 and src.unit == "token"
    np.testing.assert_array_equal(np.asarray(src.split("train")), ids[:1800])
    np.testing.assert_array_equal(np.asarray(src.split("test")), ids[1900:])
    assert src.split("train").dtype == np.uint8
    batch = next(src.train_batches(3, seed=0))
    assert batch.shape == (3, 8) and batch.dtype == torch.long
    chunks = torch.cat(list(src.eval_batches("validation", 4))).reshape(-1).numpy()
    np.testing.assert_array_equal(chunks, ids[1800:1900][: (100 // 8) * 8])
    info = src.info()
    assert info.marginal.shape == (41,) and float(info.marginal[38]) == 0.0
    assert torch.isfinite(info.embeddings).all()


def test_rows_folder_and_memmap_cache(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "tok"
    folder.mkdir()
    rng = np.random.default_rng(1)
    _save(folder / "train.npy", rng.integers(0, 300, size=(50, 6)).astype(np.int64))
    _save(folder / "test.npy", rng.integers(0, 300, size=(7, 6)).astype(np.int64))
    src = build(Config(seq_len=6, vocab_size=300), str(folder))
    assert src.num_classes == 300 and src.split("train").dtype == np.uint16
    assert src.num_examples("validation") == 7  # test doubles as validation
    rows = {tuple(r) for r in np.load(folder / "train.npy").tolist()}
    assert all(tuple(r) in rows for r in next(src.train_batches(5, seed=0)).tolist())
    monkeypatch.setattr(token_arrays, "_build", lambda *a: pytest.fail("rebuilt"))
    again = build(Config(seq_len=6, vocab_size=300), str(folder))
    assert isinstance(again.split("train"), np.memmap)


@pytest.mark.parametrize(("array", "cfg", "match"), [
    (np.arange(100) % 10, Config(seq_len=4, vocab_size=5), "token id 9 is outside"),
    (np.arange(100) - 1, Config(seq_len=4), "non-negative"),
    (np.ones(100, dtype=np.float32), Config(seq_len=4), "must be integers"),
    (np.zeros((20, 5), dtype=np.int64), Config(seq_len=4), "rows have 5 tokens"),
    (np.zeros((2, 2, 2), dtype=np.int64), Config(seq_len=2), "1-D stream or rows"),
    (np.zeros(30, dtype=np.int64), Config(seq_len=4), "fewer than data.seq_len"),
])
def test_bad_arrays(tmp_path, array, cfg, match) -> None:
    with pytest.raises(ValueError, match=match):
        build(cfg, _save(tmp_path / "a.npy", array))


def test_missing_inputs(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        build(Config(), str(tmp_path / "nothing.npy"))
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match="train.npy and test.npy"):
        build(Config(), str(tmp_path / "d"))
    (tmp_path / "x.npy").write_text("not numpy")
    with pytest.raises(ValueError, match="not a numpy"):
        build(Config(), str(tmp_path / "x.npy"))


def test_codec(tmp_path) -> None:
    codec = TokenCodec(10)
    assert codec.encode("3 4 9").tolist() == [3, 4, 9]
    with pytest.raises(ValueError, match="token 10 at position 1"):
        codec.encode("1 10")
    ids, held = codec.parse_infill("1 _ 3")
    assert held.tolist() == [True, False, True] and ids[held].tolist() == [1, 3]
    codec.save(tmp_path)
    loaded = codec_from_dir(tmp_path)
    assert loaded.render(torch.tensor([[1, 10, 2]])) == "1 _ 2\n"
