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

The later "train_set / val_set" distribution (face crops, one ``.npy`` per label) is read too::

    affectnet/
    ├── train_set/images/<id>.jpg
    │   train_set/annotations/<id>_exp.npy  <id>_val.npy  <id>_aro.npy   (<id>_lnd.npy unused)
    └── val_set/images/ ...  val_set/annotations/ ...

Its ``.npy`` files hold one number (often stored as a string) and are read with
``allow_pickle=False``.
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
SPLIT_SETS = {"train": "train_set", "val": "val_set"}
COLUMNS = ("subdirectory_filepath", "face_x", "face_y", "face_width", "face_height",
           "facial_landmarks", "expression", "valence", "arousal")

SPEC = DatasetSpec(
    name="affectnet",
    layout="""\
affectnet/
├── Manually_Annotated_file_lists/{training,validation}.csv
│       subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,
│       expression,valence,arousal
└── Manually_Annotated_Images/<subDirectory_filePath>   (e.g. 689/<hash>.jpg)
or the train_set/val_set release:
affectnet/{train_set,val_set}/images/<id>.jpg
affectnet/{train_set,val_set}/annotations/<id>_exp.npy, <id>_val.npy, <id>_aro.npy""",
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
    if not (root / "Manually_Annotated_file_lists").is_dir() and (root / SPLIT_SETS[split]).is_dir():
        paths, y, va, dropped = _read_npy_release(root / SPLIT_SETS[split])
        boxes = [None] * len(paths)
        source = "npy"
    else:
        paths, boxes, y, va, dropped = _read_csv_release(root, split)
        source = "csv"
    y_arr = np.array(y)
    keep = np.arange(len(y))
    if max_per_class is not None:
        rng = np.random.default_rng(seed)
        keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y_arr == c))[:max_per_class]
                                       for c in np.unique(y_arr)]))
    images = load_images([paths[i] for i in keep], image_size=size, channels=ch, spec=SPEC,
                         boxes=[boxes[i] for i in keep] if crop and source == "csv" else None)
    labels = still_labels(len(keep), y_arr[keep], domain=1)
    labels["va"] = torch.tensor(np.array(va, dtype=np.float32)[keep])
    return FaceArrays(images, labels, "affectnet", EXPRESSIONS,
                      {"root": str(root), "split": split, "crop": crop, "dropped_8_10": dropped,
                       "source": source, "dataset_order": AFFECTNET_ORDER[:8]})


def _va_pair(val: float, aro: float, where: str, path: Path) -> list[float]:
    pair = []
    for name, v in (("valence", val), ("arousal", aro)):
        if v == -2:
            v = math.nan
        elif not -1.0 <= v <= 1.0:
            raise SPEC.error(f"{where}: {name} {v} outside [-1, 1] (-2 = missing)", path)
        pair.append(v)
    return pair


def _npy_number(path: Path) -> float:
    try:
        value = np.load(path, allow_pickle=False)
        return float(np.asarray(value).reshape(-1)[0])
    except FileNotFoundError:
        raise SPEC.error(f"missing annotation file {path.name}", path) from None
    except (ValueError, OSError, IndexError) as exc:
        raise SPEC.error(f"{path.name} does not hold one number ({type(exc).__name__}: {exc})", path) from None


def _read_npy_release(folder: Path):
    images = SPEC.dir(folder / "images", f"{folder.name}/images/")
    ann = SPEC.dir(folder / "annotations", f"{folder.name}/annotations/")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SPEC.error(f"no images in {images}", images)
    paths, y, va, dropped = [], [], [], 0
    for p in files:
        exp_file = ann / f"{p.stem}_exp.npy"
        code = _npy_number(exp_file)
        if code != int(code) or not 0 <= code <= 10:
            raise SPEC.error(f"{exp_file.name}: expression {code} out of range 0..10 "
                             f"({', '.join(AFFECTNET_ORDER)})", exp_file)
        if code >= 8:
            dropped += 1
            continue
        val, aro = _npy_number(ann / f"{p.stem}_val.npy"), _npy_number(ann / f"{p.stem}_aro.npy")
        va.append(_va_pair(val, aro, p.stem, ann))
        paths.append(p)
        y.append(AFFECTNET_TO_CANONICAL[int(code)])
    if not paths:
        raise SPEC.error(f"{folder.name} holds no images with expression 0..7", folder)
    return paths, y, va, dropped


def _read_csv_release(root: Path, split: str):
    table = SPEC.file(root / "Manually_Annotated_file_lists" / SPLIT_FILES[split],
                      f"label list Manually_Annotated_file_lists/{SPLIT_FILES[split]}")
    img_root = _image_root(root)
    paths, boxes, y, va = [], [], [], []
    dropped = 0
    with open(table, newline="", encoding="utf-8-sig") as fh:
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
            pair = _va_pair(val, aro, f"{table.name} line {line}", table)
            paths.append(img_root / row[0].strip())
            boxes.append((x, yb, w, h))
            y.append(AFFECTNET_TO_CANONICAL[code])
            va.append(pair)
    if not paths:
        raise SPEC.error(f"{table.name} lists no images with expression 0..7", table)
    return paths, boxes, y, va, dropped
