"""Aff-Wild (Zafeiriou et al., CVPRW 2017) and Aff-Wild2 (Kollias & Zafeiriou, BMVC 2019):
in-the-wild videos with per-frame valence and arousal in [-1, 1].

Two layouts are read (videos must be extracted to frames first)::

    affwild/                                    Aff-Wild (2017 challenge release)
    ├── frames/train/<video>/00000.jpg ...      ffmpeg -i videos/train/<video>.mp4 -start_number 0 \\
    │                                               frames/train/<video>/%05d.jpg
    └── annotations/train/valence/<video>.txt   one value per line, line i = frame i
        annotations/train/arousal/<video>.txt

    affwild/                                    Aff-Wild2 (ABAW)
    ├── cropped_aligned/<video>/00001.jpg ...   frame numbers start at 1 (line 1 after the header)
    └── Annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<video>.txt
                                                header "valence,arousal", then one "v,a" per frame;
                                                -5 = not annotated (dropped)

Frames without an image file (no face detected) are skipped and counted in ``info``. Each video
shows one person (Aff-Wild2 ``_left``/``_right`` files are separate people), so ``subject`` and
``sequence`` are both the video's index in name order. Splits: Aff-Wild2 ``Train_Set``
(train) and ``Validation_Set`` (val). Aff-Wild: ``annotations/<split>/`` when that folder
exists; the public release has only ``train`` labels, so there ``train``/``test`` are a seeded
hold-out of ``test_fraction`` of the annotated videos (``split_seed``), as Kim & Song evaluate
("a part of the training dataset is randomly selected"), and ``all`` is every annotated video.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from fer_nb.data.errors import DatasetSpec, check_size
from fer_nb.data.images import IMAGE_EXTS, load_images
from fer_nb.data.schema import EXPRESSIONS, FaceArrays
from fer_nb.data.splits import train_val_by_subject

AFFWILD2_SETS = {"train": "Train_Set", "val": "Validation_Set", "test": "Test_Set"}
AFFWILD2_TASK_DIRS = ("VA_Estimation_Challenge", "VA_Set")

SPEC = DatasetSpec(
    name="affwild",
    layout="""\
