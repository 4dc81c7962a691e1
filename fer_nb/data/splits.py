"""Evaluation splits: subject-independent folds, label budgets, subject-disjoint validation.

* :func:`subject_kfold` - k folds with no subject in two folds (CK+ 8-fold / MMI 10-fold protocols
  of Liu et al.); subjects are shuffled with ``seed`` and assigned greedily so folds hold about the
  same number of images.
* :func:`labelled_split` - semi-supervised label budget (MixMatch / Margin-Mix): ``n_labelled``
  indices stratified over the classes (equal per class by default, as MixMatch's n/10 per class;
  or proportional to the class frequencies), the rest unlabelled. Too large a budget is an error.
* :func:`train_val_by_subject` - hold out a fraction of subjects for validation.

All return ``torch.int64`` index tensors for :meth:`FaceArrays.subset`.
"""
from __future__ import annotations

import numpy as np
import torch


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _idx(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.sort(a), dtype=torch.int64)


def subject_kfold(subjects, k: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``k`` (train_idx, test_idx) pairs; every sample is tested exactly once and no subject is in
    both halves of a pair. Needs known subjects (>= 0) and at least ``k`` of them."""
    s = _as_numpy(subjects).astype(np.int64).reshape(-1)
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an int >= 2, got {k!r}")
    if (s < 0).any():
        raise ValueError(f"{int((s < 0).sum())} samples have an unknown subject (-1); subject-independent "
                         "folds need subject ids (this dataset has none: use a random split)")
    uniq, counts = np.unique(s, return_counts=True)
    if len(uniq) < k:
        raise ValueError(f"only {len(uniq)} subjects for {k} folds; use k <= {len(uniq)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    order = order[np.argsort(-counts[order], kind="stable")]  # largest subjects first, random ties
    fold_of = np.empty(len(uniq), dtype=np.int64)
    load = np.zeros(k, dtype=np.int64)
    for j in order:
        f = int(np.argmin(load))
        fold_of[j] = f
        load[f] += counts[j]
    sample_fold = fold_of[np.searchsorted(uniq, s)]
    return [(_idx(np.flatnonzero(sample_fold != f)), _idx(np.flatnonzero(sample_fold == f)))
            for f in range(k)]


def labelled_split(labels, n_labelled: int, seed: int = 0, *, balanced: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(labelled_idx, unlabelled_idx) with ``n_labelled`` labelled samples stratified by class.

    ``balanced=True``: ``n_labelled // C`` per class (the remainder goes to the largest classes);
    ``balanced=False``: proportional to class frequency (largest remainder). Samples labelled
    ``-1`` are always unlabelled. Raises ``ValueError`` when the budget exceeds what is available.
    """
    y = _as_numpy(labels).astype(np.int64).reshape(-1)
    if isinstance(n_labelled, bool) or not isinstance(n_labelled, int) or n_labelled < 0:
        raise ValueError(f"n_labelled must be a non-negative int, got {n_labelled!r}")
    classes, counts = np.unique(y[y >= 0], return_counts=True)
    available = int(counts.sum())
    if n_labelled > available:
        raise ValueError(f"n_labelled={n_labelled} but only {available} labelled samples are available")
    rng = np.random.default_rng(seed)
    if balanced:
        per = np.full(len(classes), n_labelled // max(len(classes), 1))
        for j in np.argsort(-counts, kind="stable")[: n_labelled - int(per.sum())]:
            per[j] += 1
        short = per > counts
        if short.any():
            c = int(classes[np.flatnonzero(short)[0]])
            raise ValueError(f"class {c} has {int(counts[short][0])} samples but the balanced budget needs "
                             f"{int(per[short][0])}; lower n_labelled or pass balanced=False")
    else:
        exact = counts * n_labelled / max(available, 1)
        per = np.floor(exact).astype(np.int64)
        for j in np.argsort(-(exact - per), kind="stable")[: n_labelled - int(per.sum())]:
            per[j] += 1
    chosen = [rng.permutation(np.flatnonzero(y == c))[:m] for c, m in zip(classes, per)]
    lab = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    mask = np.zeros(len(y), dtype=bool)
    mask[lab] = True
    return _idx(np.flatnonzero(mask)), _idx(np.flatnonzero(~mask))


def train_val_by_subject(subjects, val_fraction: float = 0.2, seed: int = 0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, val_idx) with about ``val_fraction`` of the subjects (at least one) in val."""
    s = _as_numpy(subjects).astype(np.int64).reshape(-1)
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if (s < 0).any():
        raise ValueError("samples with unknown subject (-1): a subject-disjoint split needs subject ids")
    uniq = np.unique(s)
    if len(uniq) < 2:
        raise ValueError(f"need at least 2 subjects for a train/val split, got {len(uniq)}")
    rng = np.random.default_rng(seed)
    n_val = min(len(uniq) - 1, max(1, int(round(val_fraction * len(uniq)))))
    val_subjects = rng.permutation(uniq)[:n_val]
    is_val = np.isin(s, val_subjects)
    return _idx(np.flatnonzero(~is_val)), _idx(np.flatnonzero(is_val))
