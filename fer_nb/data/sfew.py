"""SFEW 2.0 (Static Facial Expressions in the Wild; Dhall et al., EmotiW 2015).

Frames from movie clips (AFEW), one folder per class::

    sfew/
    ├── Train/{Angry,Disgust,Fear,Happy,Neutral,Sad,Surprise}/*.png    (958 images)
    ├── Val/{Angry,...,Surprise}/*.png                                  (436 images)
    └── Test/*.png                                                       (372, unlabelled)

A single wrapper folder inside a split (``Train/Train_Aligned_Faces/<class>/``, as in the aligned
archive) is accepted. ``Test`` has no public labels: its expression is ``-1``. No identities are
released (subject = -1).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from fer_nb.data.errors import DatasetSpec, check_size
from fer_nb.data.images import class_folders, list_images, load_images, still_labels
from fer_nb.data.schema import EXPRESSIONS, FaceArrays

#: SFEW's class folders (alphabetical) -> canonical index of :data:`fer_nb.data.schema.EXPRESSIONS`.
SFEW_ORDER = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
SFEW_TO_CANONICAL = {"angry": 1, "disgust": 2, "fear": 3, "happy": 4, "neutral": 0, "sad": 5,
                     "surprise": 6}
SPLIT_DIRS = {"train": "Train", "val": "Val", "test": "Test"}

SPEC = DatasetSpec(
    name="sfew",
    layout="""\
sfew/
├── Train/{Angry,Disgust,Fear,Happy,Neutral,Sad,Surprise}/*.png
├── Val/{Angry,Disgust,Fear,Happy,Neutral,Sad,Surprise}/*.png
└── Test/*.png                  (optional, unlabelled)""",
    obtain="https://users.cecs.anu.edu.au/~few_group/AFEW.html (EmotiW: licence agreement by "
           "e-mail to the organisers)",
    splits=("train", "val", "test"),
    default_split="train",
)
DEFAULT_SIZE = 96
DEFAULT_CHANNELS = 3


def _split_dir(root: Path, split: str) -> Path:
    for name in (SPLIT_DIRS[split], SPLIT_DIRS[split].lower()):
        if (root / name).is_dir():
            d = root / name
            subs = [p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")]
            if len(subs) == 1 and subs[0].name.lower() not in SFEW_TO_CANONICAL:
                return subs[0]  # e.g. Train/Train_Aligned_Faces/
            return d
    raise SPEC.error(f"missing split folder {SPLIT_DIRS[split]}/ in {root}", root / SPLIT_DIRS[split],
                     kind="absent_split")


def load(root: str | os.PathLike, split: str | None = None, image_size: int | None = None,
         channels: int | None = None) -> FaceArrays:
    """SFEW 2.0, 7 canonical classes; ``test`` is unlabelled (expression -1)."""
    root = SPEC.root(root)
    split = SPEC.split(split)
    size, ch = check_size(SPEC, image_size, channels, DEFAULT_SIZE, DEFAULT_CHANNELS)
    folder = _split_dir(root, split)
    if split == "test":
        paths = list_images(folder)
        if not paths:
            raise SPEC.error(f"no images in {folder}", folder)
        y = torch.full((len(paths),), -1, dtype=torch.int64)
    else:
        paths, y = class_folders(SPEC, folder, SFEW_TO_CANONICAL)
    images = load_images(paths, image_size=size, channels=ch, spec=SPEC)
    return FaceArrays(images, still_labels(len(paths), y, domain=1), "sfew", EXPRESSIONS[:7],
                      {"root": str(root), "split": split, "dataset_order": SFEW_ORDER})
