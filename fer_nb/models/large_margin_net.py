"""AlexNet with an embedding layer, an expression head and an AU head (Racoviteanu et al., Fig. 1).

``images -> AlexNet features (fer_nb.models.backbones.alexnet) -> dropout -> FC(hidden) -> ReLU ->
dropout -> FC(embedding_dim) = embedding x``; the large-margin / center / island losses act on
``x`` (the "relevant embedding taken from a lower layer"), the decision heads act on ``ReLU(x)``:

* ``logits``: expressions (cross-entropy, Table 1);
* ``aus``: AU intensities (linear outputs, MSE against labelled AUs; ``> 0.5`` = AU present for
  the F1 of Table 2). The pseudo-emotion transition (Eq. 6) reads these outputs.

At ``width=1, pool_size=6, hidden=embedding_dim=4096`` this is AlexNet's fc6/fc7 with the
embedding being fc7 (the paper trains AlexNet from scratch at 227x227; smaller widths and inputs
make the book's ``smoke``/``small`` scales CPU-friendly).

``plane_norm=True`` standardises every colour plane of every image to zero mean and unit variance
before the network (the paper's "color normalization was applied on each plane", Sec. 4.2).
"""
from __future__ import annotations

import torch
from torch import nn

from fer_nb.models.backbones import alexnet


class LargeMarginNet(nn.Module):
    """``forward(images) -> {"embedding": (B, D), "logits": (B, C), "aus": (B, A)}``."""

    def __init__(self, in_channels: int = 3, width: float = 1.0, *, num_classes: int = 7, num_aus: int = 12,
                 hidden: int = 4096, embedding_dim: int = 4096, dropout: float = 0.5, pool_size: int = 6,
                 plane_norm: bool = True):
        super().__init__()
        self.plane_norm = plane_norm
        if num_classes < 1 and num_aus < 1:
            raise ValueError("LargeMarginNet needs an expression head (num_classes >= 1) or an AU head (num_aus >= 1)")
        self.backbone = alexnet(in_channels, width, pool_size=pool_size)
        self.embed = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(self.backbone.feature_dim, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, embedding_dim),
        )
        self.embedding_dim = embedding_dim
        self.expression_head = nn.Linear(embedding_dim, num_classes) if num_classes > 0 else None
        self.au_head = nn.Linear(embedding_dim, num_aus) if num_aus > 0 else None

    @staticmethod
    def normalise_planes(images: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
        """Per image and per colour plane: subtract the mean, divide by the std (floored at ``eps``)."""
        mean = images.mean(dim=(2, 3), keepdim=True)
        std = images.std(dim=(2, 3), keepdim=True).clamp_min(eps)
        return (images - mean) / std

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.plane_norm:
            images = self.normalise_planes(images)
        x = self.embed(self.backbone(images))
        h = torch.relu(x)
        out = {"embedding": x}
        if self.expression_head is not None:
            out["logits"] = self.expression_head(h)
        if self.au_head is not None:
            out["aus"] = self.au_head(h)
        return out
