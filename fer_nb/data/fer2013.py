"""FER2013 and FER+ (FERPlus) in their real on-disk formats.

FER2013 (Goodfellow et al., ICML 2013 challenge; Kaggle) comes as

* ``fer2013.csv`` with columns ``emotion,pixels,Usage``: 48x48 grayscale pixels as 2304
  space-separated integers, ``Usage`` in ``Training`` / ``PublicTest`` / ``PrivateTest``
  (-> splits ``train`` / ``val`` / ``test``). The Kaggle ``icml_face_data.csv`` (same columns,
  other order, blanks after commas) is read too.
* the image-folder variant (Kaggle "FER-2013" by msambare): ``train/<class>/*.jpg`` and
  ``test/<class>/*.jpg`` with class folders angry, disgust, fear, happy, neutral, sad, surprise.

FER+ (Barsoum et al. 2016, github.com/microsoft/FERPlus) re-labels FER2013 with 10 crowd votes:

* ``fer2013new.csv`` (``Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,
  contempt,unknown,NF``) whose rows match ``fer2013.csv`` row by row; rows with an empty image
  name have no face and are dropped;
* or the folders written by FERPlus' ``generate_training_data.py``: ``FER2013Train/``,
  ``FER2013Valid/``, ``FER2013Test/`` with ``fer*.png`` and a header-less ``label.csv``
  (``name,(x, y, w, h),<10 vote counts>``).

Votes become a label as FERPlus' ``majority`` mode does: votes of 1 are removed as outliers, the
winning class needs more than half of the remaining votes, and images won by ``unknown`` / ``NF``
(not a face) or without a majority are dropped. ``vote="plurality"`` keeps the arg-max instead.
"""
from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np

from fer_nb.data.errors import DatasetSpec, check_size
from fer_nb.data.images import class_folders, from_array, load_images, still_labels
from fer_nb.data.schema import EXPRESSIONS, FaceArrays

#: FER2013's own label order (the ``emotion`` column).
FER2013_ORDER = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: FER2013 code -> canonical index of :data:`fer_nb.data.schema.EXPRESSIONS`.
FER2013_TO_CANONICAL = {0: 1, 1: 2, 2: 3, 3: 4, 4: 5, 5: 6, 6: 0}
#: Class folder names of the image-folder variant -> canonical index.
FER2013_FOLDERS = {"angry": 1, "disgust": 2, "fear": 3, "happy": 4, "sad": 5, "surprise": 6,
                   "neutral": 0}
#: FER+ vote columns, in the order of ``fer2013new.csv`` / ``label.csv``.
FERPLUS_ORDER = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                 "contempt", "unknown", "NF")
#: FER+ vote column -> canonical index (unknown and NF are not classes: those images are dropped).
FERPLUS_TO_CANONICAL = {0: 0, 1: 4, 2: 6, 3: 5, 4: 1, 5: 2, 6: 3, 7: 7}
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}
FERPLUS_FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}

SPEC = DatasetSpec(
    name="fer2013",
    layout="""\
fer2013/
├── fer2013.csv              emotion,pixels,Usage (35,887 rows of 48x48 pixels)
└── (or the image-folder variant)
    ├── train/{angry,disgust,fear,happy,neutral,sad,surprise}/*.jpg
    └── test/{angry,disgust,fear,happy,neutral,sad,surprise}/*.jpg""",
    obtain="https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-"
           "recognition-challenge/data (fer2013.tar.gz; Kaggle account, competition rules)",
    splits=("train", "val", "test", "all"),
    default_split="train",
)
FERPLUS_SPEC = DatasetSpec(
    name="ferplus",
    layout="""\
ferplus/
├── fer2013new.csv           Usage,Image name,neutral,...,contempt,unknown,NF (from microsoft/FERPlus)
└── fer2013.csv              FER2013's file (or ../fer2013/fer2013.csv), joined row by row
or, after FERPlus' generate_training_data.py:
ferplus/
├── FER2013Train/  fer*.png + label.csv   (name,(x, y, w, h),10 vote counts; no header)
├── FER2013Valid/  fer*.png + label.csv
└── FER2013Test/   fer*.png + label.csv""",
    obtain="labels: https://github.com/microsoft/FERPlus (MIT); images: FER2013 from "
           "https://www.kaggle.com/c/challenges-in-representation-learning-facial-expression-"
           "recognition-challenge/data",
    splits=("train", "val", "test", "all"),
    default_split="train",
)
DEFAULT_SIZE = 48
DEFAULT_CHANNELS = 1
N_PIXELS = 48 * 48


