"""Device and dtype discipline without a GPU (issue #16).

* On fake CUDA tensors (``tests/fake_cuda.py``): every loss and model of ``fer_nb``, the grouping, samplers,
  augmentation, batching and metrics run forward and backward with their inputs on ``cuda``; a tensor made on
  the CPU beside CUDA inputs, a CPU generator fed to a CUDA op or ``.numpy()`` of a CUDA tensor fails here
  as it does on a GPU.
* Under CPU bf16 autocast (``FER_NB_CPU_BF16=1``): the losses and models get bf16 activations as on CUDA,
  so a float head fed bf16 features fails here.

New losses and models are discovered: a class without an entry in the tables below fails
``test_every_loss_has_a_case`` / ``test_every_model_has_a_case``.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
import torch
from torch import nn

import fer_nb.losses
import fer_nb.models
from fake_cuda import DeviceMismatch, FakeCudaTensor, fake_cuda
from fer_nb import caf_grouping, metrics
from fer_nb.data.augment import Augment
from fer_nb.data.samplers import IdentityAwareSampler, tuple_groups
from fer_nb.data.schema import FaceArrays
from fer_nb.device import autocast
from fer_nb.fast import images_to_device

CUDA = torch.device("cuda")
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- the harness itself
def test_fake_cuda_raises_what_cuda_raises():
    cpu_gen = torch.Generator().manual_seed(0)
    with fake_cuda():
        x = torch.rand(8, device="cuda")
        assert isinstance(x, FakeCudaTensor) and x.device.type == "cuda" and x.is_cuda
        with pytest.raises(DeviceMismatch, match="same device"):
            x + torch.arange(8)                       # a CPU tensor beside a CUDA one
        assert (x * torch.tensor(2.0)).device.type == "cuda"   # 0-d CPU scalars are allowed, as on CUDA
        assert x[torch.tensor([1, 2])].device.type == "cuda"    # so are CPU indices
        with pytest.raises(DeviceMismatch, match="generator"):
            torch.rand(3, device="cuda", generator=cpu_gen)
        cuda_gen = torch.Generator(device="cuda").manual_seed(1)
        assert torch.rand(3, device="cuda", generator=cuda_gen).device.type == "cuda"
        with pytest.raises(DeviceMismatch, match="generator"):
            torch.rand(3, generator=cuda_gen)          # a CUDA generator for a CPU draw
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()
        assert type(x.cpu()) is torch.Tensor and x.cpu().numpy().shape == (8,)
        assert isinstance(cpu_gen, torch.Generator)


def test_fake_cuda_modules_train():
    with fake_cuda():
        lin = nn.Linear(4, 3).to("cuda")
        assert lin.weight.device.type == "cuda"
        opt = torch.optim.Adam(lin.parameters(), lr=0.1, fused=True)
        loss = lin(torch.rand(5, 4, device="cuda")).pow(2).mean()
        loss.backward()
        assert lin.weight.grad is not None and lin.weight.grad.device.type == "cuda"
        before = lin.weight.detach().cpu().clone()
        opt.step()
        assert not torch.equal(before, lin.weight.detach().cpu())


# ----------------------------------------------------------------------------- the three GPU crashes
@pytest.mark.parametrize("method", ["otsu", "otsu_radius", "kmeans", "code"])
def test_caf_grouping_on_cuda(method):
    """Was: ``otsu_threshold`` built its bin centres on the CPU (the CAF chapter crashed on CUDA)."""
    va = torch.rand(64, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = caf_grouping.group(va, method)
    with fake_cuda():
        strong = caf_grouping.group(va.to("cuda"), method)
        assert strong.device.type == "cuda"
        assert caf_grouping.decision_threshold(va.to("cuda"), method).device.type == "cuda"
        assert torch.equal(strong.cpu(), expected)
        s, w = caf_grouping.group_code(va.to("cuda"))
        assert s.device.type == "cuda" and w.device.type == "cuda"


def test_tuple_groups_and_counts_draw_on_the_device():
    """Was: a CPU generator fed to ``torch.randn(..., device=cuda)`` in the (N+M) chapter's counts cell."""
    with fake_cuda():
        g = tuple_groups(3, 4, CUDA)
        assert g.device.type == "cuda" and g.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        with pytest.raises(DeviceMismatch, match="generator"):
            torch.randn(12, 8, generator=torch.Generator().manual_seed(1), device=CUDA)
        emb = torch.randn(12, 8, generator=torch.Generator().manual_seed(1)).to(CUDA)
        assert emb.device.type == "cuda"


