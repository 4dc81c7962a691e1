"""Inception-style FER network with PReLU and the two-branch FC head of Liu et al. (Sec. 4, Fig. 4).

**Convolutional groups** follow Mollahosseini et al. (WACV 2016), which Liu et al. build on, for a
``48 x 48`` grayscale input: ``conv 7x7/2 (64) -> maxpool 3/2 -> conv 1x1 (64) -> conv 3x3 (192)
-> maxpool 3/2 -> inception 3a (256) -> inception 3b (480) -> maxpool 3/2 -> inception 4a (512)
-> global average pool``. Every activation is a PReLU (Liu et al. replace ReLU by PReLU).
``width`` scales every channel count (``width=0.125`` for smoke runs); ``batch_norm`` adds
BatchNorm after each convolution (not in the 2016/2017 Caffe nets; it makes short CPU runs train).

**Heads** (``branches``):

* ``branches=2`` (2B): an expression-classification (EC) branch ``FC1 -> FC2 -> softmax layer`` and
  a metric-learning (ML) branch ``FC3 -> connecting layer -> FC5``. The connecting layer (Eq. 13)
  maps the concatenation of ``FC2`` and ``FC3`` (both ``hidden``-d) to ``FC4`` (``embedding_dim``):

  .. math::  FC_4 = P^\\top [FC_2; FC_3] = P_1^\\top FC_2 + P_2^\\top FC_3 ,

  so the ML branch sees the EC branch's features. The embedding for the metric loss is ``FC5``.
* ``branches=1`` (1B): only the EC branch; the metric loss acts on ``FC2`` "after the EC branch".

At test time only the convolutional groups and the EC branch are used (``forward`` still returns
the embedding, which the notebook uses for identity-leakage probes).
"""
from __future__ import annotations

import torch
from torch import nn


def _ch(n: int, width: float) -> int:
    return max(4, int(round(n * width)))


def conv_block(cin: int, cout: int, k: int, stride: int = 1, batch_norm: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.PReLU(cout))
    return nn.Sequential(*layers)


class Inception(nn.Module):
    """GoogLeNet inception module: 1x1 | 1x1->3x3 | 1x1->5x5 | maxpool->1x1, concatenated."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int, batch_norm: bool = True):
        super().__init__()
        self.b1 = conv_block(cin, c1, 1, batch_norm=batch_norm)
        self.b3 = nn.Sequential(conv_block(cin, c3r, 1, batch_norm=batch_norm), conv_block(c3r, c3, 3, batch_norm=batch_norm))
        self.b5 = nn.Sequential(conv_block(cin, c5r, 1, batch_norm=batch_norm), conv_block(c5r, c5, 5, batch_norm=batch_norm))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_block(cin, cp, 1, batch_norm=batch_norm))
        self.out_channels = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


class ConnectingLayer(nn.Module):
    """Eq. 13: ``FC4 = P^T [FC2; FC3] = P1^T FC2 + P2^T FC3`` (one linear map of the concatenation)."""

    def __init__(self, d_input: int, d_output: int):
        super().__init__()
        self.P = nn.Linear(2 * d_input, d_output)

    def forward(self, fc2: torch.Tensor, fc3: torch.Tensor) -> torch.Tensor:
        return self.P(torch.cat([fc2, fc3], 1))

    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P1, P2)`` as ``D_input x D_output`` matrices (for the Eq. 13 check)."""
        d = self.P.in_features // 2
        return self.P.weight[:, :d].T, self.P.weight[:, d:].T


class InceptionFER(nn.Module):
    """Inception FER network with one (1B) or two (2B) FC branches.

    Args:
        num_classes: expression classes of the softmax layer.
        in_channels: 1 (grayscale, as in the paper).
        width: channel multiplier of the convolutional groups.
        hidden: ``D_input``, size of FC1/FC2/FC3.
        embedding_dim: ``D_output`` of the connecting layer and size of the ML embedding (2B).
        branches: 1 or 2.
        batch_norm: BatchNorm after each convolution.

    ``forward(x)`` returns ``{"logits": (B, K), "embedding": (B, E), "features": FC2 (B, hidden)}``.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: float = 1.0, hidden: int = 512,
                 embedding_dim: int = 128, branches: int = 2, batch_norm: bool = True):
        super().__init__()
        if branches not in (1, 2):
            raise ValueError(f"InceptionFER: branches must be 1 (1B) or 2 (2B), got {branches!r}")
        w = width
        self.branches = branches
        c = lambda n: _ch(n, w)  # noqa: E731
        self.stem = nn.Sequential(
            conv_block(in_channels, c(64), 7, 2, batch_norm), nn.MaxPool2d(3, 2, 1),
            conv_block(c(64), c(64), 1, batch_norm=batch_norm), conv_block(c(64), c(192), 3, batch_norm=batch_norm),
            nn.MaxPool2d(3, 2, 1),
        )
        i3a = Inception(c(192), c(64), c(96), c(128), c(16), c(32), c(32), batch_norm)
        i3b = Inception(i3a.out_channels, c(128), c(128), c(192), c(32), c(96), c(64), batch_norm)
        i4a = Inception(i3b.out_channels, c(192), c(96), c(208), c(16), c(48), c(64), batch_norm)
        self.features = nn.Sequential(i3a, i3b, nn.MaxPool2d(3, 2, 1), i4a, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        feat = i4a.out_channels
        # EC branch
        self.fc1 = nn.Sequential(nn.Linear(feat, hidden), nn.PReLU(hidden))
        self.fc2 = nn.Sequential(nn.Linear(hidden, hidden), nn.PReLU(hidden))
        self.classifier = nn.Linear(hidden, num_classes)
        # ML branch (2B only)
        self.embedding_dim = embedding_dim if branches == 2 else hidden
        if branches == 2:
            self.fc3 = nn.Sequential(nn.Linear(feat, hidden), nn.PReLU(hidden))
            self.connect = ConnectingLayer(hidden, embedding_dim)
            self.act4 = nn.PReLU(embedding_dim)
            self.fc5 = nn.Linear(embedding_dim, embedding_dim)

    def trunk_parameters(self):
        """Parameters of the convolutional groups and the EC branch (pre-trained with softmax)."""
        for mod in (self.stem, self.features, self.fc1, self.fc2, self.classifier):
            yield from mod.parameters()

    def reset_classifier(self, num_classes: int) -> None:
        """New softmax layer for another label set (fine-tuning after pre-training)."""
        self.classifier = nn.Linear(self.classifier.in_features, num_classes).to(self.classifier.weight.device)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(self.stem(x))
        fc2 = self.fc2(self.fc1(h))
        out = {"logits": self.classifier(fc2), "features": fc2}
        if self.branches == 2:
            fc3 = self.fc3(h)
            out["embedding"] = self.fc5(self.act4(self.connect(fc2, fc3)))
        else:
            out["embedding"] = fc2
        return out
