"""Hand-computed pins of the SSL building blocks (the mutation run over fer_nb/ssl and fer_nb/io
found these behaviours untested): ramp-ups, the balanced label split, MixMatch's interleave, the
Mean Teacher and supervised steps, EMA state, and the JSON writer."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fer_nb.io import check_finite, save_json
from fer_nb.ssl import MeanTeacher, MixMatch, Supervised, balanced_label_split
from fer_nb.ssl.ema import WeightEMA, make_ema_model
from fer_nb.ssl.mean_teacher import sigmoid_rampup
from fer_nb.ssl.mixmatch import linear_rampup
from fer_nb.ssl.mixup import interleave, interleave_offsets


# ------------------------------------------------------------------------------------- ramp-ups

@pytest.mark.parametrize("progress, length, expected", [
    (0.0, 0.4, math.exp(-5.0)), (0.2, 0.4, math.exp(-1.25)), (0.4, 0.4, 1.0), (0.9, 0.4, 1.0),
    (-0.1, 0.4, math.exp(-5.0)), (0.5, 1.0, math.exp(-1.25)), (0.25, 0.5, math.exp(-1.25)),
    (0.3, 0.0, 1.0), (0.3, -1.0, 1.0), (0.1, 1.0, math.exp(-5.0 * 0.81)),
])
def test_sigmoid_rampup_values(progress, length, expected):
    """Mean Teacher: exp(-5 (1 - t)^2), t = clip(progress / length, 0, 1); no ramp-up -> 1."""
    assert sigmoid_rampup(progress, length) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("progress, length, expected", [
    (0.1, 0.4, 0.25), (0.4, 0.4, 1.0), (2.0, 0.4, 1.0), (-0.1, 0.4, 0.0), (0.5, 0.0, 1.0), (0.5, 2.0, 0.25),
])
def test_linear_rampup_values(progress, length, expected):
    assert linear_rampup(progress, length) == pytest.approx(expected, rel=1e-12)


# ------------------------------------------------------------------------ balanced label split

def _counts(labels, idx, num_classes):
    return torch.bincount(labels[idx], minlength=num_classes).tolist()


def test_split_takes_exactly_n_over_c_per_class_when_every_class_has_enough():
    labels = torch.arange(3).repeat_interleave(10)          # 10 of each of 3 classes
    lab, unl = balanced_label_split(labels, 6, 3, torch.Generator().manual_seed(0))
    assert _counts(labels, lab, 3) == [2, 2, 2]              # class 0 included, no class over its share
    assert sorted(torch.cat([lab, unl]).tolist()) == list(range(30)) and len(unl) == 24


def test_split_fills_a_short_class_from_the_others():
    labels = torch.tensor([0] * 10 + [1] * 6 + [2] * 2)
    lab, unl = balanced_label_split(labels, 9, 3, torch.Generator().manual_seed(1))
    counts = _counts(labels, lab, 3)
    assert len(lab) == 9 and len(unl) == 9 and counts[2] == 2   # the short class gives all it has
    assert counts[0] >= 3 and counts[1] >= 3 and counts[0] + counts[1] == 7     # one image fills the gap
    assert not set(lab.tolist()) & set(unl.tolist())


def test_split_with_a_budget_that_is_not_a_multiple_of_the_classes():
    labels = torch.arange(3).repeat_interleave(10)
    lab, _ = balanced_label_split(labels, 7, 3, torch.Generator().manual_seed(2))
    counts = _counts(labels, lab, 3)
    assert len(lab) == 7 and sorted(counts) == [2, 2, 3]


def test_split_never_labels_rows_without_a_label():
    labels = torch.tensor([-1] * 5 + [0] * 5 + [1] * 5)
    lab, unl = balanced_label_split(labels, 4, 2, torch.Generator().manual_seed(3))
    assert (labels[lab] >= 0).all() and torch.bincount(labels[lab], minlength=2).tolist() == [2, 2]
    assert set(range(5)) <= set(unl.tolist())


def test_split_of_one_label():
    labels = torch.arange(4).repeat_interleave(3)
    lab, unl = balanced_label_split(labels, 1, 4, torch.Generator().manual_seed(4))
    assert len(lab) == 1 and len(unl) == 11


@pytest.mark.parametrize("n", [12, 20])
def test_split_all_labels_is_the_generators_permutation(n):
    """The "All" column: every index labelled, in the order of randperm(n, generator) (with
    imbalanced classes the balanced path would reorder them: the fill comes last)."""
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 2 + [3])
    lab, unl = balanced_label_split(labels, n, 4, torch.Generator().manual_seed(5))
    assert torch.equal(lab, torch.randperm(12, generator=torch.Generator().manual_seed(5)))
    assert unl.numel() == 0 and unl.dtype == torch.long


def test_split_is_drawn_from_the_given_generator_only():
    labels = torch.arange(3).repeat_interleave(10)
    first = balanced_label_split(labels, 6, 3, torch.Generator().manual_seed(7))
    torch.manual_seed(123)                                        # the global RNG must not matter
    second = balanced_label_split(labels, 6, 3, torch.Generator().manual_seed(7))
    torch.manual_seed(456)
    other = balanced_label_split(labels, 6, 3, torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not torch.equal(first[0], other[0])


@pytest.mark.parametrize("n", [0, -3])
def test_split_refuses_an_empty_budget(n):
    with pytest.raises(ValueError, match="n_labelled must be >= 1"):
        balanced_label_split(torch.zeros(4, dtype=torch.long), n, 2, torch.Generator())


# ------------------------------------------------------------------------------------ interleave

def test_interleave_offsets_by_hand():
    assert interleave_offsets(5, 2) == [0, 1, 3, 5]      # groups [1, 2, 2]: the remainder goes to the last
    assert interleave_offsets(6, 2) == [0, 2, 4, 6]
    assert interleave_offsets(7, 1) == [0, 3, 7]


def test_interleave_swaps_slice_i_of_chunk_0_with_chunk_i_and_is_an_involution():
    xs = [torch.arange(5) + 10 * k for k in range(3)]     # chunk k holds 10k .. 10k + 4
    out = interleave(xs, 5)
    assert out[0].tolist() == [0, 11, 12, 23, 24]
    assert out[1].tolist() == [10, 1, 2, 13, 14]
    assert out[2].tolist() == [20, 21, 22, 3, 4]
    assert all(torch.equal(a, b) for a, b in zip(interleave(out, 5), xs))


# ------------------------------------------------------------------------------ training steps

class _Tiny(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.fc = nn.Linear(4, classes)

    def forward(self, x, **kw):
        return self.fc(x.flatten(1))


def _batch(seed=0, b=6, classes=3, unlabelled=True):
    g = torch.Generator().manual_seed(seed)
    batch = {"image": torch.rand(b, 1, 2, 2, generator=g), "expression": torch.randint(0, classes, (b,), generator=g)}
    if unlabelled:
        batch["u_image"] = torch.rand(b, 1, 2, 2, generator=g)
    return batch


def _identity(x):
    return x


class _Shift:
    """An 'augmentation' whose k-th call adds k: the student sees x, the teacher x + 1."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return x + (self.calls - 1)


