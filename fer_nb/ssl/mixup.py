"""The MixMatch ingredients shared by MixMatch and Margin-Mix (Florea et al., Eq. 7-9).

* :func:`guess_labels` - average the label distributions predicted for ``K`` augmentations of the
  same unlabelled image (Eq. 7 sums them; the sum is renormalised, which is the average).
* :func:`sharpen` - Eq. 8: ``p_c^(1/T) / sum_j p_j^(1/T)``; ``T -> 0`` tends to one-hot.
  The paper's "No sharpening T = 0" row (Table 5) means *no* sharpening: ``T in (None, 0)``
  returns ``p`` unchanged here.
* :func:`sample_lambda` + :func:`mixup` - Eq. 9 with MixMatch's ``lambda' = max(lambda, 1 - lambda)``,
  so a mixed sample stays closer to its first argument (the paper: "lambda has to be small such
  that the new data is closer to the labelled example").
* :func:`interleave` - MixMatch's trick to let every BN forward pass see labelled and unlabelled
  data when the batch is pushed through the network in several chunks. The steps in this package
  forward the whole mixed batch in *one* pass (BN sees all of it; faster on a GPU), so they do not
  need it; it is kept, tested, for chunked forwards.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def sharpen(p: torch.Tensor, T: float | None) -> torch.Tensor:
    """Eq. 8: temperature sharpening of distributions along the last dim; ``T`` 0/None = identity."""
    if T is None or T == 0:
        return p
    if T < 0:
        raise ValueError(f"sharpening temperature T must be >= 0, got {T}")
    # p^(1/T) computed in log space: stable for small T (no underflow to 0/0).
    logp = torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)) / T
    return torch.softmax(logp, dim=-1)


def guess_labels(probs: Sequence[torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """Eq. 7: sum of the ``K`` per-augmentation label distributions, renormalised (= their mean).

    ``probs``: ``(K, B, C)`` tensor or a list of ``K`` ``(B, C)`` tensors.
    """
    p = torch.stack(list(probs)) if not isinstance(probs, torch.Tensor) else probs
    if p.ndim != 3:
        raise ValueError(f"guess_labels expects (K, B, C) probabilities, got {tuple(p.shape)}")
    s = p.sum(0)
    return s / s.sum(-1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)


def sample_lambda(alpha: float, rng: np.random.Generator | None = None) -> float:
    """``lambda ~ Beta(alpha, alpha)``, returned as ``max(lambda, 1 - lambda)`` (MixMatch).

    ``alpha <= 0`` disables MixUp (``lambda = 1``). Drawn on the host from numpy (``rng`` or the
    global numpy RNG, which :func:`fer_nb.train.fit` checkpoints), so no device sync is needed.
    """
    if alpha <= 0:
        return 1.0
    lam = float((rng or np.random).beta(alpha, alpha))
    return max(lam, 1.0 - lam)


def mixup(x: torch.Tensor, y: torch.Tensor, lam: float, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9: ``x' = lam x + (1 - lam) x[perm]``, ``y' = lam y + (1 - lam) y[perm]``."""
    if x.shape[0] != y.shape[0] or perm.shape[0] != x.shape[0]:
        raise ValueError(f"mixup: x {tuple(x.shape)}, y {tuple(y.shape)} and perm {tuple(perm.shape)} "
                         "must share the batch dimension")
    return x.lerp(x[perm], 1.0 - lam), y.lerp(y[perm], 1.0 - lam)


def interleave_offsets(batch: int, nu: int) -> list[int]:
    groups = [batch // (nu + 1)] * (nu + 1)
    for x in range(batch - sum(groups)):
        groups[-x - 1] += 1
    offsets = [0]
    for g in groups:
        offsets.append(offsets[-1] + g)
    return offsets


def interleave(xy: Sequence[torch.Tensor], batch: int) -> list[torch.Tensor]:
    """MixMatch's interleave: swap slice ``i`` of chunk 0 with slice ``i`` of chunk ``i``.

    Applying it twice restores the input (it is an involution), which is how MixMatch undoes it
    on the logits after the chunked forward passes.
    """
    nu = len(xy) - 1
    offsets = interleave_offsets(batch, nu)
    parts = [[v[offsets[p]:offsets[p + 1]] for p in range(nu + 1)] for v in xy]
    for i in range(1, nu + 1):
        parts[0][i], parts[i][i] = parts[i][i], parts[0][i]
    return [torch.cat(v, dim=0) for v in parts]


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean_i -sum_c t_ic log softmax(z_i)_c`` in float32 (MixMatch's L_x, the paper's L_S)."""
    return -(targets.float() * torch.log_softmax(logits.float(), dim=1)).sum(1).mean()