@pytest.mark.parametrize("head", ["softmax", "angular", "angular_margin"])
def test_udat_domain_heads_under_bf16_autocast(head, monkeypatch):
    """Was: the softmax domain head (float) was fed bf16 features under autocast (UDAT-AS crashed on CUDA)."""
    from fer_nb.models.udat import UDATNet, udat_losses

    monkeypatch.setenv("FER_NB_CPU_BF16", "1")
    torch.manual_seed(0)
    net = UDATNet(1, 7, width=0.125, fc_dim=32, domain_head=head, domain_dim=16, lambda_=0.5, pool_size=1)
    src, tgt = torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)
    y = torch.randint(0, 7, (4,))
    with autocast(CPU):
        out = udat_losses(net, src, y, tgt)
    out["loss"].backward()
    assert all(torch.isfinite(v).all() for v in out.values())
    with fake_cuda():
        net_cuda = net.to("cuda")
        out = udat_losses(net_cuda, src.to("cuda"), y.to("cuda"), tgt.to("cuda"))
        out["loss"].backward()
        assert out["loss"].device.type == "cuda"


def test_cpu_autocast_switch(monkeypatch):
    monkeypatch.delenv("FER_NB_CPU_BF16", raising=False)
    with autocast(CPU):
        assert not torch.is_autocast_enabled("cpu")
    monkeypatch.setenv("FER_NB_CPU_BF16", "1")
    with autocast(CPU):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert nn.Linear(4, 2)(torch.rand(3, 4)).dtype == torch.bfloat16


# ----------------------------------------------------------------------------- every loss
B, D, C = 12, 8, 3


def _batch(device):
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(B, D, generator=g).to(device).requires_grad_(True)
    labels = torch.tensor([0, 1, 2] * 4).to(device)
    groups = torch.arange(3).repeat_interleave(4).to(device)
    return emb, labels, groups


def _call(name, loss, emb, labels, groups):
    if name in ("NPlusOneTupleLoss", "CoupledClustersLoss", "NMTupleClustersLoss"):
        return loss(emb, labels, groups=groups)
    if name in ("CAFCriticLoss", "FisherIPMLoss", "MMDCriticLoss"):
        return loss(emb, (labels == 0).long())          # strong / weak indicator
    if name == "VARegressionLoss":
        return loss(emb[:, :2], torch.tanh(emb[:, 2:4].detach()))
    return loss(emb, labels)


