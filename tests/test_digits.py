"""scikit-learn digits source: fixed split, levels, mask, seeded resumable batches."""

import numpy as np
import pytest
import torch

from discrete_diffusion.data import digits


@pytest.fixture(scope="module")
def source():
    return digits.build(digits.Config(), "digits")


def test_split_is_fixed_and_disjoint(source):
    assert source.num_examples("train") == 1437 and source.num_examples("test") == 360
    again = digits.load_digit_splits()
    np.testing.assert_array_equal(again["test"], source.splits["test"])
    from sklearn.datasets import load_digits

    flat = load_digits().images.astype(np.uint8).reshape(1797, -1)
    rows = {r.tobytes(): i for i, r in enumerate(flat)}
    test_ids = {rows[r.reshape(-1).tobytes()] for r in source.splits["test"]}
    train_ids = {rows[r.reshape(-1).tobytes()] for r in source.splits["train"]}
    assert len(test_ids | train_ids) >= 1790  # a few digits are exact duplicates
    assert not np.shares_memory(source.splits["train"], source.splits["test"])


def test_info_levels_and_mask(source):
    info = source.info()
    assert info.num_classes == 17 and info.mask_index == 8 and info.unit == "dim"
    assert info.example_shape == (1, 8, 8)
    batch = next(iter(source.eval_batches("test", 400)))
    assert batch.dtype == torch.long and batch.shape == (360, 1, 8, 8)
    assert batch.min() >= 0 and batch.max() == 16
    assert not source.flip


def test_batches_resume_exactly(source):
    it = source.train_batches(100, seed=3)
    for _ in range(20):  # crosses an epoch boundary (14 batches per epoch)
        next(it)
    state = it.state_dict()
    expected = [next(it) for _ in range(3)]
    resumed = source.train_batches(100, seed=3, state=state)
    for a in expected:
        assert torch.equal(a, next(resumed))


def test_ranks_partition_global_batch(source):
    one = next(source.train_batches(64, seed=1))
    halves = [next(source.train_batches(32, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert torch.equal(torch.cat(halves), one)


def test_rejects_a_path():
    with pytest.raises(ValueError, match="built in"):
        digits.build(digits.Config(), "/some/folder")