affwild/                                  (Aff-Wild)
├── frames/train/<video>/00000.jpg ...    (extracted, 0-based frame numbers)
└── annotations/train/{valence,arousal}/<video>.txt   (one value per line)
or                                        (Aff-Wild2)
affwild/
├── cropped_aligned/<video>/00001.jpg ...
└── Annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<video>.txt
                                          ("valence,arousal" header; -5 = not annotated)""",
    obtain="https://ibug.doc.ic.ac.uk/resources/first-affect-wild-challenge/ (Aff-Wild) or "
           "https://ibug.doc.ic.ac.uk/resources/aff-wild2/ (Aff-Wild2); EULA signed by a faculty member",
    splits=("train", "val", "test", "all"),
    default_split="train",
)
DEFAULT_SIZE = 96
DEFAULT_CHANNELS = 3


def _read_values(path: Path) -> np.ndarray:
    try:
        return np.array([float(x) for x in path.read_text().split()], dtype=np.float64)
    except ValueError:
        raise SPEC.error(f"{path.name} must hold one number per line", path) from None


def _frame_index(folder: Path) -> dict[int, Path]:
    out = {}
    for p in folder.iterdir():
        if p.suffix.lower() in IMAGE_EXTS and p.stem.isdigit():
            out[int(p.stem)] = p
    return out


def _affwild1(root: Path, parts: list[str]):
    ann_root = root / "annotations"
    videos = []
    for part in parts:
        val_dir = SPEC.dir(ann_root / part / "valence", f"annotations/{part}/valence/")
        aro_dir = SPEC.dir(ann_root / part / "arousal", f"annotations/{part}/arousal/")
        for vfile in sorted(val_dir.glob("*.txt")):
            afile = SPEC.file(aro_dir / vfile.name, f"arousal annotation annotations/{part}/arousal/{vfile.name}")
            v, a = _read_values(vfile), _read_values(afile)
            if len(v) != len(a):
                raise SPEC.error(f"{vfile.stem}: {len(v)} valence but {len(a)} arousal values", afile)
            frames = SPEC.dir(root / "frames" / part / vfile.stem, f"frames/{part}/{vfile.stem}/ (extracted frames)")
            videos.append((vfile.stem, np.stack([v, a], 1), frames, 0, vfile))
    return videos


def _affwild2(root: Path, parts: list[str], allow_missing: bool = False):
    ann = next((root / "Annotations" / d for d in AFFWILD2_TASK_DIRS if (root / "Annotations" / d).is_dir()), None)
    if ann is None:
        raise SPEC.error("missing Annotations/VA_Estimation_Challenge/", root / "Annotations")
    frames_root = SPEC.dir(root / "cropped_aligned", "cropped_aligned/")
    videos = []
    for part in parts:
        set_dir = ann / AFFWILD2_SETS[part]
        if not set_dir.is_dir() and allow_missing:
            continue
        if not set_dir.is_dir():
            raise SPEC.error(f"missing folder Annotations/{ann.name}/{AFFWILD2_SETS[part]}/", set_dir,
                             kind="absent_split")
        for f in sorted(set_dir.glob("*.txt")):
            lines = [ln for ln in f.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
            if not lines or lines[0].replace(" ", "").lower() != "valence,arousal":
                raise SPEC.error(f"{f.name} must start with the header valence,arousal", f)
            try:
                va = np.array([[float(x) for x in ln.split(",")] for ln in lines[1:]], dtype=np.float64)
            except ValueError:
                raise SPEC.error(f"{f.name}: every line after the header must be 'valence,arousal'", f) from None
            if va.ndim != 2 or va.shape[1] != 2:
                raise SPEC.error(f"{f.name}: every line after the header must be 'valence,arousal'", f)
            frames = SPEC.dir(frames_root / f.stem, f"cropped_aligned/{f.stem}/")
            videos.append((f.stem, va, frames, 1, f))
    return videos


def load(root: str | os.PathLike, split: str | None = None, image_size: int | None = None,
         channels: int | None = None, frame_step: int = 1, test_fraction: float = 0.2,
         split_seed: int = 0) -> FaceArrays:
    """Aff-Wild / Aff-Wild2 frames with ``va``; ``frame_step`` keeps every k-th frame."""
    root = SPEC.root(root)
    split = SPEC.split(split)
    size, ch = check_size(SPEC, image_size, channels, DEFAULT_SIZE, DEFAULT_CHANNELS)
    if isinstance(frame_step, bool) or not isinstance(frame_step, int) or frame_step < 1:
        raise SPEC.error(f"frame_step must be a positive int, got {frame_step!r}")
    holdout = None
    if (root / "annotations").is_dir():
        available = sorted(p.name for p in (root / "annotations").iterdir() if p.is_dir())
        if split in ("train", "test") and "test" not in available and "train" in available:
            parts, holdout = ["train"], split  # public release: hold out training videos
        elif split == "all":
            parts = available
        elif split in available:
            parts = [split]
        else:
            raise SPEC.error(f"Aff-Wild has no annotations for split {split!r} (found {available}; "
                             "the test labels were never released)", root / "annotations", kind="absent_split")
        videos, source = _affwild1(root, parts), "affwild"
        if holdout is not None:
            try:
                tr, te = train_val_by_subject(list(range(len(videos))), test_fraction, split_seed)
            except ValueError as exc:
                raise SPEC.error(f"cannot hold out test videos: {exc}", root / "annotations") from None
            videos = [videos[i] for i in (tr if holdout == "train" else te).tolist()]
    elif (root / "Annotations").is_dir():
        parts = ["train", "val"] if split == "all" else [split]
        videos, source = _affwild2(root, parts, allow_missing=split == "all"), "affwild2"
    else:
        raise SPEC.error(f"neither annotations/ (Aff-Wild) nor Annotations/ (Aff-Wild2) in {root}", root)
    if not videos:
        raise SPEC.error(f"no annotation files for split {split!r}", root)
    names = sorted({v[0] for v in videos})
    vid_id = {n: i for i, n in enumerate(names)}
    paths, va, seq, frame = [], [], [], []
    missing = 0
    for name, values, folder, base, ann_file in videos:
        valid = (values != -5).all(1)
        bad = valid & (np.abs(values) > 1).any(1)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise SPEC.error(f"{ann_file.name} frame {i}: valence/arousal {values[i].tolist()} outside [-1, 1]", ann_file)
        index = _frame_index(folder)
        for i in np.flatnonzero(valid)[::frame_step]:
            p = index.get(int(i) + base)
            if p is None:
                missing += 1
                continue
            paths.append(p)
            va.append(values[i])
            seq.append(vid_id[name])
            frame.append(int(i))
    if not paths:
        raise SPEC.error("no annotated frame has an image file: check the frame numbering "
                         "(Aff-Wild 00000.jpg = line 1, Aff-Wild2 00001.jpg = line 1)", root)
    images = load_images(paths, image_size=size, channels=ch, spec=SPEC)
    n = len(paths)
    labels = {"va": torch.tensor(np.array(va), dtype=torch.float32), "subject": torch.tensor(seq),
              "domain": torch.ones(n, dtype=torch.int64), "sequence": torch.tensor(seq),
              "frame": torch.tensor(frame)}
    return FaceArrays(images, labels, "affwild", EXPRESSIONS[:7],
                      {"root": str(root), "split": split, "source": source, "videos": tuple(names),
                       "holdout": holdout is not None, "test_fraction": test_fraction,
                       "split_seed": split_seed,
                       "frames_without_image": missing})