def _find_fer2013_csv(root: Path) -> Path | None:
    for cand in (root / "fer2013.csv", root / "fer2013" / "fer2013.csv", root / "icml_face_data.csv"):
        if cand.is_file():
            return cand
    return None


def read_fer2013_csv(path: Path, spec: DatasetSpec = SPEC) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All rows of a FER2013 CSV: ``(pixels uint8 (N, 48, 48), fer2013 codes (N,), usages)``."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip().lower() for h in next(reader)]
        except StopIteration:
            raise spec.error(f"{path.name} is empty", path) from None
        need = ("emotion", "pixels", "usage")
        if not all(k in header for k in need):
            raise spec.error(f"{path.name} header is {header}; expected the columns emotion,pixels,Usage", path)
        ie, ip, iu = (header.index(k) for k in need)
        codes, usages, pixels = [], [], []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise spec.error(f"{path.name} line {line}: {len(row)} fields, expected {len(header)}", path)
            try:
                code = int(row[ie])
            except ValueError:
                raise spec.error(f"{path.name} line {line}: emotion {row[ie]!r} is not an integer", path) from None
            if code not in FER2013_TO_CANONICAL:
                raise spec.error(f"{path.name} line {line}: emotion {code} out of range 0..6 "
                                 f"({', '.join(FER2013_ORDER)})", path)
            usage = row[iu].strip()
            if usage not in USAGE_TO_SPLIT:
                raise spec.error(f"{path.name} line {line}: Usage {usage!r} is not one of "
                                 f"{list(USAGE_TO_SPLIT)}", path)
            try:
                with warnings.catch_warnings():  # numpy warns (then stops) at a non-integer token
                    warnings.simplefilter("error")
                    px = np.fromstring(row[ip], dtype=np.int64, sep=" ")  # 4x faster than split()
            except (ValueError, DeprecationWarning):
                raise spec.error(f"{path.name} line {line}: pixels are not integers", path) from None
            if px.size != N_PIXELS:
                raise spec.error(f"{path.name} line {line}: {px.size} pixel values, expected "
                                 f"{N_PIXELS} (48x48)", path)
            if px.min() < 0 or px.max() > 255:
                raise spec.error(f"{path.name} line {line}: pixel values outside 0..255", path)
            codes.append(code)
            usages.append(usage)
            pixels.append(px.astype(np.uint8))
    if not codes:
        raise spec.error(f"{path.name} has a header but no rows", path)
    return np.stack(pixels).reshape(-1, 48, 48), np.array(codes), usages


def _split_mask(usages: list[str], split: str) -> np.ndarray:
    if split == "all":
        return np.ones(len(usages), dtype=bool)
    return np.array([USAGE_TO_SPLIT[u] == split for u in usages])


