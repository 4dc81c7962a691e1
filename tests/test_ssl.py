"""MixMatch ingredients, weight EMA, BN recalibration, augmentation and the SSL training steps."""
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fer_nb.data.augment import Augment, color_jitter, random_crop, random_flip
from fer_nb.data.schema import FaceArrays
from fer_nb.models.wrn import WideResNet
from fer_nb.papers.margin_mix import METHODS, Centroids, MarginMix, fuzzy_cmeans_labels, nearest_centroid_labels
from fer_nb.ssl import MixMatch, linear_rampup
from fer_nb.ssl import (
    PairedBatches, WeightEMA, balanced_label_split, collapsed, guess_labels, interleave, make_ema_model, mixup,
    recalibrate_bn, sample_lambda, sharpen,
)

# ------------------------------------------------------------------------------------ augmentation


def test_random_crop_matches_per_sample_loop():
    x = torch.rand(6, 2, 9, 7)
    y = random_crop(x, 3, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    oy, ox = torch.randint(0, 7, (6,), generator=g), torch.randint(0, 7, (6,), generator=g)
    xp = F.pad(x, (3, 3, 3, 3), mode="reflect")
    ref = torch.stack([xp[i, :, oy[i]:oy[i] + 9, ox[i]:ox[i] + 7] for i in range(6)])
    assert torch.equal(y, ref)


def test_flip_jitter_and_generator_determinism():
    x = torch.rand(64, 1, 8, 8)
    y = random_flip(x, generator=torch.Generator().manual_seed(1))
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    kept = (y == x).flatten(1).all(1)
    assert bool((flipped | kept).all()) and 10 < int(flipped.sum()) < 54
    z = color_jitter(x, 0.2, 0.3, torch.Generator().manual_seed(2))
    assert z.min() >= 0 and z.max() <= 1 and not torch.equal(z, x)
    aug = Augment(pad=2, brightness=0.1, contrast=0.1, noise_std=0.02)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape
    with pytest.raises(TypeError, match="float"):
        aug((x * 255).to(torch.uint8))


# ------------------------------------------------------------------------------------------ EMA / BN


def _net():
    torch.manual_seed(0)
    return WideResNet(4, depth=10, widen_factor=1, in_channels=1, bn_momentum=0.1)


def test_weight_ema_matches_loop_and_copies_buffers():
    model = _net()
    ema_model = make_ema_model(model)
    ema = WeightEMA(model, ema_model, alpha=0.9, weight_decay=0.01)
    before = [p.detach().clone() for p in ema_model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model(torch.randn(4, 1, 16, 16))  # changes BN running stats
    live = [p.detach().clone() for p in model.parameters()]
    ema.step()
    for q, b, p in zip(ema_model.parameters(), before, live):
        assert torch.allclose(q, 0.9 * b + 0.1 * p, atol=1e-6)
    for bm, be in zip(model.buffers(), ema_model.buffers()):
        assert torch.equal(bm, be)
    for p, p0 in zip(model.parameters(), live):  # decoupled decay on the live model
        assert torch.allclose(p, p0 * 0.99, atol=1e-6)
    assert not any(p.requires_grad for p in ema_model.parameters())


def test_recalibrate_bn_gives_exact_batch_statistics():
    model = _net().eval()
    data = [torch.rand(8, 1, 16, 16) for _ in range(3)]
    n = recalibrate_bn(model, data)
    assert n == 3 and not model.training
    stem_bn = model.block1[0].bn1  # its input is conv1's output
    with torch.no_grad():
        feats = torch.cat([model.conv1(x) for x in data])
    assert torch.allclose(stem_bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert stem_bn.momentum == 0.1
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_bn(model, [])


# ------------------------------------------------------------------------------- MixMatch ingredients


def test_sharpen_eq8_and_guess_eq7():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    T = 0.5
    ref = p ** (1 / T) / (p ** (1 / T)).sum()
    assert torch.allclose(sharpen(p, T), ref)
    assert torch.equal(sharpen(p, 0), p) and torch.equal(sharpen(p, None), p)
    assert torch.allclose(sharpen(p, 0.01), torch.tensor([[1.0, 0.0, 0.0]]), atol=1e-6)
    probs = torch.softmax(torch.randn(3, 5, 4), -1)
    assert torch.allclose(guess_labels(probs), probs.mean(0), atol=1e-6)


def test_mixup_lambda_and_interleave():
    rng = np.random.default_rng(0)
    lams = [sample_lambda(0.75, rng) for _ in range(200)]
    assert min(lams) >= 0.5 and max(lams) <= 1.0
    assert sample_lambda(0.0) == 1.0
    x, y = torch.randn(6, 3), torch.eye(6)
    perm = torch.randperm(6)
    mx, my = mixup(x, y, 0.7, perm)
    assert torch.allclose(mx, 0.7 * x + 0.3 * x[perm]) and torch.allclose(my, 0.7 * y + 0.3 * y[perm])
    parts = [torch.arange(10) + 100 * k for k in range(3)]
    mixed = interleave(parts, 10)
    assert all(torch.equal(a, b) for a, b in zip(interleave(mixed, 10), parts))  # involution
    assert not torch.equal(mixed[0], parts[0]) and (mixed[0] >= 100).any()  # chunk 0 holds others' rows


# ------------------------------------------------------------------------------- Margin-Mix pieces


def test_fuzzy_cmeans_eq6_matches_loop():
    g = torch.Generator().manual_seed(0)
    e, c = torch.randn(5, 3, generator=g), torch.randn(4, 3, generator=g)
    d = torch.cdist(e, c)
    ref = torch.tensor([[1.0 / sum(float(d[i, k] / d[i, j]) ** 2 for j in range(4)) for k in range(4)]
                        for i in range(5)])
    assert torch.allclose(fuzzy_cmeans_labels(d ** 2), ref, atol=1e-5)
    mask = torch.tensor([True, False, True, True])
    y = fuzzy_cmeans_labels(d ** 2, mask)
    assert torch.all(y[:, 1] == 0) and torch.allclose(y.sum(1), torch.ones(5))
    hard = nearest_centroid_labels(d ** 2, mask)
    assert torch.equal(hard.argmax(1), d.masked_fill(~mask, float("inf")).argmin(1))
    on = fuzzy_cmeans_labels(torch.tensor([[0.0, 1.0]]))  # on a centroid: full membership
    assert torch.allclose(on, torch.tensor([[1.0, 0.0]]))


def test_centroid_update_eq1():
    cen = Centroids(3, 2, lr=0.5)
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    cen.update(e, F.one_hot(torch.tensor([0, 0, 1]), 3).float())
    assert torch.allclose(cen.centers[0], torch.tensor([0.5, 0.5]))  # first sight: batch mean
    assert torch.allclose(cen.centers[1], torch.tensor([1.0, 1.0]))
    assert cen.seen.tolist() == [True, True, False] and torch.all(cen.centers[2] == 0)
    cen.update(torch.tensor([[2.0, 0.0]]), F.one_hot(torch.tensor([0]), 3).float())
    assert torch.allclose(cen.centers[0], torch.tensor([1.25, 0.25]))  # c + 0.5 (mean - c)


# -------------------------------------------------------------------------------------- data protocol


def _faces(n=120, C=4, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    # class-dependent brightness pattern: learnable
    img = torch.rand(n, 1, size, size, generator=g) * 0.3
    img[torch.arange(n), 0, :, (y * size // C)] += 0.7
    return FaceArrays((img.clamp(0, 1) * 255).to(torch.uint8), {"expression": y}, class_names=tuple("abcd"))


def test_balanced_label_split():
    y = torch.cat([torch.zeros(50), torch.ones(30), torch.full((5,), 2)]).long()
    lab, unl = balanced_label_split(y, 30, 3, torch.Generator().manual_seed(0))
    assert len(lab) == 30 and len(unl) == 55 and len(set(lab.tolist()) | set(unl.tolist())) == 85
    counts = torch.bincount(y[lab], minlength=3)
    assert counts[2] == 5 and counts[0] >= 10 and counts[1] >= 10  # class 2 has only 5: shortfall filled
    lab, unl = balanced_label_split(y, 200, 3, torch.Generator().manual_seed(0))
    assert len(lab) == 85 and len(unl) == 0


def test_paired_batches_cycle_and_are_reproducible():
    ds = _faces()
    a = PairedBatches(ds.subset(torch.arange(10)), ds.subset(torch.arange(10, 120)), 8, 5, 0, 1, torch.device("cpu"))
    b = PairedBatches(ds.subset(torch.arange(10)), ds.subset(torch.arange(10, 120)), 8, 5, 0, 1, torch.device("cpu"))
    la, lb = list(a), list(b)
    assert len(a) == 5 and len(la) == 5
    assert all(torch.equal(x["u_image"], y["u_image"]) for x, y in zip(la, lb))
    assert la[0]["image"].dtype == torch.float32 and la[0]["image"].max() <= 1


def test_collapsed_rule():
    assert collapsed(torch.zeros(100, dtype=torch.long), 4)
    assert not collapsed(torch.tensor([0] * 90 + [1] * 10), 4)


# ------------------------------------------------------------------------------------------ methods


@pytest.mark.parametrize("name", list(METHODS))
def test_train_step_runs_without_host_sync_and_learns(name, monkeypatch):
    ds = _faces(160)
    lab, unl = ds.subset(torch.arange(40)), ds.subset(torch.arange(40, 160))
    torch.manual_seed(0)
    np.random.seed(0)
    model = WideResNet(4, depth=10, widen_factor=1, in_channels=1, bn_momentum=0.1)
    kw = {"lr": 0.01, "ema_decay": 0.9}
    if name == "mixmatch":
        kw.update(lambda_u=1.0, rampup=0.3)
    method = METHODS[name](model, 4, **kw)
    batches = list(PairedBatches(lab, unl, 16, 30, 0, 0, torch.device("cpu")))

    real_item = torch.Tensor.item

    def no_item(self):  # fer_nb code must not sync; torch's CPU optimizer internals may
        caller = sys._getframe(1).f_code.co_filename
        if "fer_nb" in caller:
            raise AssertionError(f".item() called inside a training step ({caller})")
        return real_item(self)

    monkeypatch.setattr(torch.Tensor, "item", no_item)
    first = None
    for i, batch in enumerate(batches):
        model.train()
        logs = method.train_step(batch, SimpleNamespace(progress=i / 30, step=i, epoch=0))
        assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in logs.values())
        first = first if first is not None else logs
    monkeypatch.undo()
    assert all(torch.isfinite(v) for v in logs.values())
    recalibrate_bn(method.eval_model, [b["image"] for b in batches[:4]])
    with torch.no_grad():
        acc = (method.eval_model(ds.images.float() / 255).argmax(1) == ds.labels["expression"]).float().mean()
    assert float(acc) > 0.4  # chance is 0.25


def test_margin_mix_options_and_state():
    model = WideResNet(4, depth=10, widen_factor=1, in_channels=1)
    mm = MarginMix(model, 4, self_label="hard", T=0, alpha=0.0, K=1, ema_decay=None, pred_u_weight=1.0)
    batch = next(iter(PairedBatches(_faces().subset(torch.arange(20)), _faces(seed=1), 8, 1, 0, 0,
                                    torch.device("cpu"))))
    logs = mm.train_step(batch, SimpleNamespace(progress=0.5))
    assert {"loss", "loss_s", "loss_m1", "loss_m2", "loss_u"} <= set(logs)
    assert mm.eval_model is model and "centroids" in mm.extra_state()
    assert bool(mm.centroids.seen.any())
    with pytest.raises(ValueError, match="self_label"):
        MarginMix(model, 4, self_label="fuzzy")


# ------------------------------------------------------------------- MixMatch step, computed by hand


class _Lin(torch.nn.Module):
    def __init__(self, d_in=12, C=3):
        super().__init__()
        self.body, self.head = torch.nn.Linear(d_in, 5), torch.nn.Linear(5, C)

    def forward(self, x):
        return self.head(torch.tanh(self.body(x.flatten(1))))


class _Shift:
    """Deterministic augmentation, different at each call (the K views differ)."""

    def __init__(self):
        self.n = 0

    def __call__(self, x, generator=None):
        self.n += 1
        return x + 0.1 * self.n


def test_linear_rampup_w_t():
    assert [linear_rampup(p, 0.4) for p in (0.0, 0.1, 0.2, 0.4, 0.9)] == pytest.approx([0.0, 0.25, 0.5, 1.0, 1.0])
    assert linear_rampup(0.0, 0.0) == 1.0


@pytest.mark.parametrize("progress", [0.0, 0.1, 0.7])
def test_mixmatch_step_by_hand(progress):
    """One MixMatch step recomputed by hand: guesses averaged over the K views (Eq. 7), sharpened
    with T (Eq. 8), MixUp with lambda' = max(lambda, 1 - lambda), L_x soft cross entropy, L_u mean
    squared error of probabilities, L = L_x + lambda_u w(t) L_u; loss values and every gradient."""
    import copy

    torch.manual_seed(2)
    C, b, T, lam_u, ramp = 3, 4, 0.5, 75.0, 0.4
    model = _Lin(C=C)
    ref = copy.deepcopy(model)
    mix = MixMatch(model, C, T=T, K=2, alpha=0.75, lambda_u=lam_u, rampup=ramp, ema_decay=None, augment=_Shift())
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand(b, 1, 3, 4, generator=g), "expression": torch.tensor([0, 2, 1, 0]),
             "u_image": torch.rand(3, 1, 3, 4, generator=g)}
    q_step = mix.guess([batch["u_image"] + 0.2, batch["u_image"] + 0.3])  # Eq. 7-8 on the two views
    torch.manual_seed(5)
    np.random.seed(5)
    logs = mix.train_step(batch, SimpleNamespace(progress=progress))

    np.random.seed(5)
    v = float(np.random.beta(0.75, 0.75))
    lam = max(v, 1 - v)
    torch.manual_seed(5)
    xl, xu1, xu2 = batch["image"] + 0.1, batch["u_image"] + 0.2, batch["u_image"] + 0.3
    with torch.no_grad():
        p = torch.stack([torch.softmax(ref(x), 1) for x in (xu1, xu2)]).mean(0)
        q = p ** (1 / T) / (p ** (1 / T)).sum(1, keepdim=True)
    assert torch.allclose(q_step, q, atol=1e-6)
    all_x = torch.cat([xl, xu1, xu2])
    all_y = torch.cat([F.one_hot(batch["expression"], C).float(), q, q])
    perm = torch.randperm(len(all_x))
    mx, my = lam * all_x + (1 - lam) * all_x[perm], lam * all_y + (1 - lam) * all_y[perm]
    logits = ref(mx)
    lx = -(my[:b] * torch.log_softmax(logits[:b], 1)).sum(1).mean()
    lu = ((torch.softmax(logits[b:], 1) - my[b:]) ** 2).mean()
    loss = lx + lam_u * min(1.0, progress / ramp) * lu
    loss.backward()
    for name, val in (("loss_x", lx), ("loss_u", lu), ("loss", loss)):
        assert torch.allclose(logs[name], val.detach(), atol=1e-5), name
    for p_, r in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p_.grad, r.grad, atol=1e-5)


def test_mixmatch_whole_pool_labelled_has_no_unlabelled_batch():
    """Issue #17: the "All" column (budget = pool) gives batches without u_image; MixMatch then
    trains on MixUp'ed labelled data (L_u = 0) instead of raising KeyError."""
    ds = _faces(40)
    lab, unl = balanced_label_split(ds.labels["expression"], 40, 4, torch.Generator().manual_seed(0))
    assert len(unl) == 0
    batches = PairedBatches(ds.subset(lab), None, 8, 2, 0, 0, torch.device("cpu"))
    model = WideResNet(4, depth=10, widen_factor=1, in_channels=1, bn_momentum=0.1)
    mix = MixMatch(model, 4, ema_decay=0.9)
    for batch in batches:
        assert "u_image" not in batch
        logs = mix.train_step(batch, SimpleNamespace(progress=0.5))
        assert float(logs["loss_u"]) == 0.0 and torch.isfinite(logs["loss"])
        assert torch.allclose(logs["loss"], logs["loss_x"])
