"""Wide ResNet in the MixMatch configuration (WRN-28-2; Zagoruyko & Komodakis; Berthelot et al.).

This is the network Margin-Mix (Florea et al., Sec. 3.7) and MixMatch use "for fair comparison":

* stem: 3x3 conv to 16 channels; three stages of ``n = (depth - 4) / 6`` pre-activation basic
  blocks with ``16k, 32k, 64k`` channels (``k = widen_factor``; WRN-28-2: 4 blocks per stage,
  widths 16/32/64/128), strides 1, 2, 2;
* BatchNorm with ``momentum=0.001`` (the reference value; it assumes ~1M-step runs, see
  :func:`fer_nb.ssl.bn.recalibrate_bn` and the ``bn_momentum`` knob for short runs), LeakyReLU 0.1;
* ``activate_before_residual`` only in the first block of the first stage (the shortcut then takes
  the activated input, as in the MixMatch TF/PyTorch code);
* final BN + LeakyReLU, global average pool (8x8 at 32 px), linear classifier.

At ``depth=28, widen_factor=2, num_classes=10`` this has 1,467,610 parameters (~1.47M, tested).
The embedding of Margin-Mix is the pooled, flattened ``64k``-d vector before the classifier
("the last layer before the decision one, but after flattening", Sec. 3).

One difference to YU1ut's PyTorch port: there, a block whose width changes (and that does not
activate before the residual) feeds the *raw* input to its first conv, so that block's first BN
is unused. Here the first conv always sees ``LeakyReLU(BN(x))`` as in the original TF MixMatch
``residual`` function. The parameter count is identical.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    """Pre-activation basic block: BN-LReLU-conv3x3-BN-LReLU-conv3x3 + (1x1-conv) shortcut."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, bn_momentum: float,
                 activate_before_residual: bool = False, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=bn_momentum)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes, momentum=bn_momentum)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes and stride == 1
        self.shortcut = None if self.equal_in_out else nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
        self.activate_before_residual = activate_before_residual
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = F.leaky_relu(self.bn1(x), 0.1)
        residual_in = act if self.activate_before_residual else x
        out = self.conv1(act)
        out = F.leaky_relu(self.bn2(out), 0.1)
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        shortcut = residual_in if self.shortcut is None else self.shortcut(residual_in)
        return shortcut + out


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` (MixMatch configuration); see the module docstring.

    Args:
        num_classes: classifier outputs.
        depth: ``6n + 4`` (28 -> 4 blocks per stage; 10 -> 1 block per stage for smoke runs).
        widen_factor: ``k``; stage widths ``16k, 32k, 64k``.
        in_channels: 3 (colour) or 1 (grayscale FER data).
        bn_momentum: BatchNorm momentum (MixMatch: 0.001; use ~0.01-0.1 for short runs).
        drop_rate: dropout inside blocks (0 in MixMatch).

    ``forward(x) -> logits``; ``forward(x, with_embedding=True) -> (logits, embedding)``;
    ``embed(x) -> embedding`` (``(B, 64k)``); ``embedding_dim`` attribute.
    """

    def __init__(self, num_classes: int, depth: int = 28, widen_factor: int = 2, in_channels: int = 3,
                 bn_momentum: float = 0.001, drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, ...), got {depth}")
        if widen_factor < 1 or num_classes < 1 or in_channels < 1:
            raise ValueError(f"widen_factor, num_classes, in_channels must be >= 1, got "
                             f"{widen_factor}, {num_classes}, {in_channels}")
        if not 0.0 < bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1], got {bn_momentum}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        stages = []
        for s, stride in enumerate((1, 2, 2)):
            blocks = [BasicBlock(widths[s] if b == 0 else widths[s + 1], widths[s + 1], stride if b == 0 else 1,
                                 bn_momentum, activate_before_residual=(s == 0 and b == 0), drop_rate=drop_rate)
                      for b in range(n)]
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(widths[3], momentum=bn_momentum)
        self.fc = nn.Linear(widths[3], num_classes)
        self.embedding_dim = widths[3]
        self.num_classes = num_classes
        self.depth, self.widen_factor = depth, widen_factor
        for m in self.modules():  # initialisation of the MixMatch code
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled, flattened features before the classifier: ``(B, 64k)``."""
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.leaky_relu(self.bn(out), 0.1)
        return F.adaptive_avg_pool2d(out, 1).flatten(1)  # = avgpool(8) at 32 px input

    def forward(self, x: torch.Tensor, with_embedding: bool = False):
        e = self.embed(x)
        logits = self.fc(e)
        return (logits, e) if with_embedding else logits


def wrn28_2(num_classes: int, in_channels: int = 3, bn_momentum: float = 0.001) -> WideResNet:
    """WRN-28-2 exactly as in MixMatch (1.47M parameters at 10 classes)."""
    return WideResNet(num_classes, depth=28, widen_factor=2, in_channels=in_channels, bn_momentum=bn_momentum)
