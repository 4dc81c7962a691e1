"""The ground floor of every loss: working dtype, input checks, ignored rows and reductions.

Every loss in :mod:`fer_nb.losses` runs the same preamble before its mathematics
(``SomeLoss.forward``: checks, ``torch.autocast(..., enabled=False)``, :func:`working_rows`, then
``SomeLoss.compute`` with the equations only), so the checks, the ``-1`` (unlabelled) convention and the reductions are
defined here once:

* :func:`check_batch` / :func:`check_inputs`: shapes, label dtype and range; errors name the fix.
* :func:`check_indicator`: the strong/weak (``1``/``0``) group labels of the CAF critic losses.
* :func:`working_rows`: the float32 (float64 stays float64) copy of the embeddings with the ignored
  rows replaced by zeros through ``torch.where``, so a NaN/inf in an ignored row reaches neither the
  value nor any gradient (a multiplication by a 0/1 mask would keep ``0 * nan = nan``).
* :func:`reduce` / :func:`reduce_values` and :data:`REDUCTIONS` / :func:`check_reduction`.
"""
from __future__ import annotations

import torch

from fer_nb.losses.device_checks import require

REDUCTIONS = ("mean", "sum", "none")


def working_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else (bf16/fp16 under autocast, float32) becomes float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def working_rows(embeddings: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``embeddings`` in :func:`working_dtype`, rows where ``valid`` is False set to exact zeros.

    ``torch.where`` (not a product with the mask) so that an ignored row holding NaN or inf
    contributes nothing to the loss and receives a zero (finite) gradient.
    """
    x = embeddings.to(working_dtype(embeddings))
    if valid is None:
        return x
    return torch.where(valid.to(x.device)[:, None], x, torch.zeros((), dtype=x.dtype, device=x.device))


def check_reduction(reduction: str, name: str, allowed: tuple[str, ...] = REDUCTIONS) -> str:
    """Return ``reduction`` if it is one of ``allowed``; else a ``ValueError`` listing them."""
    if reduction not in allowed:
        raise ValueError(f"{name}: reduction must be one of {allowed}, got {reduction!r}")
    return reduction


def check_batch(embeddings: torch.Tensor, labels: torch.Tensor, name: str, *, num_classes: int | None = None,
                embedding_dim: int | None = None) -> None:
    """Shape, dtype and range checks of ``(embeddings (B, D), labels (B,))`` (errors name the fix).

    Labels are integer class ids; ``-1`` marks an unlabelled row that the loss ignores. With
    ``num_classes`` the ids must lie in ``[-1, num_classes - 1]``; otherwise only ``>= -1``.
    """
    if embeddings.ndim != 2 or (embedding_dim is not None and embeddings.shape[1] != embedding_dim):
        want = "dim" if embedding_dim is None else embedding_dim
        fix = ("flatten them with embeddings.flatten(1)" if embedding_dim is None else
               f"build the loss with embedding_dim={embeddings.shape[-1] if embeddings.ndim else '?'}")
        raise ValueError(f"{name}: embeddings must be (batch, {want}), got {tuple(embeddings.shape)}; {fix}")
    if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"{name}: labels must be (batch,) = ({embeddings.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name}: labels must be integer class ids (use labels.long()), got {labels.dtype}")
    if not labels.numel():
        return
    in_range = labels >= -1 if num_classes is None else (labels >= -1) & (labels < num_classes)
    span = f"[-1, {num_classes - 1}]" if num_classes is not None else ">= -1"
    require(in_range.all(), f"{name}: labels must lie in {span} (-1 = unlabelled, ignored)",   # no host sync on CUDA
            lambda: f"got min {int(labels.min())}, max {int(labels.max())}")


def check_inputs(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int, embedding_dim: int,
                 name: str) -> None:
    """:func:`check_batch` of the class-centre and class-weight losses (fixed ``C`` and ``D``)."""
    check_batch(embeddings, labels, name, num_classes=num_classes, embedding_dim=embedding_dim)


def check_indicator(labels: torch.Tensor, n: int, name: str) -> torch.Tensor:
    """Validate a ``(n,)`` strong/weak group indicator and return it as a bool tensor.

    Accepted: a bool tensor, or values in ``{0, 1}`` of any real dtype (1 = strong emotion, P;
    0 = weak, Q). Anything else (class ids such as 9, intensities such as 0.4) is rejected: ``.bool()``
    would silently call every nonzero value "strong".
    """
    if labels.shape != (n,):
        raise ValueError(f"{name}: labels must be a ({n},) strong/weak indicator (1 = strong, 0 = weak), "
                         f"got shape {tuple(labels.shape)}")
    if labels.dtype == torch.bool:
        return labels
    if labels.dtype.is_complex:
        raise TypeError(f"{name}: labels must be a bool or 0/1 strong/weak indicator, got {labels.dtype}")
    if labels.numel() and bool(((labels != 0) & (labels != 1)).any()):
        bad = sorted(set(labels[(labels != 0) & (labels != 1)].unique().tolist()))[:5]
        raise ValueError(f"{name}: labels must be a strong/weak indicator with values 0 (weak) or 1 (strong), got "
                         f"{bad} ({labels.dtype}); threshold intensities or map class ids first, e.g. "
                         f"labels = (radius > threshold) (fer_nb.caf_grouping)")
    return labels.bool()


def reduce(per_sample: torch.Tensor, valid: torch.Tensor | None, reduction: str) -> torch.Tensor:
    """``mean`` over the ``valid`` rows (0 when there are none, still differentiable), ``sum``, or ``none``.

    Rows where ``valid`` is False are replaced by 0 with ``torch.where``: their values (even NaN)
    reach neither the result nor the gradient. ``valid=None``: every row counts.
    """
    if valid is not None:
        per_sample = torch.where(valid, per_sample, torch.zeros((), dtype=per_sample.dtype, device=per_sample.device))
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    if valid is None:
        return total / max(per_sample.numel(), 1)
    return total / valid.sum().clamp_min(1).to(per_sample.dtype)


def reduce_values(values: torch.Tensor, reduction: str, anchor: torch.Tensor | None = None) -> torch.Tensor:
    """Mean/sum/none of a 1-D tensor of per-tuple losses; an empty one reduces to an exact 0.

    The empty sum stays connected to the graph of ``values`` (indexing keeps it), so no ``anchor``
    is needed; the argument is accepted for callers written against the old signature.
    """
    return reduce(values, None, reduction)


def reduce_clusters(per: torch.Tensor, keep: torch.Tensor, reduction: str, anchor: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Reduce per-cluster values over the clusters in ``keep``; ``"none"`` returns only those clusters.

    No cluster -> an exact 0 still connected to the graph. (``anchor`` is accepted for old callers.)
    """
    return per[keep] if reduction == "none" else reduce(per, keep, reduction)


__all__ = ["REDUCTIONS", "check_batch", "check_indicator", "check_inputs", "check_reduction",
           "reduce", "reduce_clusters", "reduce_values", "working_dtype", "working_rows"]
