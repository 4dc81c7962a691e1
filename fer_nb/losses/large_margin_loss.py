"""Large-margin loss on L2-normalised embeddings and centroids (Racoviteanu et al., Eq. 2-3, 7).

With ``x_hat = x / ||x||`` and ``c_hat = c / ||c||``, for a sample of class ``j`` among ``C``
classes (Eq. 3):

.. math::

    \\mathcal{L}_M = \\sum_i \\Big( \\|\\hat{\\mathbf{x}}_i - \\hat{\\mathbf{c}}_j\\|_2
        - \\frac{1}{C-1} \\sum_{k \\ne j} \\|\\hat{\\mathbf{x}}_i - \\hat{\\mathbf{c}}_k\\|_2 \\Big)

pull each normalised embedding to its own normalised centroid and push it from the others; as
everything lives on the unit sphere the loss is bounded (each distance is in [0, 2]), so the
network cannot shrink the loss by scaling the embeddings down (the paper's argument against
center/island loss). The centroids are class means of the *raw* embeddings (Eq. 1 / Eq. 7),
tracked like the center loss's centres (see :mod:`fer_nb.losses.center`):

* ``update="moving"`` (default): buffer, moving update with centroid learning rate ``alpha`` on
  the detached embeddings in ``train()`` mode (a class seen for the first time starts at its batch
  mean); no gradient reaches the centroids, which matches the paper's Eq. 5 (a derivative with
  respect to the embedding only).
* ``update="sgd"``: ``nn.Parameter`` learned by the caller's optimizer.

**Semi-supervised / transfer mode** (Sec. 3.1 "Semi-supervised learning" and Eq. 7): rows whose
label is ``-1`` are ignored unless ``pseudo_labels`` are passed; then those rows take the
network's own prediction (``argmax`` of the expression logits, or the argmax pseudo-emotion of
Eq. 6 for AU models) both for the centroid update and for the loss. The decision layer is trained
by the caller from the real labels only.

``squared=False`` (default) is the paper's Eq. 2-3 (plain Euclidean distances; ``eps`` floors the
squared distance before the square root so the gradient stays finite at zero distance).
``squared=True`` uses squared distances, the loss whose gradient the paper's Eq. 5 writes.
"""
from __future__ import annotations

import torch
from torch import nn

from fer_nb.losses.centroids import check_centroid_options, init_centroids, moving_centroid_update
from fer_nb.losses.common import check_inputs, reduce, working_dtype, working_rows
from fer_nb.losses.distances import normalise, pairwise_sq_distances

__all__ = ["LargeMarginLoss", "normalise", "reference_large_margin"]


class LargeMarginLoss(nn.Module):
    """Large-margin loss of Racoviteanu et al. (Eq. 2-3; Eq. 7 with pseudo-labels).

    Args:
        num_classes: ``C >= 2`` (the push term averages over the ``C - 1`` other classes).
        embedding_dim: ``D``; ``centers`` is ``(C, D)`` (raw, un-normalised class means).
        reduction: ``"mean"`` over rows with a (pseudo-)label, ``"sum"`` (the paper's sum over
            ``i``), or ``"none"`` (per row, 0 for ignored rows).
        update, alpha: how the centroids are learned (see the module docstring).
        squared: use squared distances instead of Eq. 2's plain distances.
        eps: numerical floor for norms and for the distance's square root.

    ``forward(embeddings, labels, pseudo_labels=None) -> loss``. ``labels == -1`` rows are
    ignored, or take ``pseudo_labels`` when given (self-labelling, the paper's SSL mode).
    """

    def __init__(self, num_classes: int, embedding_dim: int, reduction: str = "mean", *,
                 update: str = "moving", alpha: float = 0.5, squared: bool = False, eps: float = 1e-12):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"LargeMarginLoss needs num_classes >= 2 (Eq. 3 divides by C - 1), got {num_classes}")
        if embedding_dim < 1:
            raise ValueError(f"LargeMarginLoss: embedding_dim must be >= 1, got {embedding_dim}")
        check_centroid_options(reduction, update, alpha, type(self).__name__)
        self.num_classes, self.embedding_dim = int(num_classes), int(embedding_dim)
        self.reduction, self.update, self.alpha, self.squared, self.eps = reduction, update, alpha, squared, eps
        init_centroids(self, num_classes, embedding_dim, update)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, reduction={self.reduction!r}, "
                f"update={self.update!r}, alpha={self.alpha}, squared={self.squared}")

    @staticmethod
    def self_labels(labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``labels`` with every ``-1`` replaced by ``argmax`` of the (detached) ``logits``."""
        return torch.where(labels >= 0, labels, logits.detach().argmax(1))

    def distance_matrix(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` distances ``||x_hat_i - c_hat_k||`` (squared if ``squared``), in float32/64."""
        dt = working_dtype(embeddings)
        x_hat = normalise(embeddings.to(dt), self.eps)
        c_hat = normalise(self.centers.to(dt), self.eps)
        d2 = pairwise_sq_distances(x_hat, c_hat)
        return d2 if self.squared else d2.clamp_min(self.eps).sqrt()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                pseudo_labels: torch.Tensor | None = None) -> torch.Tensor:
        name = type(self).__name__
        check_inputs(embeddings, labels, self.num_classes, self.embedding_dim, name)
        if pseudo_labels is not None:
            check_inputs(embeddings, pseudo_labels, self.num_classes, self.embedding_dim, f"{name} (pseudo_labels)")
            labels = torch.where(labels >= 0, labels, pseudo_labels.to(labels.dtype))
        with torch.autocast(embeddings.device.type, enabled=False):
            loss = self.compute(working_rows(embeddings, labels >= 0), labels)
        if self.update == "moving" and self.training:
            moving_centroid_update(self.centers, self.seen, embeddings, labels, self.alpha, name=name)
        return loss

    def compute(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Eq. 3: ``||x_hat_i - c_hat_y|| - 1/(C-1) sum_{k != y} ||x_hat_i - c_hat_k||``, reduced."""
        d = self.distance_matrix(x)
        own = d.gather(1, labels.clamp_min(0)[:, None]).squeeze(1)
        others = (d.sum(1) - own) / (self.num_classes - 1)
        return reduce(own - others, labels >= 0, self.reduction)


def reference_large_margin(x: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor, squared: bool = False,
                           reduction: str = "mean") -> torch.Tensor:
    """Loop reference of :class:`LargeMarginLoss` (Eq. 3), one labelled row and one class at a time."""
    y = labels.tolist()
    C = len(centers)
    per = []
    for i in range(len(y)):
        if y[i] < 0:
            per.append(x.new_zeros(()))
            continue
        xh = x[i] / x[i].norm()
        d = []
        for k in range(C):
            d2 = (xh - centers[k] / centers[k].norm()).pow(2).sum()
            d.append(d2 if squared else d2.sqrt())
        per.append(d[y[i]] - sum(d[k] for k in range(C) if k != y[i]) / (C - 1))
    per = torch.stack(per) if per else x.new_zeros(0)
    if reduction == "none":
        return per
    n = sum(v >= 0 for v in y)
    return per.sum() if reduction == "sum" else per.sum() / max(n, 1)
