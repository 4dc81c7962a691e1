import pytest
import torch

from fer_nb.data.schema import AUS, EXPRESSIONS, FaceArrays, au_index, concat


def _arrays(n=10):
    return FaceArrays(torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8),
                      {"expression": torch.arange(n) % 7, "subject": torch.arange(n) // 2}, name="t")


def test_sample_and_batches():
    ds = _arrays()
    s = ds[3]
    assert s["image"].dtype == torch.float32 and 0 <= s["image"].min() and s["image"].max() <= 1
    batches = list(ds.batches(4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(b["expression"]) for b in batches] == [4, 4, 2]
    assert sorted(torch.cat([b["subject"] for b in batches]).tolist()) == sorted(ds.labels["subject"].tolist())
    assert len(list(ds.batches(4, drop_last=True))) == 2


def test_subset_concat_counts():
    ds = _arrays()
    sub = ds.subset([0, 1, 2])
    assert len(sub) == 3 and sub.counts()["neutral"] == 1
    both = concat([ds, sub])
    assert len(both) == 13


@pytest.mark.parametrize("bad", [
    dict(images=torch.zeros(2, 1, 4, 4)),  # float images
    dict(images=torch.zeros(2, 4, 4, dtype=torch.uint8)),  # 3-D
    dict(labels={"expression": torch.tensor([0, 9])}),  # out of range
    dict(labels={"expression": torch.tensor([0])}),  # wrong length
    dict(labels={"emotion": torch.tensor([0, 1])}),  # unknown key
])
def test_bad_arrays(bad):
    kwargs = dict(images=torch.zeros(2, 1, 4, 4, dtype=torch.uint8), labels={})
    kwargs.update(bad)
    with pytest.raises((TypeError, ValueError, KeyError)):
        FaceArrays(**kwargs)


def test_canonical_orders():
    assert EXPRESSIONS[0] == "neutral" and len(EXPRESSIONS) == 8
    assert au_index(12) == AUS.index(12)
    with pytest.raises(ValueError, match="AU3"):
        au_index(3)
    with pytest.raises(ValueError):
        next(_arrays().batches(0))
