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

Streaming into the dataset cache. Inside :func:`decode_into` (which
:func:`fer_nb.data.cache.cached` wraps around a loader's first decode), the first
:func:`load_images` / :func:`from_array` call of the loader does not allocate ``(N, C, S, S)`` in
RAM: it decodes :data:`CHUNK_BYTES` of rows at a time into a scratch buffer (two of them, so that
one chunk is written while the thread pool decodes the next) and hands each chunk to the sink,
which appends it to the cache file; the call returns the finished rows memory-mapped from that
file. RAM during a :func:`load_images` decode is therefore about ``2 * CHUNK_BYTES`` plus the
path and label lists, whatever ``N`` is (:func:`from_array` also holds its input pixels and one
float32 chunk, 4x its bytes). Outside :func:`decode_into` (``cache=False``, direct calls) the result is one in-RAM
array as before. Either way every pixel comes from the same :func:`_decode_one` (or the same
``from_array`` arithmetic), so the bytes are identical.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Mapping, Protocol, Sequence

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


#: bytes of decoded rows per chunk while streaming into a sink (two chunks are in RAM at a time);
#: a chunk holds at least one row. 32 MiB is ~216 RGB faces at 227 px, enough for the thread pool
#: to stay busy across chunk boundaries, small next to any machine that trains the models.
CHUNK_BYTES = 32 << 20


class _FaceShapeError(ValueError):
    pass


class ImageWriter(Protocol):
    """Receives the rows of one decode in order and returns them, finished, as a tensor."""

    def write(self, rows: np.ndarray) -> None:
        """Append ``rows`` (``uint8 (k, C, S, S)``, C-contiguous) after the rows written so far."""

    def finish(self) -> torch.Tensor:
        """All rows were written: return them as ``uint8 (N, C, S, S)`` (e.g. memory-mapped)."""


class ImageSink(Protocol):
    """Where a decode's rows go instead of a RAM array (see :func:`decode_into`)."""

    def claim(self, shape: tuple[int, int, int, int]) -> ImageWriter | None:
        """A writer for a decode of ``shape``, or ``None`` to have this decode held in RAM."""


_SINK: contextvars.ContextVar[ImageSink | None] = contextvars.ContextVar("fer_nb_image_sink", default=None)


@contextlib.contextmanager
def decode_into(sink: ImageSink) -> Iterator[ImageSink]:
    """Within this block, :func:`load_images` and :func:`from_array` stream their rows to ``sink``.

    Each decode asks ``sink.claim(shape)`` for a writer (a sink may answer ``None``, e.g. for a
    second decode of the same build; that one is held in RAM). The tensor a streamed decode
    returns is the writer's :meth:`ImageWriter.finish`; for the dataset cache it is a
    copy-on-write mapping of the cache file, so a loader must not change it in place (the change
    would stay in this process and never reach the cache).
    """
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)


def _claim(shape: tuple[int, int, int, int]) -> ImageWriter | None:
    sink = _SINK.get()
    return sink.claim(shape) if sink is not None and shape[0] > 0 else None


