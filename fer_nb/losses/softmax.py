"""Softmax cross-entropy on a linear classifier head, as a loss on embeddings.

The baseline of every paper in the book: a fully connected layer ``W x + b`` on the embedding
``x`` followed by the softmax cross-entropy (Wen et al., ECCV 2016, Eq. 1, the "softmax loss"
that center loss is added to; Racoviteanu et al.'s ``L_S`` in their Eq. 4):

.. math::

    \\mathcal{L}_S = -\\frac{1}{N} \\sum_{i=1}^N
        \\log \\frac{\\exp(\\mathbf{w}_{y_i}^\\top \\mathbf{x}_i + b_{y_i})}
                   {\\sum_{k=1}^C \\exp(\\mathbf{w}_k^\\top \\mathbf{x}_i + b_k)} .

Packaging the head inside the loss gives it the same ``forward(embeddings, labels)`` interface as
the metric losses, so a notebook can swap one for another; the head (``weight`` ``(C, D)`` and
``bias`` ``(C,)``) is an ``nn.Parameter`` the caller's optimizer must include
(``loss.parameters()``). Its decision boundaries are the lines
``(w_j - w_k)^T x + b_j - b_k = 0``: the loss only asks for *separable* classes and rewards larger
norms (the logits grow with ``||x||``), which is what the margin losses change.

Labels ``-1`` are ignored. The log-sum-exp is computed in float32 (float64 inputs stay float64),
also under autocast.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fer_nb.losses.common import check_inputs, check_reduction, reduce, working_dtype, working_rows


class SoftmaxLoss(nn.Module):
    """Linear head + softmax cross-entropy.

    Args:
        num_classes: ``C``.
        embedding_dim: ``D``.
        reduction: ``"mean"`` over the labelled rows (0 if none), ``"sum"``, or ``"none"``
            (per row, 0 for rows with label ``-1``).
        bias: learn the bias ``b`` (default True).

    ``forward(embeddings, labels) -> loss``; ``logits(embeddings)`` gives ``W x + b``.
    """

    def __init__(self, num_classes: int, embedding_dim: int, reduction: str = "mean", *, bias: bool = True):
        super().__init__()
        if num_classes < 1 or embedding_dim < 1:
            raise ValueError(f"SoftmaxLoss: num_classes and embedding_dim must be >= 1, got {num_classes}, {embedding_dim}")
        check_reduction(reduction, "SoftmaxLoss")
        self.num_classes, self.embedding_dim, self.reduction = int(num_classes), int(embedding_dim), reduction
        bound = 1.0 / math.sqrt(embedding_dim)  # nn.Linear's initialisation
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound)) if bias else None

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
                f"reduction={self.reduction!r}, bias={self.bias is not None}")

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``W x + b`` in float32/float64 (outside autocast)."""
        dt = working_dtype(embeddings)
        with torch.autocast(embeddings.device.type, enabled=False):
            out = embeddings.to(dt) @ self.weight.to(dt).T
            return out + self.bias.to(dt) if self.bias is not None else out

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_inputs(embeddings, labels, self.num_classes, self.embedding_dim, type(self).__name__)
        with torch.autocast(embeddings.device.type, enabled=False):
            return self.compute(working_rows(embeddings, labels >= 0), labels)

    def compute(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``-log softmax(W x + b)_y`` (Wen et al., Eq. 1) over the labelled rows, reduced."""
        logp = torch.log_softmax(self.logits(x), dim=1)
        per = -logp.gather(1, labels.clamp_min(0)[:, None]).squeeze(1)
        return reduce(per, labels >= 0, self.reduction)


def reference_softmax(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      reduction: str = "mean") -> torch.Tensor:
    """Loop reference of :class:`SoftmaxLoss`: one labelled row at a time (``-1`` rows give 0)."""
    per = []
    for i, y in enumerate(labels.tolist()):
        if y < 0:
            per.append(x.new_zeros(()))
            continue
        z = weight @ x[i] + (bias if bias is not None else 0.0)
        per.append(torch.logsumexp(z, 0) - z[y])
    per = torch.stack(per) if per else x.new_zeros(0)
    if reduction == "none":
        return per
    n = sum(v >= 0 for v in labels.tolist())
    return per.sum() if reduction == "sum" else per.sum() / max(n, 1)


__all__ = ["SoftmaxLoss", "reference_softmax"]
