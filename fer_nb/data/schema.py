"""The one sample schema every dataset in the book yields.

Every loader (SynthFACS and each real dataset) returns a :class:`FaceArrays`: images decoded
once into a ``uint8`` tensor ``(N, C, H, W)`` plus whichever label tensors the dataset has.
Label names and dtypes are fixed here so that notebooks never care where data came from:

=============  =====================  ==========================================================
key            dtype / shape          meaning
=============  =====================  ==========================================================
``expression`` int64 ``(N,)``         index into :data:`EXPRESSIONS`; ``-1`` = unlabelled
``aus``        float32 ``(N, A)``     AU intensities in [0, 1] (binary occurrence for real data),
                                      columns in the order of :data:`AUS`
``aus_mask``   bool ``(N, A)``        ``True`` where the AU is annotated
``va``         float32 ``(N, 2)``     (valence, arousal) in [-1, 1]
``subject``    int64 ``(N,)``         subject / identity id (``-1`` unknown)
``domain``     int64 ``(N,)``         domain id (SynthFACS: 0 = lab, 1 = wild)
``sequence``   int64 ``(N,)``         clip / sequence id (``-1`` for still images)
``frame``      int64 ``(N,)``         frame index inside its sequence
=============  =====================  ==========================================================
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping

import torch

#: Canonical expression order of the whole book (FER+ / RAF-DB style, neutral first).
EXPRESSIONS: tuple[str, ...] = (
    "neutral", "anger", "disgust", "fear", "happiness", "sadness", "surprise", "contempt",
)
#: Canonical action-unit columns (FACS numbers).
AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 12, 14, 15, 16, 17, 20, 23, 25, 26, 43)
#: Label keys a dataset may carry, with their dtypes.
LABEL_DTYPES: Mapping[str, torch.dtype] = {
    "expression": torch.int64,
    "aus": torch.float32,
    "aus_mask": torch.bool,
    "va": torch.float32,
    "subject": torch.int64,
    "domain": torch.int64,
    "sequence": torch.int64,
    "frame": torch.int64,
}


def au_index(au: int) -> int:
    """Column of FACS action unit ``au`` in the ``aus`` tensor."""
    try:
        return AUS.index(int(au))
    except ValueError:
        raise ValueError(f"AU{au} is not one of the book's AU columns {AUS}") from None


@dataclass
class FaceArrays(torch.utils.data.Dataset):
    """Decoded images + labels, in memory, in the shared schema.

    ``images`` is ``uint8 (N, C, H, W)``; ``labels`` maps keys of :data:`LABEL_DTYPES` to tensors
    whose first dimension is ``N``. ``class_names`` are the expression names of this dataset in
    canonical order (a dataset without contempt has 7). Indexing gives one sample dict with the
    image as float in [0, 1]; :meth:`batches` gives whole batches, optionally on a GPU.
    """

    images: torch.Tensor
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    name: str = "unnamed"
    class_names: tuple[str, ...] = EXPRESSIONS[:7]
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise TypeError(
                f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        n = self.images.shape[0]
        for key, value in self.labels.items():
            if key not in LABEL_DTYPES:
                raise KeyError(f"{self.name}: unknown label key {key!r}; known: {list(LABEL_DTYPES)}")
            if value.shape[0] != n:
                raise ValueError(f"{self.name}: label {key!r} has {value.shape[0]} rows, images {n}")
            if value.dtype != LABEL_DTYPES[key]:
                self.labels[key] = value.to(LABEL_DTYPES[key])
        if "expression" in self.labels:
            y = self.labels["expression"]
            bad = (y < -1) | (y >= len(self.class_names))
            if bool(bad.any()):
                raise ValueError(
                    f"{self.name}: expression labels out of range [-1, {len(self.class_names) - 1}]: "
                    f"{sorted(set(y[bad].tolist()))[:5]}"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = {"image": self.images[index].float().div_(255.0)}
        sample.update({k: v[index] for k, v in self.labels.items()})
        return sample

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def subset(self, index: torch.Tensor | list[int], name: str | None = None) -> "FaceArrays":
        """Rows ``index`` as a new :class:`FaceArrays` (tensors are indexed, not copied lazily)."""
        idx = torch.as_tensor(index, dtype=torch.long, device=self.images.device)
        return FaceArrays(
            self.images[idx], {k: v[idx] for k, v in self.labels.items()},
            name or self.name, self.class_names, dict(self.info),
        )

    def to(self, device: torch.device | str) -> "FaceArrays":
        return FaceArrays(
            self.images.to(device), {k: v.to(device) for k, v in self.labels.items()},
            self.name, self.class_names, dict(self.info),
        )

    def counts(self) -> dict[str, int]:
        """Images per expression class (unlabelled counted as ``unlabelled``)."""
        if "expression" not in self.labels:
            return {"unlabelled": len(self)}
        y = self.labels["expression"]
        out = {c: int((y == i).sum()) for i, c in enumerate(self.class_names)}
        if bool((y < 0).any()):
            out["unlabelled"] = int((y < 0).sum())
        return out

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        drop_last: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Yield batch dicts (``image`` float in [0, 1]) without per-sample Python work.

        Images are moved as uint8 and converted on ``device``, so the host->device copy is 4x
        smaller than float. Pass a seeded ``generator`` for a reproducible order.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        device = torch.device(device) if device is not None else self.images.device
        stop = n - (n % batch_size) if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size].to(self.images.device)
            batch = {"image": self.images[idx].to(device, non_blocking=True).float().div_(255.0)}
            for key, value in self.labels.items():
                batch[key] = value[idx].to(device, non_blocking=True)
            yield batch


def concat(parts: list[FaceArrays], name: str | None = None) -> FaceArrays:
    """Concatenate datasets with the same label keys and image shape."""
    if not parts:
        raise ValueError("concat() needs at least one FaceArrays")
    keys = set(parts[0].labels)
    for p in parts[1:]:
        if set(p.labels) != keys:
            raise ValueError(f"cannot concat {p.name}: label keys {sorted(p.labels)} != {sorted(keys)}")
        if p.images.shape[1:] != parts[0].images.shape[1:]:
            raise ValueError(f"cannot concat {p.name}: image shape {tuple(p.images.shape[1:])} differs")
    return FaceArrays(
        torch.cat([p.images for p in parts]),
        {k: torch.cat([p.labels[k] for p in parts]) for k in keys},
        name or "+".join(p.name for p in parts), parts[0].class_names, dict(parts[0].info),
    )