def load(root: str | os.PathLike, split: str | None = None, image_size: int | None = None,
         channels: int | None = None) -> FaceArrays:
    """FER2013 from ``fer2013.csv`` (splits train/val/test/all) or the image-folder variant
    (splits train/test/all). Default 48 px grayscale; 7 classes in canonical order."""
    root = SPEC.root(root)
    split = SPEC.split(split)
    size, ch = check_size(SPEC, image_size, channels, DEFAULT_SIZE, DEFAULT_CHANNELS)
    csv_path = _find_fer2013_csv(root)
    if csv_path is not None:
        pixels, codes, usages = read_fer2013_csv(csv_path)
        keep = _split_mask(usages, split)
        if not keep.any():
            raise SPEC.error(f"{csv_path.name} has no rows for split {split!r}", csv_path)
        images = from_array(pixels[keep], image_size=size, channels=ch)
        y = np.vectorize(FER2013_TO_CANONICAL.get)(codes[keep])
        source = "csv"
    elif (root / "train").is_dir() or (root / "test").is_dir():
        if split == "val":
            raise SPEC.error("the image-folder variant has only train/ and test/ (no val split); "
                             "use split='train' or 'test', or fer2013.csv for PublicTest", root, kind="absent_split")
        parts = ["train", "test"] if split == "all" else [split]
        paths, y = [], []
        for part in parts:
            p, lab = class_folders(SPEC, root / part, FER2013_FOLDERS)
            paths += p
            y += lab
        images = load_images(paths, image_size=size, channels=ch, spec=SPEC)
        source = "folders"
    else:
        raise SPEC.error(f"neither fer2013.csv nor train/ test/ class folders found in {root}", root)
    return FaceArrays(images, still_labels(len(images), y, domain=1), "fer2013", EXPRESSIONS[:7],
                      {"root": str(root), "split": split, "source": source,
                       "dataset_order": FER2013_ORDER})


def ferplus_vote(votes: np.ndarray, mode: str = "majority") -> np.ndarray:
    """FER+ votes ``(N, 10)`` (order :data:`FERPLUS_ORDER`) -> canonical labels, ``-1`` = drop.

    As FERPlus' ``_process_data``: single votes are removed as outliers; ``majority`` needs the
    winner to hold more than half of the remaining votes; a win by unknown/NF drops the image.
    """
    if mode not in ("majority", "plurality"):
        raise ValueError(f"vote must be 'majority' or 'plurality', got {mode!r}")
    v = np.where(votes <= 1, 0, votes).astype(np.float64)
    total = v.sum(1)
    win = v.argmax(1)
    ok = total > 0
    if mode == "majority":
        ok &= v.max(1) > 0.5 * total
    lut = np.full(len(FERPLUS_ORDER), -1)
    for k, c in FERPLUS_TO_CANONICAL.items():
        lut[k] = c
    return np.where(ok, lut[win], -1)


def _votes(values: list[str], where: str) -> np.ndarray:
    try:
        v = np.array([float(x) for x in values])
    except ValueError:
        raise FERPLUS_SPEC.error(f"{where}: vote counts {values} are not numbers") from None
    if len(v) != 10 or (v < 0).any() or (v > 10).any() or (v != np.round(v)).any():
        raise FERPLUS_SPEC.error(f"{where}: expected 10 integer vote counts in 0..10 "
                                 f"({', '.join(FERPLUS_ORDER)}), got {values}")
    return v


