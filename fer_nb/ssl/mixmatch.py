"""MixMatch (Berthelot et al., NeurIPS 2019) and the supervised MixUp baseline, as training steps.

Plus the data protocol every semi-supervised method here shares:

* :func:`balanced_label_split` - pick ``n`` labelled images as evenly over classes as the data
  allow (the Margin-Mix paper: "for 4000 labelled images a uniform distribution would have required
  500 per class, yet three of them do not have so many"); the rest is the unlabelled pool;
* :class:`PairedBatches` - each step yields a labelled batch and an unlabelled batch of the same
  size (labelled data cycled), images already on the device, indices drawn from a generator seeded
  by ``(seed, epoch)`` so :func:`fer_nb.train.fit` can resume;
* :func:`predict_classes`, :func:`collapsed` - evaluation and the "nc" (non-converged) rule.

A method object owns the model, optimizer, EMA and hyper-parameters; its ``train_step(batch, ctx)``
is what :func:`fer_nb.train.fit` calls; it returns scalar tensors and never calls ``.item()``.

**MixMatch step** (YU1ut's PyTorch reference, the code Margin-Mix grew from): augment the labelled
batch once and the unlabelled batch ``K`` times; guess labels by averaging the model's softmax over
the ``K`` views (Eq. 7) and sharpen with ``T`` (Eq. 8); MixUp (Eq. 9, ``lambda' = max(lambda,
1-lambda)``) over the concatenation of all of them; ``L = L_x + w(t) lambda_u L_u`` with ``L_x`` the
soft cross entropy on the mixed labelled part, ``L_u`` the mean squared error between softmax and
guessed labels on the mixed unlabelled part, ``w(t)`` a linear ramp-up. The mixed batch goes through
the network in one forward pass, so BN sees labelled and unlabelled data together (what MixMatch's
interleaving achieves with chunked passes). When the label budget covers the whole pool (the
"All" column of Tables 3-4) there is no unlabelled batch: the step is then MixUp on labelled data
with ``L = L_x`` (``L_u`` logged as 0).

Every forward pass runs under :func:`fer_nb.device.autocast` (bf16 on CUDA; on the CPU with
``FER_NB_CPU_BF16=1``); logits are cast to float32 before the losses.
"""
from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from fer_nb import fast
from fer_nb.device import autocast
from fer_nb.data.augment import Augment
from fer_nb.data.schema import FaceArrays
from fer_nb.ssl.ema import WeightEMA, make_ema_model
from fer_nb.ssl.mixup import guess_labels, mixup, sample_lambda, sharpen, soft_cross_entropy

# --------------------------------------------------------------------------------------------- data


