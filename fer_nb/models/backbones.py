"""Convolutional backbones from torchvision, with the two knobs the book's scales need.

* ``in_channels``: 1 for grayscale datasets (FER2013, CK+, SynthFACS "lab"), 3 for colour.
* ``width``: a multiplier on every conv's channel count; ``width=1`` is exactly torchvision's
  architecture (tested by parameter count), smaller widths make ``smoke`` runs fast on a CPU.

Each builder returns a :class:`Backbone`: ``forward(images) -> (B, feature_dim)`` features, with
``feature_dim`` as an attribute so heads can be built on top.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import alexnet as tv_alexnet
from torchvision.models import resnet18 as tv_resnet18
from torchvision.models.vgg import cfgs as vgg_cfgs
from torchvision.models.vgg import make_layers


class Backbone(nn.Module):
    """``features`` (conv stack) -> ``pool`` -> flatten; ``feature_dim`` = output width."""

    def __init__(self, features: nn.Module, pool: nn.Module, feature_dim: int, name: str):
        super().__init__()
        self.features = features
        self.pool = pool
        self.feature_dim = feature_dim
        self.name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


def _c(n: int, width: float) -> int:
    return max(4, int(round(n * width)))


def alexnet(in_channels: int = 3, width: float = 1.0, pool_size: int = 6) -> Backbone:
    """torchvision's AlexNet ``features`` (5 convs) + adaptive average pool to ``pool_size``^2.

    At ``width=1``, ``pool_size=6`` this is the 256x6x6 = 9216-d feature map that the
    large-margin and CAF papers' AlexNets put their heads on.
    """
    if width == 1.0 and in_channels == 3:
        feats = tv_alexnet(weights=None).features
    else:
        c = [_c(n, width) for n in (64, 192, 384, 256, 256)]
        feats = nn.Sequential(
            nn.Conv2d(in_channels, c[0], 11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(c[0], c[1], 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c[2], c[3], 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c[3], c[4], 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
    out_c = feats[10].out_channels
    return Backbone(feats, nn.AdaptiveAvgPool2d(pool_size), out_c * pool_size**2, "alexnet")


def vgg16(in_channels: int = 3, width: float = 1.0, batch_norm: bool = False, pool_size: int = 7) -> Backbone:
    """torchvision's VGG16 configuration "D" (13 convs), channels scaled by ``width``."""
    cfg = [v if v == "M" else _c(v, width) for v in vgg_cfgs["D"]]
    feats = make_layers(cfg, batch_norm=batch_norm)
    if in_channels != 3:
        first = feats[0]
        feats[0] = nn.Conv2d(in_channels, first.out_channels, 3, padding=1)
    last_c = [v for v in cfg if v != "M"][-1]
    return Backbone(feats, nn.AdaptiveAvgPool2d(pool_size), last_c * pool_size**2, "vgg16")


def resnet18(in_channels: int = 3, small_input: bool = False) -> Backbone:
    """torchvision's ResNet18 up to global average pooling (512-d).

    ``small_input``: for images of 64 px or less, a 3x3 stride-1 stem without max-pool (the usual
    CIFAR adaptation) instead of 7x7 stride 2 + max-pool.
    """
    net = tv_resnet18(weights=None)
    if small_input:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    feats = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return Backbone(feats, nn.AdaptiveAvgPool2d(1), 512, "resnet18")


BACKBONES = {"alexnet": alexnet, "vgg16": vgg16, "resnet18": resnet18}


def build_backbone(name: str, **kwargs) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; use one of {sorted(BACKBONES)}")
    return BACKBONES[name](**kwargs)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
