"""Each paper's training step at paper settings, in two versions.

* ``plain``: how the papers' public code is written: fp32, eager, contiguous NCHW, one Adam
  kernel per parameter tensor (``foreach=False``), a ``.item()`` host sync per step, and for
  MixMatch a per-tensor Python EMA loop (YU1ut's reference).
* ``fast``: the ``fer_nb`` path: bf16 autocast on CUDA, channels_last, fused (CUDA) / foreach
  optimizers, foreach EMA, no host sync inside the step.
* ``chapter``: the step the chapter itself trains with, imported from ``fer_nb.papers.<paper>`` (so the
  book's speed is what is measured, not only this file's copy of it);
* ``chapter, compiled`` (the launch-bound steps only: Margin-Mix's WRN-28-2 at 32 px and the (N+M)
  Inception net at 48 px, ``StepSpec.compilable``): the same step with its network wrapped by
  :func:`compiled` (``torch.compile``, ``mode="reduce-overhead"`` on CUDA: fused kernels replayed as CUDA
  graphs). On CUDA this is how those two chapters train (preset ``compile_network: auto``,
  :mod:`fer_nb.compiled`); the eager ``chapter`` row beside it shows what compiling gives.

Each builder returns ``(step, images_per_step)``; ``step()`` runs one full training iteration on
random tensors already on the device (the data pipeline is timed separately).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from fer_nb import fast
from fer_nb.compiled import maybe_compile
from fer_nb.device import autocast


@dataclass(frozen=True)
class StepSpec:
    paper: str
    setting: str
    image_size: int
    channels: int
    batch: int          # paper batch (GPU)
    quick_batch: int    # batch used with --quick (CPU)
    build: Callable
    build_chapter: Callable | None = None   # (device, batch, size, compile=False) -> (step, images) from fer_nb.papers
    compilable: bool = False                # bound by launch overhead: also timed with a compiled network


def compiled(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` compiled as the chapters compile it (:func:`fer_nb.compiled.maybe_compile`, forced on):
    ``mode="reduce-overhead"`` on CUDA (CUDA graphs; inductor's default on a CPU). The returned module
    shares ``model``'s parameters and buffers."""
    return maybe_compile(model, "on", device)


def _opt(params, lr, device, mode, **kw):
    if mode == "plain":
        return torch.optim.Adam(params, lr=lr, foreach=False, **kw)
    return fast.optimizer("adam", params, lr, device, **kw)


def _images(b, c, s, device, mode):
    x = torch.rand(b, c, s, s, device=device)
    return x.contiguous(memory_format=torch.channels_last) if (mode == "fast" and device.type == "cuda") else x


def _finish(loss, mode):
    if mode == "plain":
        loss.item()  # the public codes log every step


def build_large_margin(device, mode, batch, size):
    from fer_nb.losses.large_margin_loss import LargeMarginLoss
    from fer_nb.models.large_margin_net import LargeMarginNet

    model = fast.prepare(LargeMarginNet(3, 1.0, num_classes=7, num_aus=12), device, channels_last=mode == "fast" and device.type == "cuda")
    lm = LargeMarginLoss(7, model.embedding_dim).to(device)
    opt = _opt(model.parameters(), 1e-4, device, mode)
    x = _images(batch, 3, size, device, mode)
    y = torch.randint(0, 7, (batch,), device=device)
    aus = torch.rand(batch, 12, device=device)

    def step():
        with autocast(device, enabled=mode == "fast"):
            out = model(x)
        loss = F.cross_entropy(out["logits"].float(), y) + lm(out["embedding"].float(), y) + F.mse_loss(out["aus"].float(), aus)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _finish(loss, mode)

    return step, batch


