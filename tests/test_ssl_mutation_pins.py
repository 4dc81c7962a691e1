"""Pins for fer_nb/ssl written from the survivors of the second mutation run (issue #18,
benchmarks/results/mutation/ssl_io.json): defaults, bounds, messages, seeding, scaling and the
device of every tensor the SSL code makes. Each test fails on a named kind of mutation."""
import inspect
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fer_nb.data.schema import FaceArrays
from fer_nb.ssl.mixup import guess_labels, mixup, sharpen
from fer_nb.ssl.ema import WeightEMA, make_ema_model
from fer_nb.ssl.mean_teacher import MeanTeacher
from fer_nb.ssl.mixmatch import (MixMatch, PairedBatches, SSLMethod, Supervised, balanced_label_split,
                                 collapsed)
from tests.fake_cuda import fake_cuda


def _defaults(fn):
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_published_defaults():
    """MixMatch (Berthelot et al. 2019): T 0.5, K 2, alpha 0.75, lambda_u 75; Mean Teacher's
    consistency ramp; the EMA and optimiser defaults the docstrings state."""
    assert _defaults(MixMatch.__init__) == {"T": 0.5, "K": 2, "alpha": 0.75, "lambda_u": 75.0, "rampup": 0.016}
    assert _defaults(MeanTeacher.__init__) == {"consistency": 10.0, "rampup": 0.3, "ema_decay": 0.99}
    assert _defaults(SSLMethod.__init__) == {"lr": 0.002, "ema_decay": 0.999, "weight_decay": 0.0, "augment": None}
    assert _defaults(Supervised.__init__) == {"mixup_alpha": 0.75}
    assert _defaults(WeightEMA.__init__) == {"alpha": 0.999, "weight_decay": 0.0, "init": True}


# ---------------------------------------------------------------------------------- mixup.py ---

def test_sharpen_acts_on_the_last_dimension_of_any_rank():
    p = torch.softmax(torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0)), -1)
    out = sharpen(p, 0.5)
    ref = p ** 2 / (p ** 2).sum(-1, keepdim=True)
    torch.testing.assert_close(out, ref)


def test_sharpen_refuses_a_negative_temperature_with_its_value():
    with pytest.raises(ValueError, match=re.escape("sharpening temperature T must be >= 0, got -0.5")):
        sharpen(torch.full((1, 2), 0.5), -0.5)


def test_guess_labels_takes_a_list_as_well_as_a_tensor():
    probs = torch.softmax(torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1)), -1)
    torch.testing.assert_close(guess_labels(list(probs)), guess_labels(probs))
    torch.testing.assert_close(guess_labels(list(probs)), probs.mean(0))
    with pytest.raises(ValueError, match=re.escape("guess_labels expects (K, B, C) probabilities, got (5, 4)")):
        guess_labels(probs[0])


def test_mixup_checks_each_batch_dimension_and_says_which():
    x, y = torch.zeros(4, 2), torch.zeros(4, 3)
    msg = "mixup: x (4, 2), y (4, 3) and perm (3,) must share the batch dimension"
    with pytest.raises(ValueError, match=re.escape(msg)):
        mixup(x, y, 0.7, torch.arange(3))          # only perm is off
    with pytest.raises(ValueError, match=re.escape("mixup: x (4, 2), y (5, 3) and perm (4,)")):
        mixup(x, torch.zeros(5, 3), 0.7, torch.arange(4))


# ------------------------------------------------------------------------------------ ema.py ---

def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_ema_alpha_bounds_are_inclusive(alpha):
    net = _net()
    WeightEMA(net, make_ema_model(net), alpha=alpha)


def test_ema_errors_name_the_value_and_the_fix():
    net = _net()
    with pytest.raises(ValueError, match=re.escape("EMA alpha must be in [0, 1], got 1.5")):
        WeightEMA(net, make_ema_model(net), alpha=1.5)
    with pytest.raises(ValueError, match=re.escape("weight_decay must be >= 0, got -0.1")):
        WeightEMA(net, make_ema_model(net), weight_decay=-0.1)
    other = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))   # 4 parameters, not 6
    msg = "model and ema_model must have the same parameters (use make_ema_model(model))"
    with pytest.raises(ValueError, match=re.escape(msg)):
        WeightEMA(net, other)


# ------------------------------------------------------------------------------- mixmatch.py ---