#: constructor of each loss class for a batch of B x D embeddings with C classes
LOSS_CASES = {
    "AngularMarginLoss": lambda: fer_nb_loss("angular_margin", "AngularMarginLoss")(D, C),
    "CosineClassifierLoss": None,   # abstract base of AngularMarginLoss / CosFaceLoss (no margin_logits)
    "CosFaceLoss": lambda: fer_nb_loss("cosface", "CosFaceLoss")(D, C),
    "CAFCriticLoss": lambda: fer_nb_loss("caf_critic", "CAFCriticLoss")(),
    "CenterLoss": lambda: fer_nb_loss("center", "CenterLoss")(C, D),
    "ContrastiveLoss": lambda: fer_nb_loss("contrastive", "ContrastiveLoss")(),
    "CoupledClustersLoss": lambda: fer_nb_loss("coupled_clusters", "CoupledClustersLoss")(),
    "FisherIPMLoss": lambda: fer_nb_loss("fisher_ipm", "FisherIPMLoss")(),
    "GradientReversal": None,       # a layer, tested with the UDAT nets
    "IslandLoss": lambda: fer_nb_loss("island", "IslandLoss")(C, D),
    "LargeMarginLoss": lambda: fer_nb_loss("large_margin_loss", "LargeMarginLoss")(C, D),
    "MarginMixLoss": lambda: fer_nb_loss("margin_mix_loss", "MarginMixLoss")(C),
    "MMDCriticLoss": lambda: fer_nb_loss("mmd_critic", "MMDCriticLoss")(),
    "NPlusOneTupleLoss": lambda: fer_nb_loss("n_plus_one_tuple", "NPlusOneTupleLoss")(),
    "NMTupleClustersLoss": lambda: fer_nb_loss("nm_tuple_clusters", "NMTupleClustersLoss")(adaptive=True, embedding_dim=D),
    "ReferenceDistance": None,      # a part of NMTupleClustersLoss(adaptive=True)
    "SoftmaxLoss": lambda: fer_nb_loss("softmax", "SoftmaxLoss")(C, D),
    "TripletLoss": lambda: fer_nb_loss("triplet", "TripletLoss")(),
    "VARegressionLoss": lambda: fer_nb_loss("va_regression", "VARegressionLoss")(),
    # the course's losses (chapter 61)
    "CircleLoss": lambda: fer_nb_loss("circle", "CircleLoss")(),
    "LiftedStructureLoss": lambda: fer_nb_loss("lifted_structure", "LiftedStructureLoss")(),
    "MultiSimilarityLoss": lambda: fer_nb_loss("multi_similarity", "MultiSimilarityLoss")(mining=True),
    "NPairLoss": lambda: fer_nb_loss("npair", "NPairLoss")(l2_reg=0.002),
    "NormFaceLoss": lambda: fer_nb_loss("normface", "NormFaceLoss")(D, C, learn_scale=True),
    "ProxyAnchorLoss": lambda: fer_nb_loss("proxy_anchor", "ProxyAnchorLoss")(D, C),
    "ProxyNCALoss": lambda: fer_nb_loss("proxy_nca", "ProxyNCALoss")(D, C),
    "SphereFaceLoss": lambda: fer_nb_loss("sphereface", "SphereFaceLoss")(D, C),
    "SupConLoss": lambda: fer_nb_loss("supcon", "SupConLoss")(),
    "MinedTripletLoss": lambda: __import__("fer_nb.miners", fromlist=["MinedTripletLoss"]).MinedTripletLoss("semi_hard"),
}


def fer_nb_loss(module: str, name: str):
    return getattr(importlib.import_module(f"fer_nb.losses.{module}"), name)


def _discover(package) -> dict[str, type]:
    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        mod = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == mod.__name__ \
                    and not name.startswith("_"):
                found[name] = obj
    return found


def test_every_loss_has_a_case():
    import fer_nb.miners

    found = {**_discover(fer_nb.losses),
             **{n: c for n, c in vars(fer_nb.miners).items()
                if inspect.isclass(c) and issubclass(c, nn.Module) and c.__module__ == "fer_nb.miners"}}
    missing = sorted(set(found) - set(LOSS_CASES))
    assert not missing, f"add a LOSS_CASES entry (constructor for {B}x{D} embeddings, {C} classes) for {missing}"


LOSSES = sorted(k for k, v in LOSS_CASES.items() if v is not None)


@pytest.mark.parametrize("name", LOSSES)
def test_loss_on_fake_cuda(name):
    with fake_cuda():
        loss = LOSS_CASES[name]().to(CUDA)
        emb, labels, groups = _batch(CUDA)
        value = _call(name, loss, emb, labels, groups)
        assert value.device.type == "cuda", f"{name} returned a {value.device} tensor for CUDA inputs"
        value.sum().backward()
        assert emb.grad is not None and emb.grad.device.type == "cuda"
        assert torch.isfinite(value.detach().cpu()).all()


