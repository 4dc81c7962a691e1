"""Batched, vectorised image augmentations for float image batches ``(B, C, H, W)``.

Everything runs on the batch's device with one set of tensor ops per batch (no Python loop over
samples), so semi-supervised steps that augment the same unlabelled batch ``K`` times stay cheap on
a GPU. The MixMatch / Margin-Mix "weak" augmentation is a random horizontal flip plus a random
translation by up to ``pad`` pixels (reflect-pad then random crop back to ``H x W``); optional
brightness/contrast jitter and Gaussian noise are the "classical" face augmentations the
Margin-Mix paper lists (Sec. 3.4).

Randomness comes from ``generator`` (a :class:`torch.Generator`, for reproducible draws) or, when
it is ``None``, from torch's global RNG, which :func:`fer_nb.train.fit` checkpoints and restores.
Random numbers are drawn on the generator's device and moved to the batch's device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


def _rand(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gdev).to(device, non_blocking=True)


def _randint(high: int, shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gdev = generator.device if generator is not None else device
    return torch.randint(0, high, shape, generator=generator, device=gdev).to(device, non_blocking=True)


def random_flip(x: torch.Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image left-right with probability ``p`` (one ``torch.where`` over the batch)."""
    flip = _rand((x.shape[0], 1, 1, 1), generator, x.device) < p
    return torch.where(flip, x.flip(-1), x)


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator | None = None,
                mode: str = "reflect") -> torch.Tensor:
    """Pad by ``pad`` pixels and crop back to ``H x W`` at a random offset per sample.

    Vectorised with per-sample offsets: rows ``oy_b + arange(H)`` and columns ``ox_b + arange(W)``
    are gathered from the padded batch with two ``torch.gather`` calls.
    """
    if pad <= 0:
        return x
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad), mode=mode)
    oy = _randint(2 * pad + 1, (b,), generator, x.device)
    ox = _randint(2 * pad + 1, (b,), generator, x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device)[None, :])  # (B, H)
    cols = (ox[:, None] + torch.arange(w, device=x.device)[None, :])  # (B, W)
    xp = xp.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
    return xp.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def color_jitter(x: torch.Tensor, brightness: float = 0.0, contrast: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample brightness shift in ``[-b, b]`` and contrast factor in ``[1-c, 1+c]``; clamped to [0, 1]."""
    if brightness <= 0 and contrast <= 0:
        return x
    b = x.shape[0]
    shape = (b, 1, 1, 1)
    if contrast > 0:
        factor = 1.0 + contrast * (2 * _rand(shape, generator, x.device) - 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor + mean
    if brightness > 0:
        x = x + brightness * (2 * _rand(shape, generator, x.device) - 1)
    return x.clamp(0.0, 1.0)


def gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add ``N(0, std^2)`` pixel noise, clamped to [0, 1]."""
    if std <= 0:
        return x
    gdev = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=gdev).to(x.device, non_blocking=True)
    return (x + std * noise).clamp(0.0, 1.0)


@dataclass(frozen=True)
class Augment:
    """The weak augmentation of MixMatch / Margin-Mix as one callable: ``aug(x, generator=None)``.

    Args:
        flip: random horizontal flip (faces and CIFAR; turn off for SVHN digits).
        pad: translation range in pixels (MixMatch: 4 at 32 px, i.e. 1/8 of the side).
        brightness, contrast: optional jitter amplitudes (0 = off).
        noise_std: optional Gaussian pixel noise (0 = off).
    """

    flip: bool = True
    pad: int = 4
    brightness: float = 0.0
    contrast: float = 0.0
    noise_std: float = 0.0

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim != 4 or not x.dtype.is_floating_point:
            raise TypeError(f"Augment expects a float image batch (B, C, H, W), got {x.dtype} {tuple(x.shape)}; "
                            f"convert uint8 images with x.float() / 255")
        if self.flip:
            x = random_flip(x, generator=generator)
        if self.pad > 0:
            pad = min(self.pad, x.shape[-1] - 1, x.shape[-2] - 1)  # reflect needs pad < size
            x = random_crop(x, pad, generator=generator)
        x = color_jitter(x, self.brightness, self.contrast, generator=generator)
        return gaussian_noise(x, self.noise_std, generator=generator)