def _faces(n, classes=3, seed=0, value=None):
    g = torch.Generator().manual_seed(seed)
    img = torch.randint(0, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8) if value is None else \
        torch.full((n, 1, 4, 4), value, dtype=torch.uint8)
    return FaceArrays(img, {"expression": torch.arange(n) % classes}, "t", ("a", "b", "c"))


def test_balanced_split_with_the_last_class_absent_fills_from_labelled_rows_only():
    y = torch.tensor([0, 1, 0, 1, 0, 1, -1, -1])      # 3 classes, class 2 absent, two unlabelled rows
    for seed in range(20):
        lab, unl = balanced_label_split(y, 4, 3, torch.Generator().manual_seed(seed))
        assert (y[lab] >= 0).all() and lab.numel() == 4
        assert sorted(lab.tolist() + unl.tolist()) == list(range(8))
    with pytest.raises(ValueError, match="only 6 images have a label"):
        balanced_label_split(y, 7, 3, torch.Generator().manual_seed(0))


def test_balanced_split_draws_are_unchanged_when_every_row_is_labelled():
    """Two per class in the random order, then the first ``short`` remaining rows of that order."""
    y = torch.tensor([0, 0, 0, 0, 0, 1, 2])
    lab, unl = balanced_label_split(y, 6, 3, torch.Generator().manual_seed(0))
    order = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    seen, take = {0: 0, 1: 0, 2: 0}, []
    for i in order.tolist():
        take.append(seen[int(y[i])] < 2)
        seen[int(y[i])] += 1
    take = torch.tensor(take)
    rest = order[~take]
    assert lab.tolist() == order[take].tolist() + rest[:2].tolist()
    assert unl.tolist() == rest[2:].tolist()


def test_paired_batches_labelled_set_of_one_and_empty_message():
    one = _faces(1)
    batches = list(PairedBatches(one, None, 2, 2, 0, 0, torch.device("cpu")))
    assert len(batches) == 2 and batches[0]["image"].shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match=re.escape("PairedBatches: the labelled set is empty")):
        PairedBatches(one.subset(torch.arange(0)), None, 2, 2, 0, 0, torch.device("cpu"))


def test_paired_batches_seed_formula():
    """The generator is seeded by seed * 100003 + epoch (docstring): (1, 0) and (0, 100003) agree."""
    lab, unl = _faces(20), _faces(30, seed=1)
    a = next(iter(PairedBatches(lab, unl, 4, 3, 1, 0, torch.device("cpu"))))
    b = next(iter(PairedBatches(lab, unl, 4, 3, 0, 100003, torch.device("cpu"))))
    c = next(iter(PairedBatches(lab, unl, 4, 3, 0, 1, torch.device("cpu"))))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["u_image"], b["u_image"])
    assert not torch.equal(a["image"], c["image"])


def test_paired_batches_scale_to_unit_range_and_cover_the_unlabelled_pool():
    lab, unl = _faces(4, value=255), _faces(12, value=255)
    unl.images[:, 0, 0, 0] = torch.arange(12, dtype=torch.uint8)     # tag each unlabelled image
    batches = list(PairedBatches(lab, unl, 4, 3, 0, 0, torch.device("cpu")))
    assert batches[0]["image"].max() == 1.0 and batches[0]["u_image"].max() == 1.0
    tags = torch.cat([(b["u_image"][:, 0, 0, 0] * 255).round().long() for b in batches])
    assert sorted(tags.tolist()) == list(range(12))                  # one pass over all 12


def test_collapse_threshold_is_inclusive():
    pred = torch.tensor([0] * 49 + [1])                              # 98 % exactly
    assert collapsed(pred, 3) is True
    assert collapsed(torch.tensor([0] * 48 + [1, 2]), 3) is False


def test_mixmatch_accepts_one_augmentation_and_refuses_zero():
    MixMatch(_net(), 2, K=1)
    with pytest.raises(ValueError):
        MixMatch(_net(), 2, K=0)


def test_decoupled_weight_decay_without_ema():
    """ema_decay=None: the model itself decays by (1 - weight_decay) after each Adam step."""
    net = nn.Linear(3, 2)
    m = Supervised(net, 2, ema_decay=None, weight_decay=0.1, mixup_alpha=0.0, lr=0.0, augment=lambda x: x)
    before = [p.detach().clone() for p in net.parameters()]
    m.train_step({"image": torch.randn(4, 3), "expression": torch.tensor([0, 1, 0, 1])},
                 SimpleNamespace(step=0, epoch=0, progress=0.0))
    for p, b in zip(net.parameters(), before):
        torch.testing.assert_close(p.detach(), 0.9 * b)


