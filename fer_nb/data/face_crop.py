"""Face crop of whole lab frames, and the photometric preprocessing of Liu et al. (Sec. 5.1).

**Crop.** The original CK+ frames (640x490 or 640x480) and MMI frames (720x576) show the head and
shoulders of a seated subject in front of a plain background, with the face roughly in the middle
of the frame. Resizing the whole frame to 48x48 would leave the face about 20 pixels wide. The
book has no face detector (none is installed and the datasets are licensed separately), so
:func:`central_face_box` is a **fixed, documented crop**: a square of side ``fraction x
min(width, height)`` whose centre is at ``(0.5 width, center_y x height)``. The defaults
(``fraction=0.6``, ``center_y=0.5``) keep the whole face (brows to chin) of the CK+ and MMI frames
with a margin; they do not align eyes or remove in-plane rotation (the paper aligns faces with
landmarks and fits a plane; see each chapter's Deviations box). The box is computed from each
image's own size (read from the file header, no decode) and passed to
:func:`fer_nb.data.images.load_images` as ``boxes``, so the crop happens before the resize.

**Photometric preprocessing** (Liu et al.: histogram equalisation, then per-image zero mean and
unit variance in the model input): :func:`equalize` (vectorised histogram equalisation of a uint8
batch) and :func:`to_gray` (ITU-R 601-2 luma of an RGB batch, as PIL's ``L``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image

from fer_nb.data.schema import FaceArrays

Box = tuple[float, float, float, float]


def check_fraction(fraction: float | None, name: str = "face_crop") -> float | None:
    """``None`` (whole frame) or a number in (0, 1]; anything else is an error naming the fix."""
    if fraction is None:
        return None
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"{name} must be None (whole frame) or a fraction in (0, 1] of the frame's shorter "
                         f"side, e.g. 0.6; got {fraction!r}")
    return float(fraction)


def central_face_box(width: int, height: int, fraction: float = 0.6, center_y: float = 0.5) -> Box:
    """``(x, y, w, h)`` of the square crop described in the module docstring (source pixels).

    The square is shifted (not shrunk) to stay inside the frame.
    """
    check_fraction(fraction, "fraction")
    if width < 2 or height < 2:
        raise ValueError(f"image of {width}x{height} pixels is too small to crop")
    side = fraction * min(width, height)
    x = min(max(0.0, 0.5 * width - side / 2), width - side)
    y = min(max(0.0, center_y * height - side / 2), height - side)
    return (x, y, side, side)


def face_boxes(paths: Sequence[str | Path], fraction: float | None, center_y: float = 0.5) -> list[Box] | None:
    """One :func:`central_face_box` per image file (sizes from the headers); ``None`` if ``fraction`` is None."""
    if check_fraction(fraction) is None:
        return None
    boxes = []
    for p in paths:
        with Image.open(p) as img:          # lazy: reads the header only
            boxes.append(central_face_box(img.width, img.height, fraction, center_y))
    return boxes


def equalize(images: torch.Tensor) -> torch.Tensor:
    """Histogram equalisation of each uint8 image ``(N, C, H, W)`` (all planes of an image share
    one histogram), vectorised over the batch; an image of one grey level is left as is."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise TypeError(f"equalize needs uint8 (N, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
    n = images.shape[0]
    if n == 0:
        return images.clone()
    flat = images.reshape(n, -1).long()
    hist = torch.zeros(n, 256, dtype=torch.float64, device=images.device).scatter_add_(
        1, flat, torch.ones_like(flat, dtype=torch.float64))
    cdf = hist.cumsum(1)
    cdf_min = torch.where(hist > 0, cdf, torch.full_like(cdf, float("inf"))).amin(1, keepdim=True)
    denom = flat.shape[1] - cdf_min
    lut = ((cdf - cdf_min) / denom.clamp_min(1) * 255).clamp(0, 255).round()
    lut = torch.where(denom > 0, lut, torch.arange(256, dtype=lut.dtype, device=lut.device)[None, :])
    return lut.gather(1, flat).to(torch.uint8).reshape(images.shape)


def to_gray(ds: FaceArrays) -> FaceArrays:
    """RGB -> one grey plane (0.299 R + 0.587 G + 0.114 B, rounded); grey data is returned as is."""
    if ds.images.shape[1] == 1:
        return ds
    if ds.images.shape[1] != 3:
        raise ValueError(f"{ds.name}: to_gray needs 1 or 3 channels, got {ds.images.shape[1]}")
    w = torch.tensor([0.299, 0.587, 0.114], device=ds.images.device)[None, :, None, None]
    gray = (ds.images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    return FaceArrays(gray, ds.labels, ds.name, ds.class_names, ds.info)


#: datasets whose release holds whole frames (the crop applies); the CK+48 variant is pre-cropped
WHOLE_FRAME_DATASETS = ("ckplus", "mmi")


def crop_for(name: str, root, fraction: float | None) -> float | None:
    """The ``face_crop`` option to pass to dataset ``name``'s loader under data root ``root``:
    ``fraction`` for releases of whole frames (original CK+, MMI), ``None`` otherwise (CK+48,
    still-image datasets whose faces are already cropped)."""
    check_fraction(fraction)
    if name not in WHOLE_FRAME_DATASETS or fraction is None:
        return None
    if name == "ckplus":
        from fer_nb.data.registry import dataset_dir

        return fraction if (dataset_dir(name, root) / "cohn-kanade-images").is_dir() else None
    return fraction
