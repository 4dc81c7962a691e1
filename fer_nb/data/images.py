"""Decode image files (or raw pixel arrays) once into ``uint8 (N, C, H, W)`` tensors.

* :func:`load_images` decodes a list of files in a thread pool (PIL releases the GIL while it
  decodes), optionally crops a box per image, converts to grayscale (``L``, ITU-R 601-2 luma) or
  RGB, and resizes to a square ``image_size`` (bilinear with antialiasing). A face under
  :data:`MIN_SIDE` pixels a side or more than :data:`MAX_ASPECT`:1 from square is an error, not
  silently resized. An unreadable,
  truncated or non-image file raises the dataset's :class:`~fer_nb.data.errors.DatasetError`
  naming the file.
* :func:`from_array` does the same for pixels already in memory (FER2013's CSV, torchvision
  benchmarks), vectorised in torch.
* :func:`list_images` and :func:`class_folders` list files of a folder / a class-folder split.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from fer_nb.data.errors import DatasetSpec

#: File suffixes treated as images (lower case).
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".webp")

Box = tuple[float, float, float, float]  # x, y, width, height in source pixels

#: smallest face (after the optional crop) accepted, in pixels per side: a 1x1 or 3x3 "face" is a
#: thumbnail or a broken file, and resizing it would silently turn it into a flat square
MIN_SIDE = 8
#: largest accepted width/height ratio (either way) of a face (after the optional crop); a 3x3000
#: strip resized to a square is no face
MAX_ASPECT = 4.0


class _FaceShapeError(ValueError):
    pass


def _decode_one(path: Path, size: int, channels: int, box: Box | None) -> np.ndarray:
    with Image.open(path) as img:
        img.load()  # forces the full decode: truncated files fail here, not later
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / float TIFFs: rescale
            arr = np.asarray(img, dtype=np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
            img = Image.fromarray(arr.round().astype(np.uint8))  # 2-D uint8 -> mode L
        img = img.convert("L" if channels == 1 else "RGB")
        if box is not None:
            x, y, w, h = box
            left, top = max(0, int(round(x))), max(0, int(round(y)))
            right, bottom = min(img.width, int(round(x + w))), min(img.height, int(round(y + h)))
            if right - left < 2 or bottom - top < 2:
                raise ValueError(f"face box {box} lies outside the {img.width}x{img.height} image")
            img = img.crop((left, top, right, bottom))
        w, h = img.size
        if min(w, h) < MIN_SIDE:
            raise _FaceShapeError(f"the face is only {w}x{h} pixels (at least {MIN_SIDE}x{MIN_SIDE} needed); "
                             "a thumbnail or a broken export? replace the file")
        if max(w, h) > MAX_ASPECT * min(w, h):
            raise _FaceShapeError(f"the face is {w}x{h} pixels, more than {MAX_ASPECT:g}:1 from square; resizing it "
                             "to a square would distort it beyond recognition: crop the face (or fix the box)")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_images(
    paths: Sequence[str | os.PathLike],
    *,
    image_size: int,
    channels: int,
    spec: DatasetSpec,
    boxes: Sequence[Box | None] | None = None,
    workers: int | None = None,
) -> torch.Tensor:
    """Decode ``paths`` into ``uint8 (N, channels, image_size, image_size)``.

    ``boxes`` (optional, one per path) crops ``(x, y, w, h)`` before resizing. Any failure raises
    ``spec.error`` naming the file and the reason (corrupt, truncated, not an image, missing).
    """
    paths = [Path(p) for p in paths]
    if boxes is not None and len(boxes) != len(paths):
        raise ValueError(f"{len(boxes)} boxes for {len(paths)} images")
    out = np.empty((len(paths), channels, image_size, image_size), dtype=np.uint8)
    if not paths:
        return torch.from_numpy(out)

    def work(i: int) -> None:
        path = paths[i]
        try:
            out[i] = _decode_one(path, image_size, channels, boxes[i] if boxes is not None else None)
        except FileNotFoundError:
            raise spec.error(f"image file listed in the labels is missing: {path}", path) from None
        except _FaceShapeError as exc:
            raise spec.error(f"image {path}: {exc}", path) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise spec.error(f"cannot decode image {path}: {type(exc).__name__}: {exc} "
                             "(corrupt or truncated file? re-extract it from the archive)", path) from None

    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    if n_workers <= 1 or len(paths) < 64:
        for i in range(len(paths)):
            work(i)
    else:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            for _ in pool.map(work, range(len(paths))):  # re-raises the first failure
                pass
    return torch.from_numpy(out)


def from_array(pixels: np.ndarray | torch.Tensor, *, image_size: int, channels: int,
               layout: str = "NHW") -> torch.Tensor:
    """Pixels in memory (``layout`` one of ``NHW``, ``NHWC``, ``NCHW``; uint8) -> ``(N, C, S, S)``.

    Grayscale uses PIL's ``L`` weights (0.299, 0.587, 0.114); gray -> RGB repeats the channel;
    resizing is bilinear with antialiasing (vectorised, in chunks to bound memory).
    """
    x = torch.as_tensor(np.ascontiguousarray(pixels) if isinstance(pixels, np.ndarray) else pixels)
    if x.dtype != torch.uint8:
        raise TypeError(f"pixels must be uint8, got {x.dtype}")
    if layout == "NHW":
        x = x[:, None]
    elif layout == "NHWC":
        x = x.permute(0, 3, 1, 2)
    elif layout != "NCHW":
        raise ValueError(f"layout must be NHW, NHWC or NCHW, got {layout!r}")
    n, c, h, w = x.shape
    if c not in (1, 3):
        raise ValueError(f"pixels have {c} channels; expected 1 or 3")
    if c == channels and (h, w) == (image_size, image_size):
        return x.contiguous()
    out = torch.empty((n, channels, image_size, image_size), dtype=torch.uint8)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    for start in range(0, n, 4096):
        chunk = x[start:start + 4096].float()
        if c == 3 and channels == 1:
            chunk = (chunk * weights).sum(1, keepdim=True)
        elif c == 1 and channels == 3:
            chunk = chunk.expand(-1, 3, -1, -1)
        if (h, w) != (image_size, image_size):
            chunk = F.interpolate(chunk, size=(image_size, image_size), mode="bilinear",
                                  align_corners=False, antialias=True)
        out[start:start + 4096] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (sorted by name, hidden files skipped)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))


def class_folders(spec: DatasetSpec, split_dir: Path, aliases: Mapping[str, int],
                  ) -> tuple[list[Path], list[int]]:
    """Files of ``split_dir/<class>/*`` with canonical labels from ``aliases`` (folder name, lower
    case -> index of :data:`~fer_nb.data.schema.EXPRESSIONS`). Unknown class folders and empty
    splits raise ``spec.error``."""
    spec.dir(split_dir, f"'{split_dir.name}/' with one sub-folder per class")
    paths: list[Path] = []
    labels: list[int] = []
    folders = sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise spec.error(f"{split_dir} holds no class folders", split_dir)
    for folder in folders:
        key = folder.name.lower()
        if key not in aliases:
            raise spec.error(f"unknown class folder {folder.name!r} in {split_dir}; expected folders "
                             f"named {sorted(set(aliases))}", folder)
        files = list_images(folder)
        paths += files
        labels += [aliases[key]] * len(files)
    if not paths:
        raise spec.error(f"no image files in the class folders of {split_dir}", split_dir)
    return paths, labels


def still_labels(n: int, expression: Sequence[int] | torch.Tensor, *, subject=None,
                 domain: int = 1) -> dict[str, torch.Tensor]:
    """Label dict of a still-image dataset: expression, subject (-1 unknown), domain, sequence -1, frame 0."""
    return {
        "expression": torch.as_tensor(expression, dtype=torch.int64).reshape(n),
        "subject": (torch.full((n,), -1, dtype=torch.int64) if subject is None
                    else torch.as_tensor(subject, dtype=torch.int64).reshape(n)),
        "domain": torch.full((n,), int(domain), dtype=torch.int64),
        "sequence": torch.full((n,), -1, dtype=torch.int64),
        "frame": torch.zeros(n, dtype=torch.int64),
    }