def load_ferplus(root: str | os.PathLike, split: str | None = None, image_size: int | None = None,
                 channels: int | None = None, vote: str = "majority",
                 fer2013_csv: str | os.PathLike | None = None) -> FaceArrays:
    """FER+ (8 classes, contempt included) from ``fer2013new.csv`` + ``fer2013.csv`` or from the
    FERPlus folders. Images won by unknown/NF or without a majority are dropped."""
    root = FERPLUS_SPEC.root(root)
    split = FERPLUS_SPEC.split(split)
    size, ch = check_size(FERPLUS_SPEC, image_size, channels, DEFAULT_SIZE, DEFAULT_CHANNELS)
    if vote not in ("majority", "plurality"):
        raise FERPLUS_SPEC.error(f"vote must be 'majority' or 'plurality', got {vote!r}")
    new_csv = root / "fer2013new.csv"
    folder_root = root / "data" if (root / "data" / FERPLUS_FOLDERS["train"]).is_dir() else root
    if new_csv.is_file():
        fer_csv = Path(fer2013_csv) if fer2013_csv else (_find_fer2013_csv(root)
                                                         or _find_fer2013_csv(root.parent))
        if fer_csv is None or not fer_csv.is_file():
            raise FERPLUS_SPEC.error(f"fer2013new.csv found but not the FER2013 pixels: put fer2013.csv in "
                                     f"{root} or {root.parent / 'fer2013'}, or pass fer2013_csv=...", root)
        pixels, _, usages = read_fer2013_csv(fer_csv, FERPLUS_SPEC)
        with open(new_csv, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if r]
        if not rows or [h.strip().lower() for h in rows[0][:2]] != ["usage", "image name"]:
            raise FERPLUS_SPEC.error("fer2013new.csv must start with the header Usage,Image name,"
                                     + ",".join(FERPLUS_ORDER), new_csv)
        rows = rows[1:]
        if len(rows) != len(usages):
            raise FERPLUS_SPEC.error(f"fer2013new.csv has {len(rows)} rows but {fer_csv.name} has "
                                     f"{len(usages)}: the files are joined row by row and must match", new_csv)
        has_image = np.zeros(len(rows), dtype=bool)
        votes = np.zeros((len(rows), 10))
        for i, r in enumerate(rows):
            where = f"fer2013new.csv line {i + 2}"
            if len(r) != 12:
                raise FERPLUS_SPEC.error(f"{where}: {len(r)} fields, expected 12", new_csv)
            if r[0].strip() != usages[i]:
                raise FERPLUS_SPEC.error(f"{where}: Usage {r[0]!r} differs from {fer_csv.name} ({usages[i]!r}); "
                                         "the two files are not from the same release", new_csv)
            has_image[i] = bool(r[1].strip())
            votes[i] = _votes(r[2:], where)
        y = ferplus_vote(votes, vote)
        keep = _split_mask(usages, split) & has_image & (y >= 0)
        if not keep.any():
            raise FERPLUS_SPEC.error(f"no FER+ images with a valid label in split {split!r}", new_csv)
        images = from_array(pixels[keep], image_size=size, channels=ch)
        n_dropped = int((_split_mask(usages, split) & has_image & (y < 0)).sum())
        y = y[keep]
        source = "csv"
    elif (folder_root / FERPLUS_FOLDERS["train"]).is_dir() or (folder_root / FERPLUS_FOLDERS["test"]).is_dir():
        parts = list(FERPLUS_FOLDERS) if split == "all" else [split]
        paths, labs, n_dropped = [], [], 0
        for part in parts:
            folder = FERPLUS_SPEC.dir(folder_root / FERPLUS_FOLDERS[part], FERPLUS_FOLDERS[part] + "/")
            label_csv = FERPLUS_SPEC.file(folder / "label.csv", f"{FERPLUS_FOLDERS[part]}/label.csv")
            with open(label_csv, newline="", encoding="utf-8-sig") as fh:
                rows = [r for r in csv.reader(fh) if r]
            if not rows:
                raise FERPLUS_SPEC.error(f"{label_csv} is empty", label_csv)
            names, votes = [], np.zeros((len(rows), 10))
            for i, r in enumerate(rows):
                where = f"{FERPLUS_FOLDERS[part]}/label.csv line {i + 1}"
                if len(r) not in (12, 15):  # 15: the face box written without quotes
                    raise FERPLUS_SPEC.error(f"{where}: {len(r)} fields, expected name,(x, y, w, h),"
                                             "10 vote counts", label_csv)
                names.append(r[0].strip())
                votes[i] = _votes(r[-10:], where)
            y_part = ferplus_vote(votes, vote)
            for name, lab in zip(names, y_part):
                if lab >= 0:
                    paths.append(folder / name)
                    labs.append(int(lab))
            n_dropped += int((y_part < 0).sum())
        if not paths:
            raise FERPLUS_SPEC.error(f"no FER+ images with a valid label in split {split!r}", folder_root)
        images = load_images(paths, image_size=size, channels=ch, spec=FERPLUS_SPEC)
        y = np.array(labs)
        source = "folders"
    else:
        raise FERPLUS_SPEC.error(f"neither fer2013new.csv nor FER2013Train/ FER2013Test/ folders in {root}", root)
    return FaceArrays(images, still_labels(len(images), y, domain=1), "ferplus", EXPRESSIONS,
                      {"root": str(root), "split": split, "source": source, "vote": vote,
                       "dropped": n_dropped, "dataset_order": FERPLUS_ORDER[:8]})
