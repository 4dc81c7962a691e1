"""Supervised contrastive loss and InfoNCE (Khosla et al., "Supervised Contrastive Learning",
NeurIPS 2020, Eq. 1-3; Oord et al. 2018; Chen et al., SimCLR, ICML 2020).

With ``z`` the L2-normalised embeddings, ``A(i)`` all rows but ``i`` and ``P(i)`` the rows with
``i``'s label, the "L_out" form (Eq. 2, the one Khosla et al. recommend) is

.. math::

    L^{sup}_{out} = \\sum_{i} \\frac{-1}{|P(i)|}\\sum_{p\\in P(i)}
        \\log\\frac{\\exp(z_i\\cdot z_p/\\tau)}{\\sum_{a\\in A(i)}\\exp(z_i\\cdot z_a/\\tau)},

and the "L_in" form (Eq. 3) puts the average over positives *inside* the log:
``-log( 1/|P(i)| sum_p exp(z_i.z_p/tau) / sum_a exp(z_i.z_a/tau) )``; by Jensen ``L_in <= L_out``,
and the paper reports L_out trains better. When every label occurs exactly twice (the two
augmented views of one image, labels = image ids), both are the self-supervised **InfoNCE / NT-Xent**
loss of SimCLR (Khosla et al. Eq. 1): a ``2N``-way cross-entropy that finds each view's partner.

``temperature`` ``tau``: 0.1 (Khosla et al.'s default; 0.07 in MoCo). Anchors without a positive
are skipped; ``reduction="mean"`` averages over the anchors that have one (pytorch-metric-learning's
``SupConLoss(temperature)`` with ``AvgNonZeroReducer`` gives the same number), ``"none"`` returns
per-anchor values (0 for skipped rows). Rows labelled ``-1`` are neither anchors nor in any ``A(i)``.
"""
from __future__ import annotations

import torch
from torch import nn

from fer_nb.losses.common import working_dtype
from fer_nb.miners import check_batch, check_reduction, cosine_matrix, pair_masks, reduce_rows

__all__ = ["SupConLoss", "supcon_loop", "VARIANTS"]

VARIANTS = ("out", "in")


class SupConLoss(nn.Module):
    """Supervised contrastive loss (``variant="out"``: Eq. 2; ``"in"``: Eq. 3) with temperature ``tau``."""

    def __init__(self, temperature: float = 0.1, variant: str = "out", reduction: str = "mean"):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"SupConLoss: temperature must be > 0, got {temperature}")
        if variant not in VARIANTS:
            raise ValueError(f"SupConLoss: variant must be one of {VARIANTS}, got {variant!r}")
        self.temperature, self.variant = float(temperature), variant
        self.reduction = check_reduction(reduction, "SupConLoss")

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, variant={self.variant!r}, reduction={self.reduction!r}"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        check_batch(embeddings, labels, "SupConLoss")
        pos, neg = pair_masks(labels)
        others = pos | neg
        with torch.autocast(embeddings.device.type, enabled=False):
            logits = cosine_matrix(embeddings.to(working_dtype(embeddings))) / self.temperature
            masked = logits.masked_fill(~others, float("-inf"))
            has = pos.any(1)
            safe = torch.where(others.any(1, keepdim=True), masked, torch.zeros_like(masked))
            log_den = torch.logsumexp(safe, dim=1)                       # log sum_{a in A(i)}
            n_pos = pos.sum(1).clamp_min(1).to(logits.dtype)
            if self.variant == "out":
                per = -(torch.where(pos, logits, torch.zeros_like(logits)).sum(1) / n_pos - log_den)
            else:
                lse_pos = torch.logsumexp(torch.where(has[:, None], logits.masked_fill(~pos, float("-inf")),
                                                      torch.zeros_like(logits)), dim=1)
                per = -(lse_pos - n_pos.log() - log_den)
            return reduce_rows(per, has, self.reduction)


def supcon_loop(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1,
                variant: str = "out") -> torch.Tensor:
    """Loop reference of Eq. 2 / Eq. 3 (mean over anchors with a positive)."""
    z = embeddings / embeddings.norm(dim=1, keepdim=True).clamp_min(1e-12)
    total, count = 0.0, 0
    for i in range(len(z)):
        if labels[i] < 0:
            continue
        positives = [p for p in range(len(z)) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        den = sum(torch.exp(z[i] @ z[a] / temperature) for a in range(len(z)) if a != i and labels[a] >= 0)
        if variant == "out":
            term = -sum(torch.log(torch.exp(z[i] @ z[p] / temperature) / den) for p in positives) / len(positives)
        else:
            term = -torch.log(sum(torch.exp(z[i] @ z[p] / temperature) for p in positives) / len(positives) / den)
        total, count = total + term, count + 1
    return total / max(count, 1) if count else torch.zeros((), dtype=embeddings.dtype)
