"""Subject-independent folds, label budgets and subject-disjoint validation splits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fer_nb.data.splits import labelled_split, subject_kfold, train_val_by_subject


def _subjects(n_subjects=11, seed=0):
    rng = np.random.default_rng(seed)
    return torch.tensor(np.repeat(np.arange(100, 100 + n_subjects), rng.integers(1, 9, n_subjects)))


@pytest.mark.parametrize("k", [2, 5, 8])
def test_subject_kfold_partitions_without_subject_leak(k):
    s = _subjects()
    folds = subject_kfold(s, k, seed=3)
    assert len(folds) == k
    tested = torch.cat([te for _, te in folds])
    assert sorted(tested.tolist()) == list(range(len(s)))  # every sample tested exactly once
    for tr, te in folds:
        assert tr.dtype == torch.int64 and len(te) > 0
        assert len(tr) + len(te) == len(s)
        assert not set(s[tr].tolist()) & set(s[te].tolist())


def test_subject_kfold_balanced_and_seeded():
    s = torch.arange(40).repeat_interleave(3)  # 40 subjects x 3 images
    sizes = [len(te) for _, te in subject_kfold(s, 8, seed=0)]
    assert sizes == [15] * 8
    a = subject_kfold(s, 8, seed=1)
    b = subject_kfold(s, 8, seed=1)
    c = subject_kfold(s, 8, seed=2)
    assert all(torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert any(not torch.equal(x[1], y[1]) for x, y in zip(a, c))


@pytest.mark.parametrize("subjects,k,match", [
    ([0, 0, 1, 1], 3, "only 2 subjects"),
    ([0, -1, 1, 2], 2, "unknown subject"),
    ([0, 1, 2], 1, "k must be"),
])
def test_subject_kfold_errors(subjects, k, match):
    with pytest.raises(ValueError, match=match):
        subject_kfold(subjects, k)


def test_labelled_split_balanced():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20 + [-1] * 10)
    lab, unl = labelled_split(y, 30, seed=0)
    assert len(lab) == 30 and len(unl) == len(y) - 30
    assert not set(lab.tolist()) & set(unl.tolist())
    assert torch.bincount(y[lab], minlength=3).tolist() == [10, 10, 10]
    assert (y[lab] >= 0).all()
    lab2, _ = labelled_split(y, 31, seed=0)
    assert torch.bincount(y[lab2], minlength=3).tolist() == [11, 10, 10]  # remainder to the largest class
    assert torch.equal(labelled_split(y, 30, seed=5)[0], labelled_split(y, 30, seed=5)[0])


def test_labelled_split_proportional():
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    lab, _ = labelled_split(y, 20, seed=1, balanced=False)
    assert np.bincount(y[lab.numpy()]).tolist() == [12, 6, 2]


def test_labelled_split_errors():
    y = torch.tensor([0] * 5 + [1] * 40 + [-1] * 100)
    with pytest.raises(ValueError, match="only 45 labelled samples"):
        labelled_split(y, 46)
    with pytest.raises(ValueError, match="class 0 has 5 samples"):
        labelled_split(y, 20)  # balanced needs 10 of class 0
    assert len(labelled_split(y, 20, balanced=False)[0]) == 20
    with pytest.raises(ValueError, match="non-negative"):
        labelled_split(y, -1)


def test_train_val_by_subject():
    s = _subjects(20)
    tr, va = train_val_by_subject(s, 0.25, seed=0)
    assert len(set(s[va].tolist())) == 5
    assert not set(s[tr].tolist()) & set(s[va].tolist())
    assert sorted(torch.cat([tr, va]).tolist()) == list(range(len(s)))
    with pytest.raises(ValueError, match="at least 2 subjects"):
        train_val_by_subject([3, 3, 3])
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_by_subject(s, 1.5)
    with pytest.raises(ValueError, match="unknown subject"):
        train_val_by_subject([-1, 0, 1])


def test_folds_on_a_loaded_dataset(tmp_path):
    """CK+-style use: folds index a FaceArrays by subject."""
    from fer_nb.data.schema import FaceArrays

    n = 24
    data = FaceArrays(torch.zeros(n, 1, 4, 4, dtype=torch.uint8),
                      {"expression": torch.arange(n) % 7, "subject": torch.arange(n) // 3})
    for tr, te in subject_kfold(data.labels["subject"], 4, seed=0):
        a, b = data.subset(tr), data.subset(te)
        assert len(a) + len(b) == n
        assert not set(a.labels["subject"].tolist()) & set(b.labels["subject"].tolist())
