"""Learned class centres shared by the centroid losses (center, island, large-margin): options,
initialisation and the moving update of Wen et al. (ECCV 2016, Eq. 4)."""
from __future__ import annotations

import torch
from torch import nn

from fer_nb.losses.common import check_reduction
from fer_nb.losses.device_checks import require

UPDATES = ("moving", "sgd")


def check_centroid_options(reduction: str, update: str, alpha: float, name: str = "centroid loss") -> None:
    """Validate the options shared by the centroid losses (errors name the loss and the valid values)."""
    check_reduction(reduction, name)
    if update not in UPDATES:
        raise ValueError(f"{name}: update must be one of {UPDATES}, got {update!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{name}: alpha (centroid learning rate) must be in [0, 1], got {alpha}")


def init_centroids(module: nn.Module, num_classes: int, embedding_dim: int, update: str) -> None:
    """Give ``module`` its ``(C, D)`` ``centers`` (a parameter for ``update="sgd"``, else a buffer)
    and the ``seen`` buffer of classes that already have a centre from data (the moving update
    initialises a class to its batch mean the first time it appears)."""
    init = torch.randn(num_classes, embedding_dim) * 0.01
    if update == "sgd":
        module.centers = nn.Parameter(init)
    else:
        module.register_buffer("centers", init)
    module.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))


@torch.no_grad()
def moving_centroid_update(centers: torch.Tensor, seen: torch.Tensor, embeddings: torch.Tensor,
                           labels: torch.Tensor, alpha: float, extra_delta: torch.Tensor | None = None,
                           name: str = "moving_centroid_update") -> None:
    """In-place moving update of ``centers`` (Wen et al., Eq. 4) from a batch; vectorised.

    ``delta_j = sum_{i: y_i=j} (c_j - x_i) / (1 + n_j)``; ``c_j -= alpha * (delta_j + extra_delta_j)``.
    Classes not yet ``seen`` are set to their batch mean (Racoviteanu et al., Eq. 1) instead.
    ``extra_delta`` (``(C, D)``) lets the island loss add its inter-centre term (Cai et al.).

    A NaN/inf in a labelled row would poison ``centers`` for the rest of training (every later
    loss would be NaN), so such a batch raises a ``FloatingPointError`` *before* anything is
    changed (on CUDA a device-side assertion, which stops the program at its next synchronisation:
    :mod:`fer_nb.losses.device_checks`); rows labelled ``-1`` are not used and may hold anything.
    """
    # Masks rather than a selection of the labelled rows: a selection's length is data, and reading it
    # would make the host wait for the GPU every step. Unlabelled rows add an exact 0 to class 0's sum.
    valid = labels >= 0
    x = embeddings.detach().to(centers.dtype)
    finite = torch.isfinite(x).all(1) | ~valid
    require(finite.all(), f"{name}: non-finite embeddings in labelled rows",
            lambda: f"rows {(~finite).nonzero().flatten().tolist()[:8]}; the centroid update would poison the "
                    f"centers buffer, so it was skipped and the centres are unchanged. Find the NaN upstream (lower "
                    f"the learning rate, clip gradients, check the inputs) or label those rows -1",
            error=FloatingPointError)
    x = torch.where(valid[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    y = labels.clamp_min(0)
    num_classes = centers.shape[0]
    sums = torch.zeros_like(centers).index_add_(0, y, x)
    counts = torch.zeros(num_classes, dtype=centers.dtype, device=centers.device).index_add_(
        0, y, valid.to(centers.dtype))
    present = counts > 0
    delta = (counts[:, None] * centers - sums) / (1.0 + counts[:, None])
    if extra_delta is not None:
        delta = delta + extra_delta.to(centers.dtype)
    new = centers - alpha * delta
    first = present & ~seen
    batch_mean = sums / counts.clamp_min(1)[:, None]
    new = torch.where(first[:, None], batch_mean, new)
    centers.copy_(new)
    seen |= present


__all__ = ["UPDATES", "check_centroid_options", "init_centroids", "moving_centroid_update"]