def test_supervised_without_mixup_draws_no_permutation():
    """mixup_alpha=0 means lambda = 1: no MixUp and no permutation drawn from the global RNG."""
    m = Supervised(nn.Linear(3, 2), 2, ema_decay=None, mixup_alpha=0.0, augment=lambda x: x)
    batch = {"image": torch.randn(4, 3), "expression": torch.tensor([0, 1, 0, 1])}
    state = torch.get_rng_state()
    m.train_step(batch, SimpleNamespace(step=0, epoch=0, progress=0.0))
    x = torch.randn(3)
    torch.set_rng_state(state)
    assert torch.equal(x, torch.randn(3))


# ---------------------------------------------------------------- device of every tensor made ---

def test_paired_batches_on_cuda_put_every_tensor_there():
    with fake_cuda():
        dev = torch.device("cuda")
        lab, unl = _faces(6), _faces(9)
        pb = PairedBatches(lab, unl, 3, 2, 0, 0, dev)
        for b in pb:
            assert {t.device.type for t in b.values()} == {"cuda"}
        assert pb._indices(6).device.type == "cuda"


def test_steps_with_mixup_run_on_cuda():
    """randperm for MixUp is made on the batch's device (a CPU permutation indexing CUDA data
    would be a device mix in MixMatch's and the supervised baseline's step)."""
    with fake_cuda():
        dev = torch.device("cuda")
        for method in (Supervised(nn.Linear(3, 2).to(dev), 2, augment=lambda x: x),
                       MixMatch(nn.Linear(3, 2).to(dev), 2, augment=lambda x: x, alpha=0.75)):
            batch = {"image": torch.randn(4, 3, device=dev), "expression": torch.tensor([0, 1, 0, 1], device=dev),
                     "u_image": torch.randn(4, 3, device=dev)}
            out = method.train_step(batch, SimpleNamespace(step=0, epoch=0, progress=0.5))
            assert all(v.device.type == "cuda" for v in out.values())


# ------------------------------------------------- third mutation run: what the trampolines hid ---
# mutmut calls the mutated function through a trampoline that keeps the original signature, so
# the defaults are pinned by behaviour (the attributes set), not by inspect.signature.

def test_default_hyperparameters_reach_the_objects():
    mm = MixMatch(_net(), 2)
    assert (mm.T, mm.K, mm.alpha, mm.lambda_u, mm.rampup) == (0.5, 2, 0.75, 75.0, 0.016)
    mt = MeanTeacher(_net(), 2)
    assert (mt.consistency, mt.rampup, mt.ema.alpha) == (10.0, 0.3, 0.99)
    assert Supervised(_net(), 2).mixup_alpha == 0.75
    base = Supervised(_net(), 2)
    assert base.ema.alpha == 0.999 and base.ema.weight_decay == 0.0
    assert base.optimizer.param_groups[0]["lr"] == 0.002


def test_mean_teacher_without_a_teacher_says_so():
    with pytest.raises(ValueError, match=re.escape("Mean Teacher needs a teacher: ema_decay must be a number in (0, 1)")):
        MeanTeacher(_net(), 2, ema_decay=None)


def test_mean_teacher_forwards_the_teacher_under_autocast(monkeypatch):
    """The teacher's forward runs under the same bf16 autocast as the student's (CPU bf16 mode)."""
    monkeypatch.setenv("FER_NB_CPU_BF16", "1")
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 2))
    mt = MeanTeacher(net, 2, augment=lambda x: x)
    seen = []
    mt.ema_model.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    mt.train_step({"image": torch.randn(4, 3), "expression": torch.tensor([0, 1, 0, 1]), "u_image": torch.randn(4, 3)},
                  SimpleNamespace(step=0, epoch=0, progress=0.5))
    assert seen == [torch.bfloat16]


def test_base_method_names_its_module_and_its_missing_step():
    m = SSLMethod(_net(), 2)
    assert list(m.modules()) == ["model"] and m.modules()["model"] is m.model
    with pytest.raises(NotImplementedError, match="^SSLMethod must implement train_step$"):
        m.train_step({}, SimpleNamespace())


def test_load_json_reads_what_save_json_wrote(tmp_path):
    from fer_nb import io

    path = io.save_json({"a": [1, 2.5], "b": "x"}, tmp_path / "m.json")
    assert io.load_json(path) == {"a": [1, 2.5], "b": "x"}
