"""Small helpers shared by the loss modules: the working dtype and input checks."""
from __future__ import annotations

import torch


def working_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else (bf16/fp16 under autocast, float32) becomes float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def check_inputs(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int, embedding_dim: int,
                 name: str) -> None:
    """Shape/type/range checks of the class-centre and class-weight losses (errors name the fix)."""
    if embeddings.ndim != 2 or embeddings.shape[1] != embedding_dim:
        raise ValueError(
            f"{name}: embeddings must be (batch, {embedding_dim}), got {tuple(embeddings.shape)}; "
            f"build the loss with embedding_dim={embeddings.shape[-1] if embeddings.ndim else '?'}"
        )
    if labels.ndim != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"{name}: labels must be (batch,) = ({embeddings.shape[0]},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"{name}: labels must be integer class ids (use labels.long()), got {labels.dtype}")
    if labels.numel() and (bool((labels < -1).any()) or bool((labels >= num_classes).any())):
        raise ValueError(
            f"{name}: labels must lie in [-1, {num_classes - 1}] (-1 = unlabelled, ignored); got "
            f"min {int(labels.min())}, max {int(labels.max())}"
        )


def reduce(per_sample: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """``mean`` over the labelled rows (0 when there are none, still differentiable), ``sum``, or ``none``."""
    per_sample = per_sample * valid.to(per_sample.dtype)
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp_min(1).to(per_sample.dtype)