@pytest.mark.parametrize("name", LOSSES)
def test_loss_takes_bf16_activations(name, monkeypatch):
    """Under autocast the losses get bf16 embeddings; they compute in float32 and return float32."""
    monkeypatch.setenv("FER_NB_CPU_BF16", "1")
    torch.manual_seed(0)
    loss = LOSS_CASES[name]()
    emb, labels, groups = _batch(CPU)
    with autocast(CPU):
        value = _call(name, loss, emb.to(torch.bfloat16), labels, groups)
    assert value.dtype in (torch.float32, torch.float64), f"{name} returned {value.dtype} for bf16 input"
    value.sum().backward()
    assert torch.isfinite(value.detach()).all() and torch.isfinite(emb.grad).all()


# ----------------------------------------------------------------------------- every model
def _model_cases():
    from fer_nb.models import backbones, caf_net as caf, inception_fer, large_margin_net, udat, wrn

    img3 = (2, 3, 32, 32)
    return {
        "Backbone": (lambda: backbones.resnet18(3, small_input=True), img3),
        "Regressor": (lambda: caf.Regressor(16), (2, 16)),
        "Critic": (lambda: caf.Critic(16), (2, 16)),
        "CAFNet": (lambda: caf.CAFNet("alexnet", 3, width=0.125, pool_size=1), (2, 3, 64, 64)),
        "Inception": None,            # block of InceptionFER
        "ConnectingLayer": None,      # block of InceptionFER
        "InceptionFER": (lambda: inception_fer.InceptionFER(7, 1, width=0.25, hidden=32), (2, 1, 48, 48)),
        "LargeMarginNet": (lambda: large_margin_net.LargeMarginNet(3, 0.125, num_classes=7), (2, 3, 64, 64)),
        "DomainClassifier": (lambda: udat.DomainClassifier(16, 8, "softmax"), (2, 16)),
        "UDATNet": (lambda: udat.UDATNet(1, 7, width=0.125, fc_dim=32, pool_size=1), (2, 1, 32, 32)),
        "BasicBlock": None,           # block of WideResNet
        "WideResNet": (lambda: wrn.WideResNet(7, depth=10, widen_factor=1), img3),
    }


