"""The chapters' launch-bound training steps with a compiled network (issue #16, item 4), and ``fer_nb.compiled``.

On a GPU, the Margin-Mix step (WRN-28-2 at 32 px) and the (N+M) fine-tuning step (the Inception net at
48 px) are bound by kernel-launch overhead; the chapters train them through
:func:`fer_nb.compiled.maybe_compile` (``torch.compile(mode="reduce-overhead")`` on CUDA: the network's
kernels fused and replayed as CUDA graphs), and ``make bench`` times them (``chapter_compiled_img_s``).
Here, on the CPU, the same steps run with the network compiled by inductor through the same wrapper (the
graphs the CUDA graphs would replay; CUDA graphs themselves exist only on CUDA) and must give the eager
step's numbers: the losses of three steps, the weights, the EMA weights and the Margin-Mix centroids.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fer_nb import compiled as compiled_mod
from fer_nb.losses.nm_tuple_clusters import NMTupleClustersLoss
from fer_nb.models.inception_fer import InceptionFER
from fer_nb.models.wrn import WideResNet
from fer_nb.papers import nm_tuple
from fer_nb.papers.margin_mix import MarginMix

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
RTOL, ATOL = 1e-4, 1e-5


def _margin_mix_run(compiled: bool, steps: int = 3):
    torch.manual_seed(0)
    model = WideResNet(4, depth=10, widen_factor=1, in_channels=1, bn_momentum=0.1)
    method = MarginMix(model, 4, lr=0.01, ema_decay=0.9)
    # SGD, not the chapter's Adam: Adam divides each gradient by its own running RMS, so a weight whose
    # gradient is rounding noise moves by a full learning rate either way and no tolerance compares them
    method.optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    if compiled:
        method.model = compiled_mod.maybe_compile(model, "on", "cpu")
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.rand(8, 1, 16, 16, generator=g), "expression": torch.arange(8) % 4,
             "u_image": torch.rand(8, 1, 16, 16, generator=g)}
    torch.manual_seed(2)
    np.random.seed(2)
    logs = [method.train_step(batch, SimpleNamespace(progress=0.5, step=s, epoch=0)) for s in range(steps)]
    return logs, model, method


def test_margin_mix_step_with_a_compiled_network_matches_eager():
    eager_logs, eager_model, eager = _margin_mix_run(False)
    comp_logs, comp_model, comp = _margin_mix_run(True)
    for s, (a, b) in enumerate(zip(eager_logs, comp_logs)):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.allclose(a[k], b[k], rtol=RTOL, atol=ATOL), (s, k, float(a[k]), float(b[k]))
    for (name, p), q in zip(eager_model.state_dict().items(), comp_model.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), rtol=1e-3, atol=1e-4), name   # BN running stats included
    for p, q in zip(eager.ema_model.parameters(), comp.ema_model.parameters()):
        assert torch.allclose(p, q, rtol=1e-3, atol=1e-4)
    assert torch.allclose(eager.centroids.centers, comp.centroids.centers, rtol=1e-3, atol=1e-4)
    assert torch.equal(eager.centroids.seen, comp.centroids.seen)


def _nm_tuple_run(compiled: bool, steps: int = 3):
    torch.manual_seed(0)
    model = InceptionFER(7, 1, 0.125, hidden=32, branches=2)
    loss_fn = NMTupleClustersLoss(adaptive=True, embedding_dim=model.embedding_dim)
    opt = torch.optim.SGD(list(model.parameters()) + list(loss_fn.parameters()), lr=0.05)   # see _margin_mix_run
    net = compiled_mod.maybe_compile(model, "on" if compiled else "off", "cpu")
    m = n = 6
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2 * (1 + m + n), 1, 48, 48), dtype=torch.uint8, generator=g)
    labels = torch.cat([torch.tensor([0] * (1 + m) + list(range(1, n + 1)))] * 2)
    tuples = torch.arange(len(images)).reshape(2, 1 + m + n)
    logs = []
    for s in range(steps):
        logs.append(nm_tuple.finetune_step(net, loss_fn, opt, images, labels, tuples, 1.0, 2,
                                           torch.Generator().manual_seed(10 + s)))
    return logs, model, loss_fn


def test_nm_tuple_step_with_a_compiled_network_matches_eager():
    eager_logs, eager_model, eager_loss = _nm_tuple_run(False)
    comp_logs, comp_model, comp_loss = _nm_tuple_run(True)
    for s, (a, b) in enumerate(zip(eager_logs, comp_logs)):
        for k in a:
            assert torch.allclose(a[k].detach(), b[k].detach(), rtol=RTOL, atol=ATOL), (s, k, float(a[k]), float(b[k]))
    for (name, p), q in zip(eager_model.state_dict().items(), comp_model.state_dict().values()):
        assert torch.allclose(p.float(), q.float(), rtol=1e-3, atol=1e-4), name
    for p, q in zip(eager_loss.parameters(), comp_loss.parameters()):
        assert torch.allclose(p, q, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------ fer_nb.compiled, without compiling --

def test_compile_setting_auto_means_cuda_only_and_bad_values_name_the_choices():
    assert compiled_mod.wants_compile("auto", "cuda") and not compiled_mod.wants_compile("auto", "cpu")
    assert compiled_mod.wants_compile("on", "cpu") and not compiled_mod.wants_compile("off", "cuda")
    for bad in (True, False, 1, "yes", None):
        with pytest.raises(ValueError, match="'auto', 'on', 'off'"):
            compiled_mod.wants_compile(bad, "cpu")


def test_maybe_compile_asks_for_cuda_graphs_on_cuda_and_leaves_the_cpu_eager(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: calls.append(mode) or model)
    net = torch.nn.Linear(3, 2)
    assert compiled_mod.maybe_compile(net, "auto", "cpu") is net and calls == []
    wrapped = compiled_mod.maybe_compile(net, "auto", torch.device("cuda"))
    assert isinstance(wrapped, compiled_mod.CompiledNetwork) and calls == ["reduce-overhead"]
    assert wrapped.in_features == 3 and wrapped.weight is net.weight          # attributes: the eager network's
    assert list(wrapped.parameters()) == list(net.parameters())               # shared, not copied
    compiled_mod.maybe_compile(net, "on", "cpu")
    assert calls == ["reduce-overhead", None]


def test_a_failed_compile_says_how_to_run_eager(monkeypatch):
    def broken(model, mode=None):
        def run(*args, **kwargs):
            raise RuntimeError("Cannot find a working triton installation")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    wrapped = compiled_mod.maybe_compile(torch.nn.Linear(3, 2), "on", "cpu")
    with pytest.raises(RuntimeError, match=r"compile_network.*off") as err:
        wrapped(torch.zeros(1, 3))
    assert "triton" in str(err.value) and isinstance(err.value.__cause__, RuntimeError)