def balanced_label_split(labels: torch.Tensor, n_labelled: int, num_classes: int,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(labelled, unlabelled)``: ``n_labelled`` as balanced over classes as possible.

    Each class gives ``min(n / C, available)`` images; a shortfall is filled at random from the
    remaining labelled images (never from ``-1`` rows; too few labelled images is an error).
    ``n_labelled >= len(labels)`` (the "All" column) labels everything.
    """
    n = labels.shape[0]
    if n_labelled <= 0:
        raise ValueError(f"n_labelled must be >= 1, got {n_labelled}")
    if n_labelled >= n:
        return torch.randperm(n, generator=generator), torch.empty(0, dtype=torch.long)
    order = torch.randperm(n, generator=generator)
    y = labels[order]
    # rank of each image inside its class (in the random order), vectorised
    onehot = F.one_hot(y.clamp_min(0), num_classes) * (y >= 0)[:, None]
    rank = (onehot.cumsum(0) * onehot).sum(1) - 1
    per_class = n_labelled // num_classes
    take = (rank < per_class) & (y >= 0)
    chosen = order[take]
    rest = order[~take]
    short = n_labelled - chosen.numel()
    if short > 0:  # fill from the remaining *labelled* images, in the random order
        fill = (labels[rest] >= 0).nonzero().squeeze(1)[:short]
        if fill.numel() < short:
            raise ValueError(f"n_labelled={n_labelled} but only {chosen.numel() + fill.numel()} images have a label "
                             f"(the others are -1); ask for at most that many")
        keep = torch.ones(rest.shape[0], dtype=torch.bool, device=rest.device)
        keep[fill] = False
        chosen, rest = torch.cat([chosen, rest[fill]]), rest[keep]
    return chosen, rest


class PairedBatches:
    """``steps`` pairs of (labelled, unlabelled) batches of ``batch_size`` images on ``device``.

    Yields dicts ``{"image", "expression", "u_image"}`` (``u_image`` absent when there is no
    unlabelled pool). Sampling: concatenated random permutations (each image once per pass, data
    cycled), from a generator seeded by ``seed * 100003 + epoch``.
    """

    def __init__(self, labelled: FaceArrays, unlabelled: FaceArrays | None, batch_size: int, steps: int,
                 seed: int, epoch: int, device: torch.device):
        if len(labelled) == 0:
            raise ValueError("PairedBatches: the labelled set is empty")
        self.xl = labelled.images.to(device)
        self.yl = labelled.labels["expression"].to(device)
        self.xu = unlabelled.images.to(device) if unlabelled is not None and len(unlabelled) else None
        self.batch_size, self.steps = batch_size, steps
        self.g = torch.Generator().manual_seed(seed * 100003 + epoch)
        self.device = device

    def __len__(self) -> int:
        return self.steps

    def _indices(self, n: int) -> torch.Tensor:
        need = self.steps * self.batch_size
        reps = math.ceil(need / n)
        idx = torch.cat([torch.randperm(n, generator=self.g) for _ in range(reps)])[:need]
        return idx.view(self.steps, self.batch_size).to(self.device)

    def __iter__(self):
        il = self._indices(self.xl.shape[0])
        iu = self._indices(self.xu.shape[0]) if self.xu is not None else None
        for s in range(self.steps):
            batch = {"image": self.xl[il[s]].float().div_(255.0), "expression": self.yl[il[s]]}
            if iu is not None:
                batch["u_image"] = self.xu[iu[s]].float().div_(255.0)
            yield batch


@torch.no_grad()
def predict_classes(model: nn.Module, data: FaceArrays, batch_size: int, device: torch.device) -> torch.Tensor:
    """``argmax`` predictions of ``model`` (eval mode) over ``data``, on the CPU."""
    model.eval()
    out = [model(b["image"]).argmax(1).cpu() for b in data.batches(batch_size, device=device)]
    return torch.cat(out)


def collapsed(pred: torch.Tensor, num_classes: int, threshold: float = 0.98) -> bool:
    """True when one class takes ``>= threshold`` of the predictions: the papers' "nc" (a run
    that predicts only the dominant class)."""
    counts = torch.bincount(pred.long(), minlength=num_classes)
    return bool(counts.max().item() >= threshold * pred.numel())


def linear_rampup(progress: float, length: float) -> float:
    """MixMatch's ``w(t)``: ``clip(progress / length, 0, 1)``; ``length <= 0`` -> 1."""
    return 1.0 if length <= 0 else float(min(1.0, max(0.0, progress / length)))


# ------------------------------------------------------------------------------------------ methods


class SSLMethod:
    """Shared plumbing: model, Adam optimizer, optional weight EMA, augmentation.

    Args:
        model: a network with ``forward(x, with_embedding=False)`` (e.g. :class:`~fer_nb.models.wrn.WideResNet`).
        num_classes: classes.
        lr: Adam learning rate (MixMatch: 0.002).
        ema_decay: weight-EMA decay (0.999 in MixMatch); ``None`` disables the EMA (evaluation on
            the live model; Table 5's "without parameter EMA").
        weight_decay: decoupled decay factor per step (MixMatch: ``0.02 * lr``).
        augment: the augmentation (default: flip + 4 px translation).
    """

    name = "base"

    def __init__(self, model: nn.Module, num_classes: int, *, lr: float = 0.002, ema_decay: float | None = 0.999,
                 weight_decay: float = 0.0, augment: Callable | None = None):
        self.model = model
        self.num_classes = num_classes
        self.device = next(model.parameters()).device
        self.optimizer = fast.optimizer("adam", model.parameters(), lr, self.device)  # fused on CUDA
        self.augment = augment or Augment()
        if ema_decay is not None:
            self.ema_model = make_ema_model(model)
            self.ema = WeightEMA(model, self.ema_model, alpha=ema_decay, weight_decay=weight_decay)
        else:
            self.ema_model, self.ema = None, None
            self._wd = weight_decay

    @property
    def eval_model(self) -> nn.Module:
        """The model to evaluate: the EMA model when there is one (MixMatch evaluates it)."""
        return self.ema_model if self.ema_model is not None else self.model

    #: run the forward passes under :func:`fer_nb.device.autocast` (set False for a float32 baseline)
    amp: bool = True

    def forward(self, x: torch.Tensor, **kw):
        """``model(x, **kw)`` under the book's autocast (bf16 on CUDA) unless ``amp`` is False."""
        with autocast(self.device, enabled=self.amp):
            return self.model(x, **kw)

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.optimizer}

    def extra_state(self) -> dict:
        return {"ema": self.ema} if self.ema is not None else {}

    def _update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.ema is not None:
            self.ema.step()
        elif self._wd > 0:
            with torch.no_grad():
                torch._foreach_mul_([p for p in self.model.parameters()], 1.0 - self._wd)

    def train_step(self, batch: dict, ctx: SimpleNamespace) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must implement train_step")


