"""LM1B-style data: SentencePiece training, packing into rows, source, codec, errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from discrete_diffusion.cli.main import main
from discrete_diffusion.data import lm1b
from discrete_diffusion.data.base import codec_from_dir
from discrete_diffusion.data.lm1b import Config, SentencePieceCodec, build, load_processor, pack

VOCAB, SEQ = 60, 16
WORDS = "the cat dog sat on mat a big small red blue house ran to and quickly".split()


def _sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(WORDS[i] for i in rng.integers(len(WORDS), size=rng.integers(3, 9)))
            .capitalize() + "." for _ in range(n)]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISCRETE_DIFFUSION_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def sentence_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm1b") / "sentences.txt"
    path.write_text("\n".join(_sentences(400)) + "\n\n")
    return path


@pytest.fixture(scope="module")
def spm_model(sentence_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("spm") / "tiny"
    return lm1b.train_sentencepiece(sentence_file, out, vocab_size=VOCAB)


def test_trained_model_has_the_vocabulary(spm_model) -> None:
    sp = load_processor(spm_model)
    assert spm_model.suffix == ".model"
    assert sp.get_piece_size() == VOCAB and sp.bos_id() == 1 and sp.eos_id() == 2
    assert sp.decode(sp.encode("the red cat sat.")) == "the red cat sat."


def test_pack_is_one_stream_cut_into_rows(spm_model) -> None:
    sp = load_processor(spm_model)
    sents = _sentences(30, seed=3)
    rows = pack(sents, sp, SEQ, np.dtype(np.uint16))
    stream = [t for s in sents for t in [1, *sp.encode(s), 2]]
    n = len(stream) // SEQ
    assert rows.shape == (n, SEQ) and rows.dtype == np.uint16
    np.testing.assert_array_equal(rows.reshape(-1), stream[: n * SEQ])


def test_source_splits_rows_and_info(sentence_file, spm_model) -> None:
    src = build(Config(spm_model=str(spm_model), seq_len=SEQ, embedding_dim=4),
                str(sentence_file))
    assert src.num_classes == VOCAB and src.unit == "token" and src.example_shape == (SEQ,)
    sp = load_processor(spm_model)
    sents = lm1b.read_sentences(sentence_file)
    expected = pack(sents[: int(round(0.9 * len(sents)))], sp, SEQ, np.dtype(np.uint8))
    np.testing.assert_array_equal(np.asarray(src.split("train")), expected)
    assert src.num_examples("train") == expected.shape[0]
    evals = torch.cat(list(src.eval_batches("test", 5)))
    np.testing.assert_array_equal(evals.numpy(), np.asarray(src.split("test")))
    it = src.train_batches(4, seed=0)
    batch = next(it)
    rows = {tuple(r) for r in expected.tolist()}
    assert batch.shape == (4, SEQ) and all(tuple(r) in rows for r in batch.tolist())
    resumed = src.train_batches(4, seed=0, state=it.state_dict())
    assert torch.equal(next(resumed), next(it))
    info = src.info()
    counts = np.bincount(expected.reshape(-1), minlength=VOCAB)
    np.testing.assert_allclose(info.marginal.numpy(), counts / counts.sum())
    assert info.embeddings.shape == (VOCAB, 4)


def test_trains_and_caches_its_own_model(sentence_file, monkeypatch) -> None:
    src = build(Config(vocab_size=VOCAB, seq_len=SEQ, embedding_dim=4), str(sentence_file))
    assert src.num_classes == VOCAB
    monkeypatch.setattr(lm1b, "train_sentencepiece", lambda *a, **k: pytest.fail("retrained"))
    monkeypatch.setattr(lm1b, "_build_arrays", lambda *a, **k: pytest.fail("re-tokenised"))
    again = build(Config(vocab_size=VOCAB, seq_len=SEQ, embedding_dim=4), str(sentence_file))
    np.testing.assert_array_equal(np.asarray(again.split("test")), np.asarray(src.split("test")))


def test_folder_layout_test_doubles_as_validation(tmp_path, spm_model) -> None:
    folder = tmp_path / "lm1b"
    folder.mkdir()
    (folder / "train.txt").write_text("\n".join(_sentences(200, 1)))
    (folder / "test.txt").write_text("\n".join(_sentences(40, 2)))
    src = build(Config(spm_model=str(spm_model), seq_len=SEQ, embedding_dim=4), str(folder))
    np.testing.assert_array_equal(np.asarray(src.split("validation")),
                                  np.asarray(src.split("test")))


def test_codec_save_load_render_infill(tmp_path, spm_model) -> None:
    codec = SentencePieceCodec(spm_model)
    ids = codec.encode("the big dog ran.")
    codec.save(tmp_path / "run")
    assert (tmp_path / "run" / lm1b.MODEL_FILE).is_file()
    loaded = codec_from_dir(tmp_path / "run")
    assert isinstance(loaded, SentencePieceCodec)
    assert loaded.decode(ids) == "the big dog ran."
    text = loaded.render(torch.cat([torch.tensor([1]), ids, torch.tensor([2, VOCAB])])[None])
    assert text == "<s> the big dog ran.</s> _\n"
    infill_ids, held = loaded.parse_infill("the _ _ ran.")
    assert held.tolist().count(False) == 2
    assert infill_ids[held].tolist() == codec.encode("the").tolist() + codec.encode("ran.").tolist()


def test_errors(tmp_path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        build(Config(seq_len=SEQ), str(tmp_path / "none.txt"))
    with pytest.raises(ValueError, match="no LM1B data"):
        build(Config(seq_len=SEQ), None)
    few = tmp_path / "few.txt"
    few.write_text("\n".join(_sentences(400)))
    with pytest.raises(ValueError, match="fewer than 4096 tokens"):
        build(Config(vocab_size=VOCAB, seq_len=4096), str(few))
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"discrete-diffusion\[lm1b\]"):
        build(Config(seq_len=SEQ), "hf:lm1b")


def test_cli_spm(tmp_path, sentence_file) -> None:
    out = tmp_path / "m"
    assert main(["data", "spm", "--input", str(sentence_file), "--vocab-size", "50",
                 "--out", str(out)]) == 0
    assert load_processor(tmp_path / "m.model").get_piece_size() == 50
