"""Evaluation metrics of the five papers, computed globally over a whole evaluation set.

Classification: accuracy, mean per-class accuracy (the large-margin and Margin-Mix papers'
"mean Acc"), confusion matrix, per-label F1 (AU detection). Regression in valence-arousal space
(CAF paper): RMSE, SAGR, PCC, CCC. Inputs are tensors or array-likes; outputs are floats/tensors.
"""
from __future__ import annotations

import torch


def _t(x) -> torch.Tensor:
    return x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(x)


def accuracy(pred, target) -> float:
    """Fraction of ``pred == target`` (``pred``: class ids or logits ``(N, C)``)."""
    pred, target = _t(pred), _t(target)
    if pred.ndim == 2:
        pred = pred.argmax(1)
    if target.numel() == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((pred == target).double().mean())


def confusion_matrix(pred, target, num_classes: int) -> torch.Tensor:
    """Counts ``(num_classes, num_classes)``; row = true class, column = predicted class."""
    pred, target = _t(pred), _t(target)
    if pred.ndim == 2:
        pred = pred.argmax(1)
    idx = target.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def mean_per_class_accuracy(pred, target, num_classes: int) -> float:
    """Mean over classes present in ``target`` of the per-class recall."""
    cm = confusion_matrix(pred, target, num_classes).double()
    support = cm.sum(1)
    present = support > 0
    return float((cm.diagonal()[present] / support[present]).mean())


def f1_per_label(pred, target, mask=None) -> torch.Tensor:
    """Binary F1 per column of multi-label ``(N, L)`` predictions (0/1) and targets.

    ``mask`` (bool, same shape) excludes unannotated entries. A label with no positive
    prediction and no positive target gets F1 = 0 (scikit-learn's ``zero_division=0``).
    """
    pred, target = _t(pred).bool(), _t(target).bool()
    m = torch.ones_like(pred) if mask is None else _t(mask).bool()
    tp = (pred & target & m).sum(0).double()
    fp = (pred & ~target & m).sum(0).double()
    fn = (~pred & target & m).sum(0).double()
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(denom))


def rmse(pred, target) -> float:
    pred, target = _t(pred).double(), _t(target).double()
    return float(((pred - target) ** 2).mean().sqrt())


def sagr(pred, target) -> float:
    """Sign agreement: fraction with ``sign(pred) == sign(target)`` (``sign(0) = 0``, as numpy)."""
    pred, target = _t(pred).double(), _t(target).double()
    return float((torch.sign(pred) == torch.sign(target)).double().mean())


def pcc(pred, target) -> float:
    """Pearson correlation (population moments; 0 when either side is constant)."""
    x, y = _t(pred).double(), _t(target).double()
    xc, yc = x - x.mean(), y - y.mean()
    denom = (xc.pow(2).mean() * yc.pow(2).mean()).sqrt()
    return float((xc * yc).mean() / denom) if denom > 0 else 0.0


def ccc(pred, target) -> float:
    """Lin's concordance correlation: 2 cov / (var_x + var_y + (mu_x - mu_y)^2), population moments."""
    x, y = _t(pred).double(), _t(target).double()
    mx, my = x.mean(), y.mean()
    vx, vy = (x - mx).pow(2).mean(), (y - my).pow(2).mean()
    cov = ((x - mx) * (y - my)).mean()
    denom = vx + vy + (mx - my) ** 2
    return float(2 * cov / denom) if denom > 0 else 0.0


def va_metrics(pred, target) -> dict[str, float]:
    """RMSE, SAGR, PCC, CCC for valence (column 0) and arousal (column 1)."""
    pred, target = _t(pred), _t(target)
    out = {}
    for j, name in enumerate(("valence", "arousal")):
        for fn in (rmse, sagr, pcc, ccc):
            out[f"{fn.__name__}_{name}"] = fn(pred[:, j], target[:, j])
    return out