def chunk_rows(shape: Sequence[int]) -> int:
    """Rows of ``shape`` (``N, C, S, S``) per streamed chunk: :data:`CHUNK_BYTES` worth, at least 1."""
    row_bytes = int(np.prod(shape[1:], dtype=np.int64))
    return max(1, CHUNK_BYTES // max(1, row_bytes))


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
    ``spec.error`` naming the file and the reason (corrupt, truncated, not an image, missing); with
    several bad files, the first in ``paths`` order is reported. Under :func:`decode_into` the rows
    are streamed to the sink chunk by chunk and the sink's tensor is returned (see the module
    docstring); otherwise they are decoded into one array in RAM.
    """
    paths = [Path(p) for p in paths]
    if boxes is not None and len(boxes) != len(paths):
        raise ValueError(f"{len(boxes)} boxes for {len(paths)} images")
    n = len(paths)
    shape = (n, channels, image_size, image_size)
    writer = _claim(shape)
    if writer is None:
        out = np.empty(shape, dtype=np.uint8)
        if not paths:
            return torch.from_numpy(out)
    rows = chunk_rows(shape)
    # streaming: two scratch chunks, one being decoded while the previous one is written
    scratch = ([np.empty((min(rows, n),) + shape[1:], dtype=np.uint8) for _ in range(2)]
               if writer is not None else [])

    def work(i: int, buf: np.ndarray, j: int) -> None:
        path = paths[i]
        try:
            buf[j] = _decode_one(path, image_size, channels, boxes[i] if boxes is not None else None)
        except FileNotFoundError:
            raise spec.error(f"image file listed in the labels is missing: {path}", path) from None
        except _FaceShapeError as exc:
            raise spec.error(f"image {path}: {exc}", path) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise spec.error(f"cannot decode image {path}: {type(exc).__name__}: {exc} "
                             "(corrupt or truncated file? re-extract it from the archive)", path) from None

    def chunks() -> Iterator[tuple[int, int, np.ndarray]]:
        for k, start in enumerate(range(0, n, rows)):
            stop = min(start + rows, n)
            yield start, stop, (out[start:stop] if writer is None else scratch[k % 2][:stop - start])

    def done(buf: np.ndarray) -> None:
        if writer is not None:
            writer.write(buf)

    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    if n_workers <= 1 or n < 64:
        for start, stop, buf in chunks():
            for i in range(start, stop):
                work(i, buf, i - start)
            done(buf)
    else:
        # at most two chunks in flight: the oldest is checked (first failure in path order) and
        # written while the workers decode the newer one, so no worker waits at a chunk boundary
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            pending: deque[tuple[np.ndarray, list[Future]]] = deque()

            def finish_oldest() -> None:
                buf, futures = pending.popleft()
                for f in futures:
                    f.result()  # re-raises the first failure of the chunk
                done(buf)

            try:
                for start, stop, buf in chunks():
                    if len(pending) == 2:
                        finish_oldest()  # frees the scratch buffer this chunk reuses
                    pending.append((buf, [pool.submit(work, i, buf, i - start) for i in range(start, stop)]))
                while pending:
                    finish_oldest()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    return torch.from_numpy(out) if writer is None else writer.finish()


def from_array(pixels: np.ndarray | torch.Tensor, *, image_size: int, channels: int,
               layout: str = "NHW") -> torch.Tensor:
    """Pixels in memory (``layout`` one of ``NHW``, ``NHWC``, ``NCHW``; uint8) -> ``(N, C, S, S)``.

    Grayscale uses PIL's ``L`` weights (0.299, 0.587, 0.114); gray -> RGB repeats the channel;
    resizing is bilinear with antialiasing (vectorised, in chunks of at most 4096 rows and
    :data:`CHUNK_BYTES` of output to bound memory; each row is computed on its own, so the chunk
    size does not change a byte). Under :func:`decode_into` converted rows are streamed to the
    sink; pixels that need no conversion are returned as they are (they are in RAM already).
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
    shape = (n, channels, image_size, image_size)
    writer = _claim(shape)
    out = torch.empty(shape, dtype=torch.uint8) if writer is None else None
    step = min(4096, chunk_rows(shape))
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    for start in range(0, n, step):
        chunk = x[start:start + step].float()
        if c == 3 and channels == 1:
            chunk = (chunk * weights).sum(1, keepdim=True)
        elif c == 1 and channels == 3:
            chunk = chunk.repeat(1, 3, 1, 1)  # not expand(): round_() below writes in place
        if (h, w) != (image_size, image_size):
            chunk = F.interpolate(chunk, size=(image_size, image_size), mode="bilinear",
                                  align_corners=False, antialias=True)
        result = chunk.round_().clamp_(0, 255).to(torch.uint8)
        if writer is None:
            out[start:start + step] = result
        else:
            writer.write(result.numpy())
    return out if writer is None else writer.finish()


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