def _forward(name, model, x):
    if name == "DomainClassifier":
        return model(x, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
    return model(x)


def _outputs(out):
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if isinstance(out, (tuple, list)):
        return [v for v in out if isinstance(v, torch.Tensor)]
    return [out]


def test_every_model_has_a_case():
    missing = sorted(set(_discover(fer_nb.models)) - set(_model_cases()))
    assert not missing, f"add a model case for {missing}"


MODELS = sorted(k for k, v in _model_cases().items() if v is not None)


@pytest.mark.parametrize("name", MODELS)
def test_model_on_fake_cuda(name):
    build, shape = _model_cases()[name]
    torch.manual_seed(0)
    x_cpu = torch.rand(*shape)
    with fake_cuda():
        model = build().to(CUDA)
        outs = _outputs(_forward(name, model, x_cpu.to(CUDA)))
        assert all(o.device.type == "cuda" for o in outs)
        sum(o.float().sum() for o in outs).backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(g.device.type == "cuda" for g in grads)


@pytest.mark.parametrize("name", MODELS)
def test_model_under_cpu_bf16_autocast(name, monkeypatch):
    monkeypatch.setenv("FER_NB_CPU_BF16", "1")
    build, shape = _model_cases()[name]
    torch.manual_seed(0)
    model = build()
    with autocast(CPU):
        outs = _outputs(_forward(name, model, torch.rand(*shape)))
    total = sum(o.float().sum() for o in outs)
    total.backward()
    assert torch.isfinite(total)


# ----------------------------------------------------------------------------- data, augmentation, metrics
def test_batches_augment_and_sampler_on_fake_cuda():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 1, 16, 16), dtype=torch.uint8, generator=g)
    labels = {"expression": torch.arange(20) % 4, "subject": torch.arange(20) // 5}
    data = FaceArrays(images, labels, name="fixture", class_names=("a", "b", "c", "d"))
    sampler = IdentityAwareSampler(labels["expression"], labels["subject"], 2,
                                   generator=torch.Generator().manual_seed(0))
    with fake_cuda():
        batches = list(data.batches(8, shuffle=True, generator=torch.Generator().manual_seed(0), device=CUDA))
        assert all(b["image"].device.type == "cuda" and b["expression"].device.type == "cuda" for b in batches)
        aug_gen = torch.Generator(device=CUDA).manual_seed(0)
        aug = Augment(flip=True, pad=2, brightness=0.1, contrast=0.1, noise_std=0.01)
        out = aug(batches[0]["image"], generator=aug_gen)
        assert out.device.type == "cuda" and out.shape == batches[0]["image"].shape
        assert aug(batches[0]["image"]).device.type == "cuda"
        # a CPU generator is allowed: the draws are made on the CPU and moved (reproducible across devices)
        with_cpu_gen = aug(batches[0]["image"], generator=torch.Generator().manual_seed(0))
        assert with_cpu_gen.device.type == "cuda"
        assert torch.equal(with_cpu_gen.cpu(), aug(batches[0]["image"].cpu(), generator=torch.Generator().manual_seed(0)))
        x = images_to_device(images[:4], CUDA)
        assert x.device.type == "cuda" and x.dtype == torch.float32
        tb = sampler.build(torch.arange(8))
        rows = tb.indices.reshape(-1)
        on_gpu = data.images.to(CUDA)[rows.to(CUDA)]
        assert on_gpu.device.type == "cuda"
        grp = tuple_groups(tb.indices.shape[0], tb.indices.shape[1], CUDA)
        assert grp.device.type == "cuda" and len(grp) == len(rows)


def test_metrics_take_cuda_tensors():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randint(0, 3, (30,), generator=g), torch.randint(0, 3, (30,), generator=g)
    va_p, va_t = torch.rand(30, 2, generator=g) * 2 - 1, torch.rand(30, 2, generator=g) * 2 - 1
    au_p, au_t = torch.rand(30, 5, generator=g) > 0.5, torch.rand(30, 5, generator=g) > 0.5
    expected = (metrics.accuracy(pred, target), metrics.mean_per_class_accuracy(pred, target, 3),
                metrics.va_metrics(va_p, va_t), metrics.f1_per_label(au_p, au_t))
    with fake_cuda():
        got = (metrics.accuracy(pred.to(CUDA), target.to(CUDA)),
               metrics.mean_per_class_accuracy(pred.to(CUDA), target.to(CUDA), 3),
               metrics.va_metrics(va_p.to(CUDA), va_t.to(CUDA)),
               metrics.f1_per_label(au_p.to(CUDA), au_t.to(CUDA)).cpu())
        cm = metrics.confusion_matrix(pred.to(CUDA), target.to(CUDA), 3)
    assert got[:3] == expected[:3] and torch.allclose(got[3], expected[3])
    assert int(cm.sum()) == 30


# ----------------------------------------------------------------------------- host syncs (CUDA graphs)
def test_host_syncs_records_what_makes_the_host_wait():
    from fake_cuda import host_syncs

    with fake_cuda():
        x = torch.rand(6, device="cuda")
        with host_syncs() as free:       # none of these waits for the GPU
            m = x > 0.5
            x.masked_fill(m, 0.0), torch.where(m, x, -x), x[torch.tensor([0, 2])], x * m, m.sum()
            torch.randperm(6, device="cuda"), torch.cat([x, x]), x.clone().index_put_((torch.tensor([1]),), x[:1])
        assert free == []
        with host_syncs() as syncs:
            x.item() if x.numel() == 1 else float(x.sum())
            bool(m.any()), x.cpu(), x.tolist(), m.nonzero(), x[m], torch.unique(x), torch.masked_select(x, m)
            y = x.clone()
            y[m] = 0.0
            torch.equal(x, y), torch.bincount(m.long(), minlength=2)
    what = [s.split(" at ")[0] for s in syncs]
    read = "a CUDA value read on the host (.item(), float(), bool(), torch.equal)"
    assert what == [read] * 2 + [
        "a copy from CUDA to the CPU", "tolist", "aten.nonzero.default (output shape depends on CUDA data)",
        "aten.index.Tensor with a boolean mask (output shape depends on CUDA data)",
        "aten._unique2.default (output shape depends on CUDA data)",
        "aten.masked_select.default (output shape depends on CUDA data)",
        "aten.index_put_.default with a boolean mask (output shape depends on CUDA data)",
        read, "aten.bincount.default (output shape depends on CUDA data)"]
    assert all(s.split(" at ")[1].startswith("test_device_discipline.py:") for s in syncs)


def test_fit_records_each_steps_syncs(monkeypatch, tmp_path):
    """``record_fit_syncs`` (the notebooks' fake-CUDA test uses it) sees a sync in a step and one in the batches."""
    import json

    from fake_cuda import record_fit_syncs
    from fer_nb import train

    monkeypatch.setattr(train, "fit", train.fit)     # restored after the test
    record_fit_syncs(str(tmp_path / "syncs.json"))
    with fake_cuda():
        lin = nn.Linear(3, 1).to("cuda")
        opt = torch.optim.SGD(lin.parameters(), lr=0.1)
        data = torch.rand(4, 3).to("cuda")

        def step(batch, ctx):
            loss = lin(batch).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if float(loss) > 1e9:                   # a per-step host read, as a careless loop would have
                raise AssertionError
            return {"loss": loss}

        def batches(epoch):
            for _ in range(3):
                yield data[data[:, 0] >= 0]                # boolean-mask batches: a sync each

        train.fit({"lin": lin}, {"opt": opt}, step, batches, 2, progress=False, desc="probe")
    (run,) = json.loads((tmp_path / "syncs.json").read_text())
    assert run["desc"] == "probe" and run["steps"] == 6
    assert list(run["step_syncs"].values()) == [6] and "float(loss) > 1e9" in next(iter(run["step_syncs"]))
    assert sum(run["batch_syncs"].values()) == 6


def test_device_side_checks_keep_the_error_and_drop_the_wait():
    """``fer_nb.losses.device_checks.require``: off CUDA a ValueError with the values found; on CUDA a queued
    device-side assertion, no host sync (fake CUDA runs it on the CPU data, so a broken rule still fails)."""
    from fake_cuda import host_syncs
    from fer_nb.losses.device_checks import require
    from fer_nb.losses.margin_mix_loss import MarginMixLoss

    labels = torch.tensor([0, 3, -1])
    require(((labels >= -1) & (labels < 4)).all(), "ids in [-1, 3]")
    with pytest.raises(ValueError, match=r"ids in \[-1, 2\]; got max 3"):
        require(((labels >= -1) & (labels < 3)).all(), "ids in [-1, 2]", lambda: f"got max {int(labels.max())}")
    loss = MarginMixLoss(4)
    with fake_cuda(bf16=False):
        emb = torch.randn(3, 5, device="cuda")
        with host_syncs() as syncs:
            require(((labels.cuda() >= -1) & (labels.cuda() < 4)).all(), "ids in [-1, 3]")
            loss(emb, labels.cuda())                       # class ids: checked on the device
            loss(emb, torch.full((3, 4), 0.25, device="cuda"))   # soft targets: likewise
        assert syncs == []
        with pytest.raises(RuntimeError, match=r"class ids must lie in \[-1, 3\]"):
            loss(emb, torch.tensor([0, 4, 1], device="cuda"))
    with pytest.raises(ValueError, match=r"class ids must lie in \[-1, 3\].*got min 0, max 4"):
        loss(torch.randn(3, 5), torch.tensor([0, 4, 1]))   # on the CPU the message has the values
