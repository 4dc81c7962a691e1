"""Identity-aware tuple construction (Liu et al., Sec. 3 and 5.2)."""
import pytest
import torch

from fer_nb.data.samplers import (ANY_SUBJECT, OTHER_SUBJECT, POSITIVE_SUBJECT, QUERY_ITSELF, SAME_SUBJECT,
                                  IdentityAwareSampler, tuple_groups)


def full_grid(n_subjects=5, n_classes=4, per_cell=2):
    """Every subject shows every expression ``per_cell`` times."""
    s = torch.arange(n_subjects).repeat_interleave(n_classes * per_cell)
    y = torch.arange(n_classes).repeat_interleave(per_cell).repeat(n_subjects)
    return y, s


def test_layout_and_constraints_on_a_full_grid():
    y, s = full_grid()
    sam = IdentityAwareSampler(y, s, n_positives=3, generator=torch.Generator().manual_seed(0))
    tb = sam.build(torch.arange(len(y)))
    m, n = 3, 3
    assert tb.indices.shape == (len(y), 1 + m + n)
    q, pos, neg = tb.indices[:, 0], tb.indices[:, 1:1 + m], tb.indices[:, 1 + m:]
    assert torch.equal(q, torch.arange(len(y)))
    assert (y[pos] == y[q][:, None]).all()                       # same expression
    assert (s[pos] != s[q][:, None]).all()                       # other subjects
    assert (pos != q[:, None]).all()
    assert (s[neg] == s[q][:, None]).all()                       # same subject
    assert (y[neg] != y[q][:, None]).all()                       # other expressions...
    assert torch.equal(torch.sort(torch.cat([y[q][:, None], y[neg]], 1), 1).values,
                       torch.arange(4).expand(len(y), -1))       # ...each exactly once
    assert (tb.neg_source == SAME_SUBJECT).all() and (tb.pos_source == OTHER_SUBJECT).all()
    assert tb.fallback_rate() == 0.0
    # positives are distinct when enough exist
    srt = torch.sort(pos, 1).values
    assert (srt[:, 1:] != srt[:, :-1]).all()


def test_fallback_uses_a_positive_subject_then_any_subject():
    # subject 0 lacks expression 2; subject 1 (only other subject with expression 0) has it
    y = torch.tensor([0, 1, 0, 1, 2, 2])
    s = torch.tensor([0, 0, 1, 1, 1, 2])
    sam = IdentityAwareSampler(y, s, n_positives=1, generator=torch.Generator().manual_seed(1))
    tb = sam.build(torch.tensor([0]))
    q, p, n1, n2 = tb.indices[0].tolist()
    assert p == 2 and n1 == 1                                   # positive from subject 1; class-1 negative own subject
    assert n2 == 4 and tb.neg_source[0].tolist() == [SAME_SUBJECT, POSITIVE_SUBJECT]
    # subject 2 lacks 0 and 1; its positive (class 2) is from subject 1 -> negatives from subject 1
    tb = sam.build(torch.tensor([5]))
    assert tb.indices[0, 1].item() == 4
    assert set(tb.indices[0, 2:].tolist()) == {2, 3}
    assert (tb.neg_source == POSITIVE_SUBJECT).all()
    # a subject whose positives' subjects also lack a class -> any subject
    y = torch.tensor([0, 0, 1, 2])
    s = torch.tensor([0, 1, 2, 3])
    tb = IdentityAwareSampler(y, s, 1, torch.Generator().manual_seed(0)).build(torch.tensor([0]))
    assert tb.indices[0].tolist() == [0, 1, 2, 3] and (tb.neg_source == ANY_SUBJECT).all()


def test_positive_fallbacks_when_no_other_subject_has_the_expression():
    y = torch.tensor([0, 0, 1, 1, 2])
    s = torch.tensor([0, 0, 0, 1, 1])
    sam = IdentityAwareSampler(y, s, n_positives=3, generator=torch.Generator().manual_seed(0))
    tb = sam.build(torch.tensor([0, 4]))
    assert tb.indices[0, 1:4].tolist() == [1, 1, 1]            # same subject's other image, repeated
    assert (tb.pos_source[0] != OTHER_SUBJECT).all()
    assert tb.indices[1, 1:4].tolist() == [4, 4, 4]            # only the query itself
    assert (tb.pos_source[1] == QUERY_ITSELF).all()
    # fewer other-subject positives than M: cycle through them, never other expressions
    y, s = full_grid(n_subjects=2, n_classes=3, per_cell=1)
    tb = IdentityAwareSampler(y, s, 4, torch.Generator().manual_seed(0)).build(torch.arange(len(y)))
    assert (y[tb.indices[:, 1:5]] == y[tb.indices[:, :1]]).all()
    assert (s[tb.indices[:, 1:5]] != s[tb.indices[:, :1]]).all()


def test_seeded_and_vectorised_over_chunks():
    y, s = full_grid(n_subjects=7, n_classes=5, per_cell=3)
    a = IdentityAwareSampler(y, s, 4, torch.Generator().manual_seed(5), chunk=1000).build(torch.arange(len(y)))
    b = IdentityAwareSampler(y, s, 4, torch.Generator().manual_seed(5), chunk=1000).build(torch.arange(len(y)))
    c = IdentityAwareSampler(y, s, 4, torch.Generator().manual_seed(6), chunk=1000).build(torch.arange(len(y)))
    assert torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)
    d = IdentityAwareSampler(y, s, 4, torch.Generator().manual_seed(5), chunk=7).build(torch.arange(len(y)))
    assert d.indices.shape == a.indices.shape and (s[d.indices[:, 5:]] == s[d.indices[:, :1]]).all()


def test_positives_are_uniform_over_candidates():
    y, s = full_grid(n_subjects=6, n_classes=2, per_cell=1)   # 5 candidate positives per query
    sam = IdentityAwareSampler(y, s, 1, torch.Generator().manual_seed(0))
    picks = sam.build(torch.zeros(5000, dtype=torch.long)).indices[:, 1]
    counts = torch.bincount(picks, minlength=len(y)).float()
    cand = counts[counts > 0]
    assert len(cand) == 5 and (cand / 5000 - 0.2).abs().max() < 0.03


def test_epoch_uses_every_image_once_and_groups():
    y, s = full_grid()
    sam = IdentityAwareSampler(y, s, 2, torch.Generator().manual_seed(0))
    batches = list(sam.epoch(tuples_per_batch=6))
    qs = torch.cat([b.indices[:, 0] for b in batches])
    assert torch.equal(torch.sort(qs).values, torch.arange(len(y)))
    assert len(batches) == -(-len(y) // 6)
    g = tuple_groups(3, 6)
    assert g.tolist() == [0] * 6 + [1] * 6 + [2] * 6


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="subject ids"):
        IdentityAwareSampler(torch.tensor([0, 1]), torch.tensor([0, -1]), 1)
    with pytest.raises(ValueError, match=">= 2 expression"):
        IdentityAwareSampler(torch.tensor([0, 0]), torch.tensor([0, 1]), 1)
    with pytest.raises(ValueError, match="n_positives"):
        IdentityAwareSampler(torch.tensor([0, 1]), torch.tensor([0, 1]), 0)