def test_mean_teacher_step_is_ce_plus_ramped_consistency():
    torch.manual_seed(0)
    mt = MeanTeacher(_Tiny(), 3, consistency=10.0, rampup=0.4, ema_decay=0.9, augment=_Shift())
    with torch.no_grad():
        mt.ema_model.fc.weight[0].add_(1.0)                # teacher differs from the student (class 0)
    batch = _batch()
    x = torch.cat([batch["image"], batch["u_image"]])
    with torch.no_grad():
        student = mt.model(x)                              # first view: x
        teacher = torch.softmax(mt.ema_model(x + 1), 1)    # second, independent view: x + 1
        ce = F.cross_entropy(student[:6], batch["expression"])
        cons = (torch.softmax(student, 1) - teacher).pow(2).sum(1).mean() / 3
    logs = mt.train_step(batch, SimpleNamespace(progress=0.2))
    assert float(logs["loss_ce"]) == pytest.approx(float(ce), rel=1e-5)
    assert float(logs["loss_cons"]) == pytest.approx(float(cons), rel=1e-5) and float(cons) > 1e-4
    assert float(logs["loss"]) == pytest.approx(float(ce + 10.0 * math.exp(-1.25) * cons), rel=1e-5)


def test_mean_teacher_needs_a_teacher():
    with pytest.raises(ValueError, match="teacher"):
        MeanTeacher(_Tiny(), 3, ema_decay=None)


def test_supervised_step_without_mixup_is_cross_entropy():
    torch.manual_seed(0)
    sup = Supervised(_Tiny(), 3, mixup_alpha=0.0, augment=_identity)
    batch = _batch(unlabelled=False)
    with torch.no_grad():
        ce = F.cross_entropy(sup.model(batch["image"]), batch["expression"])
    assert float(sup.train_step(batch, SimpleNamespace(progress=0.0))["loss"]) == pytest.approx(float(ce), rel=1e-5)


def test_supervised_step_with_mixup_mixes_images_and_targets():
    torch.manual_seed(0)
    sup = Supervised(_Tiny(), 3, mixup_alpha=0.75, augment=_identity)
    batch = _batch(unlabelled=False)
    lam = float(np.random.RandomState(11).beta(0.75, 0.75))   # the draw the step makes after np.random.seed(11)
    lam = max(lam, 1 - lam)
    torch.manual_seed(3)
    perm = torch.randperm(6)
    x = lam * batch["image"] + (1 - lam) * batch["image"][perm]
    y = F.one_hot(batch["expression"], 3).float()
    y = lam * y + (1 - lam) * y[perm]
    with torch.no_grad():
        expected = -(y * torch.log_softmax(sup.model(x), 1)).sum(1).mean()
    np.random.seed(11)
    torch.manual_seed(3)
    assert float(sup.train_step(batch, SimpleNamespace(progress=0.0))["loss"]) == pytest.approx(float(expected), rel=1e-5)


