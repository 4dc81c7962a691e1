"""A fair comparison of metric-learning losses, after Musgrave, Belongie & Lim, "A Metric Learning
Reality Check" (ECCV 2020), cheap enough for a class on a CPU (course chapter, issue #21).

The protocol, each point one of the paper's complaints about published comparisons:

1. **Equal embedding size and network.** A fixed feature extractor (:class:`PCAFeatures`: pixels ->
   mean pooling -> PCA whitening, fitted once on the training images) and the same small
   :class:`EmbeddingHead` (MLP, ``embed_dim`` outputs) for every loss.
2. **Equal tuning budget.** Every loss gets the same number of candidate settings of its own main
   hyperparameter (:data:`LOSSES` holds the grids), the same optimiser, learning rate, steps and
   class-balanced batches (``classes x per_class`` rows, :func:`balanced_batches`).
3. **Validation-set selection.** The candidate with the best MAP@R on the *validation* split is
   chosen; the test split is touched only by the chosen setting.
4. **Several seeds, with the spread.** The chosen setting is retrained with every seed; the table
   gives mean and standard deviation of test Recall@1, MAP@R, R-precision and nearest-class-mean
   accuracy, all measured in each loss's own geometry (:func:`fer_nb.retrieval.metric_for`).

:func:`run_protocol` runs it on any ``(images, labels)`` splits; the chapter runs it on SynthFACS
(subject-independent splits) and, when the data are there, on FER+ (its own train/val/test split).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from fer_nb import miners, retrieval
from fer_nb.losses.angular_margin import AngularMarginLoss
from fer_nb.losses.circle import CircleLoss
from fer_nb.losses.contrastive import ContrastiveLoss
from fer_nb.losses.cosface import CosFaceLoss
from fer_nb.losses.lifted_structure import LiftedStructureLoss
from fer_nb.losses.multi_similarity import MultiSimilarityLoss
from fer_nb.losses.normface import NormFaceLoss
from fer_nb.losses.npair import NPairLoss
from fer_nb.losses.proxy_anchor import ProxyAnchorLoss
from fer_nb.losses.proxy_nca import ProxyNCALoss
from fer_nb.losses.softmax import SoftmaxLoss
from fer_nb.losses.sphereface import SphereFaceLoss
from fer_nb.losses.supcon import SupConLoss
from fer_nb.losses.triplet import TripletLoss

__all__ = ["PCAFeatures", "EmbeddingHead", "Normalized", "BatchHardTriplet", "LossSpec", "LOSSES",
           "balanced_batches", "train_head", "evaluate", "run_protocol"]


# --------------------------------------------------------------------------------------- features

class PCAFeatures:
    """Fixed features: ``uint8 (N, C, H, W)`` images -> ``pool x pool`` mean pooling -> PCA whitening.

    Fitted once on training images (:meth:`fit`); :meth:`transform` is then the same linear map for
    every split and every loss.
    """

    def __init__(self, dims: int = 96, pool: int = 2):
        if dims < 1 or pool < 1:
            raise ValueError(f"PCAFeatures: dims and pool must be >= 1, got {dims}, {pool}")
        self.dims, self.pool = int(dims), int(pool)
        self.mean: torch.Tensor | None = None
        self.components: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None

    def _flat(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() / 255.0
        if self.pool > 1:
            x = F.avg_pool2d(x, self.pool)
        return x.flatten(1)

    def fit(self, images: torch.Tensor, seed: int = 0) -> "PCAFeatures":
        x = self._flat(images)
        if self.dims > min(x.shape):
            raise ValueError(f"PCAFeatures: dims={self.dims} > min(N, pixels)={min(x.shape)}; lower dims")
        self.mean = x.mean(0)
        torch.manual_seed(seed)
        _, s, v = torch.pca_lowrank(x - self.mean, q=self.dims, center=False, niter=4)
        self.components = v[:, : self.dims]
        self.scale = (s[: self.dims] / math.sqrt(max(len(x) - 1, 1))).clamp_min(1e-6)
        return self

    def transform(self, images: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        if self.components is None:
            raise RuntimeError("PCAFeatures: call fit(train_images) before transform")
        out = [(self._flat(images[i:i + chunk]) - self.mean) @ self.components / self.scale
               for i in range(0, len(images), chunk)]
        return torch.cat(out) if out else torch.zeros(0, self.dims)


class EmbeddingHead(nn.Module):
    """``in_dim -> hidden -> embed_dim`` MLP (ReLU, batch norm), the same for every loss."""

    def __init__(self, in_dim: int, hidden: int = 256, embed_dim: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Normalized(nn.Module):
    """Apply ``loss`` to L2-normalised embeddings (Musgrave et al. normalise for every pair loss)."""

    normalize = True  # read by fer_nb.retrieval.metric_for

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(F.normalize(embeddings.float(), dim=1), labels)


class BatchHardTriplet(nn.Module):
    """Triplet loss on the batch-hard triplets of :func:`fer_nb.miners.batch_hard` (unit sphere, Euclidean)."""

    normalize = True  # read by fer_nb.retrieval.metric_for

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.loss = TripletLoss(margin=margin, power=1, reduction="mean")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = F.normalize(embeddings.float(), dim=1)
        a, p, n = miners.batch_hard(x, labels)
        return self.loss(x, labels, triplets=torch.stack([a, p, n], 1))


@dataclass(frozen=True)
class LossSpec:
    """How to build one loss for ``(embed_dim, num_classes, value)`` and the grid of ``value`` to tune."""

    label: str
    param: str
    grid: tuple
    build: Callable[[int, int, float], nn.Module]
    metric: str  # the geometry the embedding is evaluated in


LOSSES: dict[str, LossSpec] = {
    "softmax": LossSpec("softmax", "-", (0,), lambda d, c, v: SoftmaxLoss(c, d), "euclidean"),
    "contrastive": LossSpec("contrastive", "neg_margin", (0.5, 0.8, 1.1),
                            lambda d, c, v: Normalized(ContrastiveLoss(neg_margin=v, pos_margin=0.0, power=1)),
                            "cosine"),
    "triplet": LossSpec("triplet (all)", "margin", (0.1, 0.2, 0.4),
                        lambda d, c, v: Normalized(TripletLoss(margin=v, power=1)), "cosine"),
    "triplet_bh": LossSpec("triplet (batch-hard)", "margin", (0.1, 0.2, 0.4),
                           lambda d, c, v: BatchHardTriplet(margin=v), "cosine"),
    "lifted": LossSpec("lifted structure", "margin", (0.5, 1.0, 1.5),
                       lambda d, c, v: Normalized(LiftedStructureLoss(margin=v)), "cosine"),
    "npair": LossSpec("N-pair", "l2_reg", (0.002, 0.01, 0.05), lambda d, c, v: NPairLoss(l2_reg=v), "dot"),
    "multi_similarity": LossSpec("multi-similarity", "base", (0.3, 0.5, 0.7),
                                 lambda d, c, v: MultiSimilarityLoss(2.0, 50.0, v, mining=True), "cosine"),
    "circle": LossSpec("Circle", "m", (0.15, 0.25, 0.4), lambda d, c, v: CircleLoss(m=v, gamma=80.0), "cosine"),
    "supcon": LossSpec("SupCon", "temperature", (0.05, 0.1, 0.3), lambda d, c, v: SupConLoss(temperature=v), "cosine"),
    "proxy_nca": LossSpec("ProxyNCA", "scale", (4.0, 8.0, 16.0),
                          lambda d, c, v: ProxyNCALoss(d, c, scale=v), "cosine"),
    "proxy_anchor": LossSpec("Proxy-Anchor", "margin", (0.05, 0.1, 0.2),
                             lambda d, c, v: ProxyAnchorLoss(d, c, alpha=32.0, margin=v), "cosine"),
    "normface": LossSpec("NormFace", "scale", (8.0, 16.0, 32.0), lambda d, c, v: NormFaceLoss(d, c, scale=v), "cosine"),
    "cosface": LossSpec("CosFace", "margin", (0.1, 0.2, 0.35),
                        lambda d, c, v: CosFaceLoss(d, c, scale=16.0, margin=v), "cosine"),
    "arcface": LossSpec("ArcFace", "margin", (0.1, 0.2, 0.35),
                        lambda d, c, v: AngularMarginLoss(d, c, scale=16.0, margin=v), "cosine"),
    "sphereface": LossSpec("SphereFace", "margin", (2, 3, 4),
                           lambda d, c, v: SphereFaceLoss(d, c, margin=int(v), lam=5.0), "cosine"),
}


# -------------------------------------------------------------------------------------- training

def balanced_batches(labels: torch.Tensor, steps: int, classes: int, per_class: int,
                     generator: torch.Generator) -> torch.Tensor:
    """``(steps, classes * per_class)`` row indices: each batch draws ``classes`` of the present classes
    and ``per_class`` rows of each (with replacement inside a class), so every row has positives."""
    present = torch.unique(labels[labels >= 0])
    if len(present) < 2:
        raise ValueError("balanced_batches needs at least two classes with labelled rows")
    classes = min(classes, len(present))
    order = torch.argsort(labels)
    sorted_labels = labels[order]
    starts = torch.searchsorted(sorted_labels, present)
    sizes = torch.searchsorted(sorted_labels, present, right=True) - starts
    pick = torch.argsort(torch.rand(steps, len(present), generator=generator), dim=1)[:, :classes]  # (S, classes)
    offs = (torch.rand(steps, classes, per_class, generator=generator) * sizes[pick][..., None]).long()
    rows = order[starts[pick][..., None] + offs]
    return rows.reshape(steps, classes * per_class)


def train_head(spec: LossSpec, value: float, feats: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
               embed_dim: int, hidden: int, steps: int, classes_per_batch: int, per_class: int, lr: float,
               seed: int, device: torch.device | str = "cpu") -> tuple[nn.Module, nn.Module, float]:
    """Train a fresh :class:`EmbeddingHead` (and the loss's parameters) for ``steps`` Adam steps.

    Returns ``(head, loss, final_loss_value)``; ``final_loss_value`` is the mean of the last 10 %
    of the steps' losses (NaN if training diverged).
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    head = EmbeddingHead(feats.shape[1], hidden, embed_dim).to(device)
    loss = spec.build(embed_dim, num_classes, value).to(device)
    params = list(head.parameters()) + [p for p in loss.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    rows = balanced_batches(labels, steps, classes_per_batch, per_class, g)
    feats, labels = feats.to(device), labels.to(device)
    tail = []
    head.train()
    for s in range(steps):
        idx = rows[s].to(device)
        value_t = loss(head(feats[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        value_t.backward()
        opt.step()
        if s >= steps - max(1, steps // 10):
            tail.append(value_t.detach())
    head.eval()
    return head, loss, float(torch.stack(tail).mean())


@torch.no_grad()
def embed(head: nn.Module, feats: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    dev = next(head.parameters()).device
    return torch.cat([head(feats[i:i + chunk].to(dev)).float().cpu() for i in range(0, len(feats), chunk)])


def evaluate(head: nn.Module, metric: str, train: tuple, test: tuple, num_classes: int,
             ks: Sequence[int] = (1, 4)) -> dict[str, float]:
    """Retrieval (leave-one-out within ``test``) and nearest-class-mean accuracy (means of ``train``)."""
    tr = embed(head, train[0])
    te = embed(head, test[0])
    out = retrieval.retrieval_metrics(te, test[1], metric=metric, ks=ks)
    out.pop("queries")
    out["ncm_acc"] = retrieval.ncm_accuracy(tr, train[1], te, test[1], num_classes, metric)
    return out


def run_protocol(splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int, losses: Sequence[str],
                 seeds: Sequence[int], *, embed_dim: int, hidden: int, steps: int, classes_per_batch: int,
                 per_class: int, lr: float, grid_size: int | None = None, device: torch.device | str = "cpu",
                 progress: Callable | None = None) -> dict:
    """The reality-check protocol on feature splits ``{"train", "val", "test"}: (features, labels)``.

    For every loss: train each candidate of its grid (the first ``grid_size`` values; seed
    ``seeds[0]``), keep the best validation MAP@R, retrain it for every other seed, measure the test
    split. Returns ``{"tuning": {loss: [{value, val_map@r, ...}]}, "chosen": {loss: value},
    "test": {loss: [metrics per seed]}, "seconds": {loss: s}}``. A run whose loss is not finite is
    marked ``diverged`` and never chosen.
    """
    for key in losses:
        if key not in LOSSES:
            raise KeyError(f"unknown loss {key!r}; use some of {sorted(LOSSES)}")
    common = dict(embed_dim=embed_dim, hidden=hidden, steps=steps, classes_per_batch=classes_per_batch,
                  per_class=per_class, lr=lr, device=device)
    train, val, test = splits["train"], splits["val"], splits["test"]
    result = {"tuning": {}, "chosen": {}, "test": {}, "seconds": {}}
    jobs = list(losses)
    for key in (progress(jobs, desc="losses") if progress else jobs):
        spec = LOSSES[key]
        t0 = time.perf_counter()
        grid = spec.grid[: grid_size] if grid_size else spec.grid
        tuning, best = [], None
        for value in grid:
            head, _, final = train_head(spec, value, train[0], train[1], num_classes, seed=seeds[0], **common)
            ok = math.isfinite(final)
            m = evaluate(head, spec.metric, train, val, num_classes) if ok else {}
            row = {"value": float(value), "final_loss": final if ok else 0.0, "diverged": 0.0 if ok else 1.0,
                   **{f"val_{k}": v for k, v in m.items()}}
            tuning.append(row)
            if ok and (best is None or m["map@r"] > best[1]["map@r"]):
                best = (value, m, head)
        result["tuning"][key] = tuning
        if best is None:
            result["chosen"][key] = float("nan")
            result["test"][key] = []
            result["seconds"][key] = time.perf_counter() - t0
            continue
        value, _, head0 = best
        result["chosen"][key] = float(value)
        per_seed = [evaluate(head0, spec.metric, train, test, num_classes)]
        for seed in seeds[1:]:
            head, _, final = train_head(spec, value, train[0], train[1], num_classes, seed=seed, **common)
            if math.isfinite(final):
                per_seed.append(evaluate(head, spec.metric, train, test, num_classes))
        result["test"][key] = per_seed
        result["seconds"][key] = time.perf_counter() - t0
    return result