class Supervised(SSLMethod):
    """Labelled data only, with MixUp (``mixup_alpha``; 0 = off) and the weight EMA.

    The Margin-Mix paper's "Supervised WideResNet" baseline: "training in purely supervised manner
    but containing MixUp and temporal averaging".
    """

    name = "supervised"

    def __init__(self, model: nn.Module, num_classes: int, *, mixup_alpha: float = 0.75, **kw):
        super().__init__(model, num_classes, **kw)
        self.mixup_alpha = mixup_alpha

    def train_step(self, batch: dict, ctx: SimpleNamespace) -> dict[str, torch.Tensor]:
        x = self.augment(batch["image"])
        y = F.one_hot(batch["expression"], self.num_classes).float()
        lam = sample_lambda(self.mixup_alpha)
        if lam < 1.0:
            x, y = mixup(x, y, lam, torch.randperm(x.shape[0], device=x.device))
        loss = soft_cross_entropy(self.forward(x), y)
        self._update(loss)
        return {"loss": loss.detach()}


class MixMatch(SSLMethod):
    """MixMatch training step (see the module docstring).

    Args (beyond :class:`SSLMethod`): ``T`` sharpening temperature (0.5; Margin-Mix used 0.25 on
    FER data), ``K`` unlabelled augmentations (2), ``alpha`` Beta parameter (0.75), ``lambda_u``
    unlabelled weight (75 on CIFAR-10), ``rampup`` fraction of training over which ``w(t)`` ramps
    linearly from 0 to 1 (MixMatch: 16 of 1024 epochs).
    """

    name = "mixmatch"

    def __init__(self, model: nn.Module, num_classes: int, *, T: float = 0.5, K: int = 2, alpha: float = 0.75,
                 lambda_u: float = 75.0, rampup: float = 0.016, **kw):
        super().__init__(model, num_classes, **kw)
        if K < 1:
            raise ValueError(f"K (unlabelled augmentations) must be >= 1, got {K}")
        self.T, self.K, self.alpha, self.lambda_u, self.rampup = T, K, alpha, lambda_u, rampup

    @torch.no_grad()
    def guess(self, xus: list[torch.Tensor]) -> torch.Tensor:
        """Eq. 7-8: average the softmax over the ``K`` augmented views, then sharpen with ``T``."""
        logits_u = self.forward(torch.cat(xus)).float()
        p = guess_labels(torch.softmax(logits_u, 1).view(len(xus), -1, self.num_classes))  # Eq. 7
        return sharpen(p, self.T)                                                          # Eq. 8

    def train_step(self, batch: dict, ctx: SimpleNamespace) -> dict[str, torch.Tensor]:
        xl = self.augment(batch["image"])
        yl = F.one_hot(batch["expression"], self.num_classes).float()
        b = xl.shape[0]
        xus = [self.augment(batch["u_image"]) for _ in range(self.K)] if "u_image" in batch else []
        all_x, all_y = (torch.cat([xl, *xus]), torch.cat([yl, self.guess(xus).repeat(self.K, 1)])) if xus else (xl, yl)
        lam = sample_lambda(self.alpha)
        mx, my = mixup(all_x, all_y, lam, torch.randperm(all_x.shape[0], device=all_x.device))  # Eq. 9
        logits = self.forward(mx).float()
        lx = soft_cross_entropy(logits[:b], my[:b])                                  # L_x
        lu = (torch.softmax(logits[b:], 1) - my[b:]).pow(2).mean() if xus else lx.new_zeros(())  # L_u
        w = self.lambda_u * linear_rampup(ctx.progress, self.rampup)                 # w(t) lambda_u
        loss = lx + w * lu
        self._update(loss)
        return {"loss": loss.detach(), "loss_x": lx.detach(), "loss_u": lu.detach()}
