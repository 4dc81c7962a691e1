"""Networks of CAF (Kim & Song 2021): encoder f_e, AV regressor f_r and critic f_c.

From the official code (see REFERENCE_FACTS.md): the encoder is AlexNet's ``features`` + average
pooling to 256x6x6 = 9216 (trained from scratch); the "AlexNet (tuned)" regressor is
``Dropout .5 -> 9216->64 -> ReLU -> Dropout .5 -> 64->8 -> ReLU -> 8->2`` with no output squashing;
the critic is ``9216->64 -> 32 -> Dropout .2 -> ReLU -> 16`` (a 16-d linear output z). At ``width=1``,
224 px, RGB: encoder + regressor 3,060,122 parameters, + critic 3,652,618 (the paper's 3.0M / 3.6M).
The ResNet18 encoder is torchvision's (512-d after global pooling) with the same heads on top.
``width`` and ``pool_size`` shrink the AlexNet for ``smoke``/``small`` runs on a CPU.
"""
from __future__ import annotations

import torch
from torch import nn

from fer_nb.models.backbones import Backbone, alexnet, resnet18

ENCODERS = ("alexnet", "resnet18")


class Regressor(nn.Module):
    """AlexNet (tuned) head: feature -> 64 -> 8 -> 2 (valence, arousal), dropout 0.5 twice."""

    def __init__(self, in_dim: int, hidden: tuple[int, int] = (64, 8), dropout: float = 0.5):
        super().__init__()
        h1, h2 = hidden
        self.net = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(in_dim, h1), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(h1, h2), nn.ReLU(inplace=True), nn.Linear(h2, 2),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class Critic(nn.Module):
    """Critic f_c: feature -> 64 -> 32 -> Dropout .2 -> ReLU -> 16 (linear output z)."""

    def __init__(self, in_dim: int, hidden: tuple[int, int] = (64, 32), out_dim: int = 16, dropout: float = 0.2):
        super().__init__()
        h1, h2 = hidden
        self.net = nn.Sequential(
            nn.Linear(in_dim, h1), nn.Linear(h1, h2), nn.Dropout(dropout), nn.ReLU(inplace=True),
            nn.Linear(h2, out_dim),
        )
        self.out_dim = out_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def build_encoder(name: str = "alexnet", in_channels: int = 3, width: float = 1.0, pool_size: int = 6,
                  small_input: bool = False) -> Backbone:
    """f_e: ``alexnet`` (``fer_nb.models.backbones.alexnet``) or ``resnet18`` (torchvision)."""
    if name == "alexnet":
        return alexnet(in_channels=in_channels, width=width, pool_size=pool_size)
    if name == "resnet18":
        return resnet18(in_channels=in_channels, small_input=small_input)
    raise ValueError(f"unknown CAF encoder {name!r}; use one of {ENCODERS}")


class CAFNet(nn.Module):
    """Encoder + regressor (+ critic when ``with_critic``); ``forward(x) -> (B, 2)`` AV predictions."""

    def __init__(self, encoder: str = "alexnet", in_channels: int = 3, width: float = 1.0, pool_size: int = 6,
                 small_input: bool = False, with_critic: bool = True, critic_dim: int = 16):
        super().__init__()
        self.encoder = build_encoder(encoder, in_channels, width, pool_size, small_input)
        self.regressor = Regressor(self.encoder.feature_dim)
        self.critic = Critic(self.encoder.feature_dim, out_dim=critic_dim) if with_critic else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.regressor(self.encoder(x))

    def critic_out(self, x: torch.Tensor) -> torch.Tensor:
        if self.critic is None:
            raise RuntimeError("this CAFNet has no critic; build it with with_critic=True")
        return self.critic(self.encoder(x))