def test_mixmatch_keeps_its_hyperparameters_and_rejects_k0():
    mm = MixMatch(_Tiny(), 3, T=0.3, K=3, alpha=0.6, lambda_u=50.0, rampup=0.2)
    assert (mm.T, mm.K, mm.alpha, mm.lambda_u, mm.rampup) == (0.3, 3, 0.6, 50.0, 0.2)
    with pytest.raises(ValueError, match="K"):
        MixMatch(_Tiny(), 3, K=0)


def test_mixmatch_without_unlabelled_data_is_the_labelled_loss():
    torch.manual_seed(0)
    mm = MixMatch(_Tiny(), 3, alpha=0.0, augment=_identity)
    batch = _batch(unlabelled=False)
    with torch.no_grad():
        ce = F.cross_entropy(mm.model(batch["image"]), batch["expression"])
    logs = mm.train_step(batch, SimpleNamespace(progress=1.0))
    assert float(logs["loss_u"]) == 0.0
    assert float(logs["loss"]) == pytest.approx(float(ce), rel=1e-5) == pytest.approx(float(logs["loss_x"]), rel=1e-6)


def test_extra_state_holds_the_ema_exactly_when_there_is_one():
    with_ema = Supervised(_Tiny(), 3, ema_decay=0.9)
    assert set(with_ema.extra_state()) == {"ema"} and with_ema.extra_state()["ema"] is with_ema.ema
    assert Supervised(_Tiny(), 3, ema_decay=None).extra_state() == {}
    assert set(with_ema.optimizers()) == {"opt"} and with_ema.optimizers()["opt"] is with_ema.optimizer


def test_ema_state_round_trip():
    torch.manual_seed(0)
    model = _Tiny()
    ema = WeightEMA(model, make_ema_model(model), alpha=0.7, weight_decay=0.01)
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    ema.step()
    state = ema.state_dict()
    assert state["alpha"] == 0.7 and state["weight_decay"] == 0.01 and set(state) == {"ema_model", "alpha", "weight_decay"}
    other = WeightEMA(model, make_ema_model(_Tiny()), alpha=0.7)
    other.load_state_dict(state)
    assert torch.equal(other.ema_model.fc.weight, ema.ema_model.fc.weight)


# ---------------------------------------------------------------------------------- JSON writer

def test_save_json_converts_tensors_numpy_paths_and_tuples(tmp_path):
    from pathlib import Path

    path = save_json({"t": torch.tensor([1.5, 2.0]), "s": torch.tensor(3), "n": np.float32(0.25),
                      "p": Path("a/b"), "tu": (1, 2)}, tmp_path / "x.json")
    assert json.loads(path.read_text()) == {"t": [1.5, 2.0], "s": 3, "n": 0.25, "p": "a/b", "tu": [1, 2]}
    assert path.read_text().endswith("}\n") and path.read_text().startswith("{\n  ")


def test_save_json_names_what_it_cannot_write(tmp_path):
    with pytest.raises(TypeError, match="cannot write a set to JSON"):
        save_json({"bad": {1, 2}}, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_save_json_refuses_nan_where_it_is_unless_allowed(tmp_path):
    with pytest.raises(ValueError, match=r"non-finite number nan at a\.b\[1\]"):
        save_json({"a": {"b": [1.0, float("nan")]}}, tmp_path / "x.json")
    with pytest.raises(ValueError, match="at top level"):
        check_finite(float("inf"))
    with pytest.raises(ValueError, match=r"at \[0\]"):
        check_finite((float("-inf"),))
    path = save_json({"a": float("nan")}, tmp_path / "y.json", allow_nan=True)
    assert "NaN" in path.read_text()


def test_weight_ema_defaults_decay_nothing_and_average_at_0_999():
    """By default the EMA does not touch the trained model (weight_decay 0) and moves 0.1 % per step."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema_model = make_ema_model(model)
    ema = WeightEMA(model, ema_model)
    assert (ema.alpha, ema.weight_decay) == (0.999, 0.0)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.step()
    for p, q, b in zip(model.parameters(), ema_model.parameters(), before):
        torch.testing.assert_close(p.detach(), b + 1.0)                    # the model is left as it is
        torch.testing.assert_close(q.detach(), 0.999 * b + 0.001 * (b + 1.0))


def test_weight_ema_copies_the_model_into_the_ema_model_by_default():
    torch.manual_seed(1)
    model, other = nn.Linear(3, 2), nn.Linear(3, 2)
    WeightEMA(model, other)
    for p, q in zip(model.parameters(), other.parameters()):
        torch.testing.assert_close(q, p)
    kept = nn.Linear(3, 2)
    before = [q.detach().clone() for q in kept.parameters()]
    WeightEMA(model, kept, init=False)
    for q, b in zip(kept.parameters(), before):
        torch.testing.assert_close(q.detach(), b)
