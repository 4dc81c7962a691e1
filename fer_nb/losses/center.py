"""Center loss (Wen et al., ECCV 2016), as used in Racoviteanu et al., Eq. 1.

Racoviteanu et al. write the center loss as (their Eq. 1)

.. math::

    \\mathcal{L}_C = \\sum_{i=1}^N \\|\\mathbf{x}_i - \\mathbf{c}^{y_i}\\|_2, \\qquad
    \\mathbf{c}^j = \\frac{\\sum_i \\alpha_i^j \\mathbf{x}_i}{\\sum_i \\alpha_i^j},

i.e. the distance of each embedding to the mean embedding of its class. Wen et al. use the
*squared* distance, ``1/2 sum_i ||x_i - c_{y_i}||^2``, with centres that follow the class means by
a moving update with a centroid learning rate ``alpha`` (their Eq. 4):

.. math::

    \\Delta\\mathbf{c}_j = \\frac{\\sum_{i: y_i = j} (\\mathbf{c}_j - \\mathbf{x}_i)}{1 + n_j},
    \\qquad \\mathbf{c}_j \\leftarrow \\mathbf{c}_j - \\alpha\\, \\Delta\\mathbf{c}_j .

This module offers both (``squared=True`` is Wen's and the common form, ``squared=False`` is the
literal Eq. 1) and two ways to learn the centres:

* ``update="moving"`` (default): ``centers`` is a **buffer**; every ``forward`` in training mode
  (``module.train()``) applies the moving update above with the *detached* embeddings of the batch
  (rows with label ``-1`` are ignored). A class seen for the first time has its centre set to its
  batch mean (Eq. 1's centroid), so training does not start from arbitrary centres. In
  ``eval()`` mode the centres are frozen. No gradient flows into the centres.
* ``update="sgd"``: ``centers`` is an ``nn.Parameter`` that the caller's optimizer updates from
  the gradient of the loss (the loss then also pulls the centres towards the embeddings).

Labels equal to ``-1`` are ignored (unlabelled rows in a semi-supervised batch). All distances are
computed in float32 (float64 inputs stay float64), also under autocast.
"""
from __future__ import annotations

import torch
from torch import nn
from fer_nb.losses.centroids import UPDATES, check_centroid_options, init_centroids, moving_centroid_update
from fer_nb.losses.common import REDUCTIONS, check_inputs, reduce, working_dtype, working_rows

__all__ = ["CenterLoss", "REDUCTIONS", "UPDATES", "check_centroid_options", "check_inputs", "init_centroids",
           "moving_centroid_update", "reduce", "reference_center", "working_dtype"]


class CenterLoss(nn.Module):
    """Center loss (Racoviteanu et al., Eq. 1; Wen et al.) with learned class centres.

    Args:
        num_classes: number of classes ``C``.
        embedding_dim: embedding width ``D``; ``centers`` is ``(C, D)``.
        reduction: ``"mean"`` (over rows with a label != -1), ``"sum"``, or ``"none"`` (per row,
            0 for ignored rows).
        squared: ``True`` (default): ``||x_i - c||^2`` (Wen et al.; the usual center loss);
            ``False``: ``||x_i - c||`` as Eq. 1 writes it.
        update: ``"moving"`` (buffer, moving update with rate ``alpha`` in ``train()`` mode) or
            ``"sgd"`` (``nn.Parameter`` learned by the caller's optimizer).
        alpha: centroid learning rate of the moving update (Wen et al. use 0.5).
        eps: floor under the squared distance before the square root when ``squared=False``
            (keeps the gradient finite when an embedding sits on its centre).

    ``forward(embeddings, labels) -> loss``; labels ``-1`` are ignored.
    """

    def __init__(self, num_classes: int, embedding_dim: int, reduction: str = "mean", *,
                 squared: bool = True, update: str = "moving", alpha: float = 0.5, eps: float = 1e-12):
        super().__init__()
        if num_classes < 1 or embedding_dim < 1:
            raise ValueError(f"{type(self).__name__}: num_classes and embedding_dim must be >= 1, got {num_classes}, {embedding_dim}")
        check_centroid_options(reduction, update, alpha, type(self).__name__)
        self.num_classes, self.embedding_dim = int(num_classes), int(embedding_dim)
        self.reduction, self.squared, self.update, self.alpha, self.eps = reduction, squared, update, alpha, eps
        init_centroids(self, num_classes, embedding_dim, update)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, reduction={self.reduction!r}, "
                f"squared={self.squared}, update={self.update!r}, alpha={self.alpha}")

    def distances(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-row ``||x_i - c_{y_i}||`` (or its square); rows with label -1 use centre 0 (masked later)."""
        dt = working_dtype(embeddings)
        x = embeddings.to(dt)
        c = self.centers.to(dt)[labels.clamp_min(0)]
        d2 = (x - c).pow(2).sum(1)
        return d2 if self.squared else d2.clamp_min(self.eps).sqrt()

    def _update_delta(self) -> torch.Tensor | None:  # hook for the island loss
        return None

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_inputs(embeddings, labels, self.num_classes, self.embedding_dim, type(self).__name__)
        with torch.autocast(embeddings.device.type, enabled=False):
            loss = self.compute(working_rows(embeddings, labels >= 0), labels)
        if self.update == "moving" and self.training:
            moving_centroid_update(self.centers, self.seen, embeddings, labels, self.alpha, self._update_delta(),
                                   type(self).__name__)
        return loss

    def compute(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Eq. 1 (Wen et al.'s squared form by default): ``||x_i - c_{y_i}||`` over the labelled rows, reduced."""
        return reduce(self.distances(x, labels), labels >= 0, self.reduction)


def reference_center(x: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor, squared: bool = True,
                     reduction: str = "mean") -> torch.Tensor:
    """Loop reference of :class:`CenterLoss` (Eq. 1): one labelled row at a time."""
    y = labels.tolist()
    per = []
    for i in range(len(y)):
        if y[i] < 0:
            per.append(x.new_zeros(()))
            continue
        d2 = (x[i] - centers[y[i]]).pow(2).sum()
        per.append(d2 if squared else d2.sqrt())
    per = torch.stack(per) if per else x.new_zeros(0)
    if reduction == "none":
        return per
    n = sum(v >= 0 for v in y)
    return per.sum() if reduction == "sum" else per.sum() / max(n, 1)