def build_nm_tuple(device, mode, batch, size):
    from fer_nb.losses.nm_tuple_clusters import NMTupleClustersLoss
    from fer_nb.models.inception_fer import InceptionFER

    model = fast.prepare(InceptionFER(7, 1, 1.0), device, channels_last=mode == "fast" and device.type == "cuda")
    nm = NMTupleClustersLoss(adaptive=True, embedding_dim=model.embedding_dim).to(device)
    opt = _opt(list(model.parameters()) + list(nm.parameters()), 1e-3, device, mode)
    x = _images(batch, 1, size, device, mode)
    y = torch.randint(0, 7, (batch,), device=device)

    def step():
        with autocast(device, enabled=mode == "fast"):
            out = model(x)
        loss = F.cross_entropy(out["logits"].float(), y) + nm(out["embedding"].float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _finish(loss, mode)

    return step, batch


def build_caf(device, mode, batch, size):
    from fer_nb.caf_grouping import group
    from fer_nb.losses.caf_critic import CAFCriticLoss
    from fer_nb.losses.va_regression import VARegressionLoss
    from fer_nb.models.caf_net import CAFNet

    net = fast.prepare(CAFNet("alexnet", 3, 1.0), device, channels_last=mode == "fast" and device.type == "cuda")
    enc_params = list(net.encoder.parameters()) + list(net.regressor.parameters())
    opt_av = _opt(enc_params, 1e-4, device, mode, betas=(0.5, 0.9))
    opt_c = _opt(net.critic.parameters(), 1e-4, device, mode, betas=(0.5, 0.9))
    opt_e = _opt(net.encoder.parameters(), 1e-4, device, mode, betas=(0.5, 0.9))
    critic_loss, av_loss = CAFCriticLoss(), VARegressionLoss()
    x = _images(batch, 3, size, device, mode)
    va = torch.rand(batch, 2, device=device) * 2 - 1

    def step():
        on = mode == "fast"
        with autocast(device, enabled=on):  # 1. AV regression step
            pred = net(x)
        loss_av = av_loss(pred.float(), va)
        opt_av.zero_grad(set_to_none=True)
        loss_av.backward()
        opt_av.step()
        strong = group(va)  # 2. critic step on frozen features
        with torch.no_grad(), autocast(device, enabled=on):
            feats = net.encoder(x)
        with autocast(device, enabled=on):
            z = net.critic(feats)
        loss_c = critic_loss(z.float(), strong)
        opt_c.zero_grad(set_to_none=True)
        loss_c.backward()
        opt_c.step()
        for p in net.critic.parameters():  # 3. adversarial encoder step, critic frozen
            p.requires_grad_(False)
        with autocast(device, enabled=on):
            adv = -net.critic(net.encoder(x[~strong])).float().mean()
        opt_e.zero_grad(set_to_none=True)
        adv.backward()
        opt_e.step()
        for p in net.critic.parameters():
            p.requires_grad_(True)
        if mode == "plain":
            loss_av.item(), loss_c.item(), adv.item()

    return step, batch


def build_udat_as(device, mode, batch, size):
    from fer_nb.models.udat import UDATNet, udat_losses

    model = fast.prepare(UDATNet(3, 7, width=1.0, domain_head="angular_margin", lambda_=0.5), device,
                         channels_last=mode == "fast" and device.type == "cuda")
    opt_cls = torch.optim.SGD if mode == "plain" else None
    opt = (opt_cls(model.parameters(), lr=1e-3, momentum=0.9, foreach=False) if opt_cls
           else fast.optimizer("sgd", model.parameters(), 1e-3, device, momentum=0.9))
    xs, xt = _images(batch, 3, size, device, mode), _images(batch, 3, size, device, mode)
    ys = torch.randint(0, 7, (batch,), device=device)

    def step():
        with autocast(device, enabled=mode == "fast"):
            out = udat_losses(model, xs, ys, xt)
        opt.zero_grad(set_to_none=True)
        out["loss"].float().backward()
        opt.step()
        _finish(out["loss"], mode)

    return step, 2 * batch


class _LoopEMA:
    """YU1ut's MixMatch EMA: a Python loop over every parameter tensor."""

    def __init__(self, model, ema_model, alpha=0.999, wd=0.02 * 0.002):
        self.params, self.ema_params, self.alpha, self.wd = list(model.parameters()), list(ema_model.parameters()), alpha, wd

    def step(self):
        with torch.no_grad():
            for p, e in zip(self.params, self.ema_params):
                e.mul_(self.alpha).add_(p.detach() * (1 - self.alpha))
                p.mul_(1 - self.wd)


def build_margin_mix(device, mode, batch, size):
    from types import SimpleNamespace

    from fer_nb.models.wrn import wrn28_2
    from fer_nb.ssl.mixmatch import MixMatch

    model = fast.prepare(wrn28_2(7, 3, bn_momentum=0.01), device, channels_last=mode == "fast" and device.type == "cuda")
    method = MixMatch(model, 7, lr=0.002, ema_decay=0.999, weight_decay=0.02 * 0.002)
    method.amp = mode == "fast"   # the plain reference is fp32 throughout
    if mode == "plain":
        method.optimizer = torch.optim.Adam(model.parameters(), lr=0.002, foreach=False)
        method.ema = _LoopEMA(model, method.ema_model)
    batch_dict = {"image": _images(batch, 3, size, device, mode), "expression": torch.randint(0, 7, (batch,), device=device),
                  "u_image": _images(batch, 3, size, device, mode)}
    ctx = SimpleNamespace(epoch=0, step=0, total_steps=1000, progress=0.5)

    def step():
        with autocast(device, enabled=mode == "fast"):
            logs = method.train_step(batch_dict, ctx)
        _finish(logs["loss"], mode)

    return step, 3 * batch  # 64 labelled + 2 x 64 unlabelled augmentations (as the issue counts them)


def _ctx():
    from types import SimpleNamespace

    return SimpleNamespace(epoch=0, step=0, total_steps=1000, progress=0.5)


def chapter_large_margin(device, batch, size):
    """``fer_nb.papers.large_margin.train_step`` (Eq. 4, Table 1): labelled + unlabelled rows, L_S + lambda L_M."""
    from fer_nb.losses.large_margin_loss import LargeMarginLoss
    from fer_nb.models.large_margin_net import LargeMarginNet
    from fer_nb.papers import large_margin

    model = fast.prepare(LargeMarginNet(3, 1.0, num_classes=7, num_aus=0), device)
    aux = LargeMarginLoss(7, model.embedding_dim).to(device)
    opt = fast.optimizer("adam", list(model.parameters()), 1e-4, device)
    half = max(1, batch // 2)
    batch_dict = {"image": _images(half, 3, size, device, "fast"), "expression": torch.randint(0, 7, (half,), device=device),
                  "u_image": _images(batch - half, 3, size, device, "fast")}
    weights = large_margin.Weights()
    au_cols = torch.arange(1, device=device)
    return (lambda: large_margin.train_step(model, aux, opt, batch_dict, 0.5, task="t1", kind="lm", w=weights,
                                            au_cols=au_cols)), batch


def chapter_nm_tuple(device, batch, size, compile=False):
    """``fer_nb.papers.nm_tuple.finetune_step``: softmax on the queries + alpha x adaptive (N+M) clusters loss
    (``compile``: the network through :func:`compiled`)."""
    from fer_nb.losses.nm_tuple_clusters import NMTupleClustersLoss
    from fer_nb.models.inception_fer import InceptionFER
    from fer_nb.papers import nm_tuple

    model = fast.prepare(InceptionFER(7, 1, 1.0, branches=2), device)
    loss_fn = NMTupleClustersLoss(adaptive=True, embedding_dim=model.embedding_dim).to(device)
    opt = fast.optimizer("adam", list(model.parameters()) + list(loss_fn.parameters()), 1e-3, device)
    m, n = 6, 6                                   # M positives, N = 6 negatives (7 classes)
    tuples_n = max(1, batch // (1 + m + n))
    images = torch.randint(0, 256, (tuples_n * (1 + m + n), 1, size, size), dtype=torch.uint8, device=device)
    labels = torch.cat([torch.tensor([0] * (1 + m) + list(range(1, n + 1)))] * tuples_n).to(device)
    tuples = torch.arange(len(images), device=device).reshape(tuples_n, 1 + m + n)
    net = compiled(model, device) if compile else model
    return (lambda: nm_tuple.finetune_step(net, loss_fn, opt, images, labels, tuples, 1.0, 2)), len(images)


def chapter_caf(device, batch, size):
    """``fer_nb.papers.caf.CAFSteps.train_step``: critic, adversarial (critic frozen) and AV steps."""
    from fer_nb.models.caf_net import CAFNet
    from fer_nb.papers import caf

    net = fast.prepare(CAFNet("alexnet", 3, 1.0), device)
    steps = caf.CAFSteps(net, caf.make_critic_loss("caf_delta"), lr=1e-4)
    batch_dict = {"image": _images(batch, 3, size, device, "fast"), "va": torch.rand(batch, 2, device=device) * 2 - 1}
    ctx = _ctx()
    return (lambda: steps.train_step(batch_dict, ctx)), batch


def chapter_udat_as(device, batch, size):
    """``fer_nb.papers.udat_as.udat_step`` (Eq. 19-21) with the angular-margin domain head."""
    from types import SimpleNamespace

    from fer_nb.papers import udat_as

    hp = SimpleNamespace(width=1.0, fc_dim=4096, domain_dim=1024, angular_scale=64.0, angular_margin=0.5,
                         overflow="arcface", batch_norm=False, pool_size=7, dropout=0.5, lr=1e-3, momentum=0.9,
                         weight_decay=5e-4, device=device)
    net = udat_as.make_net(hp, "angular_margin", 0.5)
    opt = udat_as.sgd(hp, net)
    batch_dict = {"image": _images(batch, 3, size, device, "fast"), "expression": torch.randint(0, 7, (batch,), device=device),
                  "target_image": _images(batch, 3, size, device, "fast")}
    return (lambda: udat_as.udat_step(net, opt, batch_dict, device)), 2 * batch


def chapter_margin_mix(device, batch, size, compile=False):
    """``fer_nb.papers.margin_mix.MarginMix.train_step`` (Algorithm 1: centroids, guesses, MixUp, Eq. 10;
    ``compile``: the network through :func:`compiled`, after the EMA copy is made from the eager one)."""
    from fer_nb.models.wrn import wrn28_2
    from fer_nb.papers.margin_mix import MarginMix

    model = fast.prepare(wrn28_2(7, 3, bn_momentum=0.01), device)
    method = MarginMix(model, 7)
    if compile:
        method.model = compiled(model, device)
    batch_dict = {"image": _images(batch, 3, size, device, "fast"), "expression": torch.randint(0, 7, (batch,), device=device),
                  "u_image": _images(batch, 3, size, device, "fast")}
    ctx = _ctx()
    return (lambda: method.train_step(batch_dict, ctx)), 3 * batch


STEPS = [
    StepSpec("large_margin", "AlexNet 227 px, batch 128", 227, 3, 128, 8, build_large_margin, chapter_large_margin),
    StepSpec("nm_tuple", "Inception FER net 48 px gray, batch 128 (chapter: 9 tuples of 1+6+6)", 48, 1, 128, 32,
             build_nm_tuple, chapter_nm_tuple, compilable=True),
    StepSpec("caf", "AlexNet 224 px, batch 256 (AV + critic + adversarial)", 224, 3, 256, 8, build_caf, chapter_caf),
    StepSpec("udat_as", "VGG16 224 px, batch 64 source + 64 target", 224, 3, 64, 2, build_udat_as, chapter_udat_as),
    StepSpec("margin_mix", "WRN-28-2 32 px, batch 64 + 2x64 unlabelled (MixMatch step; chapter: Margin-Mix step)",
             32, 3, 64, 16, build_margin_mix, chapter_margin_mix, compilable=True),
]
