"""AffectNet (Mollahosseini, Hasani & Mahoor, TAC 2017), manually annotated part.

On disk::

    affectnet/
    ├── Manually_Annotated_file_lists/
    │   ├── training.csv      subDirectory_filePath,face_x,face_y,face_width,face_height,
    │   └── validation.csv    facial_landmarks,expression,valence,arousal
    └── Manually_Annotated_Images/<subDirectory_filePath>   e.g. 689/737db2483489148d783ef278f43f486c0a97e140fc4b6b61b84363ca.jpg
        (also accepted: Manually_Annotated/Manually_Annotated_Images/)

Expression codes 0..10 = Neutral, Happiness, Sadness, Surprise, Fear, Disgust, Anger, Contempt,
None, Uncertain, No-Face; 8..10 are not expressions and are dropped. Valence/arousal are in
[-1, 1]; ``-2`` marks "not annotated" and becomes NaN. ``validation.csv`` is the usual test set
(split ``val``). ``crop=True`` crops the face box of the CSV (use it when your copy holds the
full images rather than face crops).
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import torch

from fer_nb.data.errors import DatasetSpec, check_size
from fer_nb.data.images import load_images, still_labels
from fer_nb.data.schema import EXPRESSIONS, FaceArrays

#: AffectNet's own codes 0..10.
AFFECTNET_ORDER = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger",
                   "contempt", "none", "uncertain", "no-face")
#: AffectNet code -> canonical index of :data:`fer_nb.data.schema.EXPRESSIONS` (8..10 dropped).
AFFECTNET_TO_CANONICAL = {0: 0, 1: 4, 2: 5, 3: 6, 4: 3, 5: 2, 6: 1, 7: 7}
SPLIT_FILES = {"train": "training.csv", "val": "validation.csv"}
COLUMNS = ("subdirectory_filepath", "face_x", "face_y", "face_width", "face_height",
           "facial_landmarks", "expression", "valence", "arousal")

SPEC = DatasetSpec(
    name="affectnet",
    layout="""\
affectnet/
├── Manually_Annotated_file_lists/{training,validation}.csv
│       subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,
│       expression,valence,arousal
└── Manually_Annotated_Images/<subDirectory_filePath>   (e.g. 689/<hash>.jpg)""",
    obtain="http://mohammadmahoor.com/affectnet/ (academic licence agreement; request form)",
    splits=("train", "val"),
    default_split="train",
)
DEFAULT_SIZE = 96
DEFAULT_CHANNELS = 3


def _image_root(root: Path) -> Path:
    for cand in (root / "Manually_Annotated_Images",
                 root / "Manually_Annotated" / "Manually_Annotated_Images"):
        if cand.is_dir():
            return cand
    raise SPEC.error(f"missing image folder Manually_Annotated_Images/ in {root}",
                     root / "Manually_Annotated_Images")


def load(root: str | os.PathLike, split: str | None = None, image_size: int | None = None,
         channels: int | None = None, crop: bool = False, max_per_class: int | None = None,
         seed: int = 0) -> FaceArrays:
    """AffectNet (8 canonical classes, contempt included) with ``va`` labels.

    ``max_per_class`` keeps a seeded random subset of at most that many images per class (the
    training list has ~290k rows)."""
    root = SPEC.root(root)
    split = SPEC.split(split)
    size, ch = check_size(SPEC, image_size, channels, DEFAULT_SIZE, DEFAULT_CHANNELS)
    table = SPEC.file(root / "Manually_Annotated_file_lists" / SPLIT_FILES[split],
                      f"label list Manually_Annotated_file_lists/{SPLIT_FILES[split]}")
    img_root = _image_root(root)
    paths, boxes, y, va = [], [], [], []
    dropped = 0
    with open(table, newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, [])]
        if tuple(header[:len(COLUMNS)]) != COLUMNS:
            raise SPEC.error(f"{table.name} header is {header}; expected {','.join(COLUMNS)}", table)
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise SPEC.error(f"{table.name} line {line}: {len(row)} fields, expected {len(header)}", table)
            try:
                code = int(row[6])
                x, yb, w, h = (float(v) for v in row[1:5])
                val, aro = float(row[7]), float(row[8])
            except ValueError:
                raise SPEC.error(f"{table.name} line {line}: face box, expression, valence and arousal "
                                 "must be numbers", table) from None
            if not 0 <= code <= 10:
                raise SPEC.error(f"{table.name} line {line}: expression {code} out of range 0..10 "
                                 f"({', '.join(AFFECTNET_ORDER)})", table)
            if code >= 8:
                dropped += 1
                continue
            pair = []
            for name, v in (("valence", val), ("arousal", aro)):
                if v == -2:
                    v = math.nan
                elif not -1.0 <= v <= 1.0:
                    raise SPEC.error(f"{table.name} line {line}: {name} {v} outside [-1, 1] (-2 = missing)", table)
                pair.append(v)
            paths.append(img_root / row[0].strip())
            boxes.append((x, yb, w, h))
            y.append(AFFECTNET_TO_CANONICAL[code])
            va.append(pair)
    if not paths:
        raise SPEC.error(f"{table.name} lists no images with expression 0..7", table)
    y_arr = np.array(y)
    keep = np.arange(len(y))
    if max_per_class is not None:
        rng = np.random.default_rng(seed)
        keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y_arr == c))[:max_per_class]
                                       for c in np.unique(y_arr)]))
    images = load_images([paths[i] for i in keep], image_size=size, channels=ch, spec=SPEC,
                         boxes=[boxes[i] for i in keep] if crop else None)
    labels = still_labels(len(keep), y_arr[keep], domain=1)
    labels["va"] = torch.tensor(np.array(va, dtype=np.float32)[keep])
    return FaceArrays(images, labels, "affectnet", EXPRESSIONS,
                      {"root": str(root), "split": split, "crop": crop, "dropped_8_10": dropped,
                       "dataset_order": AFFECTNET_ORDER[:8]})
