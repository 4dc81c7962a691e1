"""CK+ (Extended Cohn-Kanade; Lucey et al., CVPRW 2010), original release and the 48x48 variant.

Original release (``extended-cohn-kanade-images.zip``, ``Emotion_labels.zip``, ``FACS_labels.zip``)::

    ckplus/
    ├── cohn-kanade-images/S005/001/S005_001_00000001.png ... (neutral onset -> peak)
    ├── Emotion/S005/001/S005_001_00000011_emotion.txt       one float, e.g. "3.0000000e+00"
    └── FACS/S005/001/S005_001_00000011_facs.txt             "AU intensity" per line (optional)

Only 327 of the 593 sequences carry an emotion file; the others are skipped. Emotion codes
0..7 = neutral, anger, contempt, disgust, fear, happy, sadness, surprise.

Protocol (Liu et al., 2B(N+M)Softmax): the last ``frames`` (default 3) frames of each labelled
sequence get the sequence label; ``neutral_first=True`` adds each sequence's first frame as
neutral. Subjects come from the folder names (``S005`` -> 5); use
:func:`fer_nb.data.splits.subject_kfold` for the subject-independent folds. AUs: the FACS file
codes the peak frame; its AUs (binary occurrence) are copied to the last frames with a full mask
(FACS coding lists every AU present); neutral first frames get no AU annotation (mask False).

48x48 variant ("CK+48" on Kaggle): ``CK+48/{anger,contempt,disgust,fear,happy,sadness,surprise}/
S010_004_00000017.png``, the last three frames of each sequence already cropped; subject and
sequence are parsed from the file names.

Face crop (``face_crop=0.6``): the original frames are whole 640x490 studio frames; a fixed central
square of that fraction of the shorter side is cropped before the resize
(:func:`fer_nb.data.face_crop.central_face_box`; no detector, no alignment). ``None`` (default)
keeps the whole frame. The CK+48 variant is already cropped: a ``face_crop`` there is an error.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from fer_nb.data.errors import DatasetSpec, check_size
from fer_nb.data.face_crop import check_fraction, face_boxes
from fer_nb.data.images import class_folders, list_images, load_images
from fer_nb.data.schema import AUS, EXPRESSIONS, FaceArrays

#: CK+'s own emotion codes 0..7.
CKPLUS_ORDER = ("neutral", "anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
#: CK+ code -> canonical index of :data:`fer_nb.data.schema.EXPRESSIONS`.
CKPLUS_TO_CANONICAL = {0: 0, 1: 1, 2: 7, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6}
#: Class folders of the 48x48 variant -> canonical index.
CK48_FOLDERS = {"neutral": 0, "anger": 1, "contempt": 7, "disgust": 2, "fear": 3, "happy": 4,
                "happiness": 4, "sadness": 5, "sad": 5, "surprise": 6}
NAME_RE = re.compile(r"^S(\d+)_(\d+)_(\d+)")

SPEC = DatasetSpec(
    name="ckplus",
    layout="""\
ckplus/
├── cohn-kanade-images/S005/001/S005_001_00000001.png ...
├── Emotion/S005/001/S005_001_00000011_emotion.txt      (one code 0..7)
└── FACS/S005/001/S005_001_00000011_facs.txt            (optional: "AU intensity" lines)
or the 48x48 variant:
ckplus/CK+48/{anger,contempt,disgust,fear,happy,sadness,surprise}/S010_004_00000017.png""",
    obtain="https://www.jeffcohn.net/Resources/ (CK+ agreement form, non-commercial research)",
    splits=("all",),
    default_split="all",
)
DEFAULT_SIZE = 48
DEFAULT_CHANNELS = 1


def _read_float_lines(path: Path) -> list[list[float]]:
    try:
        return [[float(x) for x in line.split()] for line in path.read_text().splitlines() if line.strip()]
    except ValueError:
        raise SPEC.error(f"{path.name} does not hold numbers", path) from None


def _subject_id(name: str, path: Path) -> int:
    if not re.fullmatch(r"S\d+", name):
        raise SPEC.error(f"subject folder {name!r} is not named S<number> (e.g. S005)", path)
    return int(name[1:])


def _load_original(root: Path, size: int, ch: int, frames: int, neutral_first: bool, face_crop: float | None = None):
    img_root = SPEC.dir(root / "cohn-kanade-images", "cohn-kanade-images/")
    emo_root = SPEC.dir(root / "Emotion", "Emotion/ (Emotion_labels.zip)")
    facs_root = root / "FACS"
    paths, y, subj, seq, frame, aus, mask = [], [], [], [], [], [], []
    n_seq = 0
    for emo_file in sorted(emo_root.glob("*/*/*_emotion.txt")):
        subject_dir, seq_dir = emo_file.parent.parent.name, emo_file.parent.name
        sid = _subject_id(subject_dir, emo_file)
        values = _read_float_lines(emo_file)
        if len(values) != 1 or len(values[0]) != 1 or values[0][0] != round(values[0][0]):
            raise SPEC.error(f"{emo_file.name} must hold one integer emotion code", emo_file)
        code = int(values[0][0])
        if code not in CKPLUS_TO_CANONICAL:
            raise SPEC.error(f"{emo_file.name}: emotion code {code} out of range 0..7 "
                             f"({', '.join(CKPLUS_ORDER)})", emo_file)
        seq_images = list_images(SPEC.dir(img_root / subject_dir / seq_dir,
                                          f"cohn-kanade-images/{subject_dir}/{seq_dir}/"))
        if len(seq_images) < frames + (1 if neutral_first else 0):
            raise SPEC.error(f"sequence {subject_dir}/{seq_dir} has {len(seq_images)} frames; "
                             f"need at least {frames + int(neutral_first)}", img_root / subject_dir / seq_dir)
        au_vec = np.zeros(len(AUS), dtype=np.float32)
        au_known = False
        facs = sorted((facs_root / subject_dir / seq_dir).glob("*_facs.txt")) if facs_root.is_dir() else []
        if facs:
            au_known = True
            for row in _read_float_lines(facs[0]):
                if len(row) < 1:
                    continue
                au = int(row[0])
                if au in AUS:
                    au_vec[AUS.index(au)] = 1.0
        seq_id = sid * 1000 + int(seq_dir) if seq_dir.isdigit() else n_seq
        chosen = [(len(seq_images) - frames + k, CKPLUS_TO_CANONICAL[code], au_known) for k in range(frames)]
        if neutral_first:
            chosen = [(0, 0, False)] + chosen
        for idx, label, known in chosen:
            paths.append(seq_images[idx])
            y.append(label)
            subj.append(sid)
            seq.append(seq_id)
            frame.append(idx)
            aus.append(au_vec if known else np.zeros(len(AUS), dtype=np.float32))
            mask.append(np.full(len(AUS), known))
        n_seq += 1
    if not paths:
        raise SPEC.error("no labelled sequences: Emotion/S*/*/*_emotion.txt matched nothing", emo_root)
    images = load_images(paths, image_size=size, channels=ch, spec=SPEC, boxes=face_boxes(paths, face_crop))
    labels = {"expression": torch.tensor(y), "subject": torch.tensor(subj),
              "sequence": torch.tensor(seq), "frame": torch.tensor(frame),
              "aus": torch.from_numpy(np.stack(aus)), "aus_mask": torch.from_numpy(np.stack(mask))}
    return images, labels, {"source": "original", "sequences": n_seq, "frames": frames,
                            "neutral_first": neutral_first, "face_crop": face_crop}


def _load_48(folder: Path, size: int, ch: int):
    paths, y = class_folders(SPEC, folder, CK48_FOLDERS)
    subj, seq, frame = [], [], []
    for p in paths:
        m = NAME_RE.match(p.name)
        if m is None:
            raise SPEC.error(f"file name {p.name!r} does not start with S<subject>_<sequence>_<frame>; "
                             "subject ids are needed for subject-independent folds", p)
        s, q, f = (int(g) for g in m.groups())
        subj.append(s)
        seq.append(s * 1000 + q)
        frame.append(f)
    images = load_images(paths, image_size=size, channels=ch, spec=SPEC)
    labels = {"expression": torch.tensor(y), "subject": torch.tensor(subj),
              "sequence": torch.tensor(seq), "frame": torch.tensor(frame),
              "aus": torch.zeros(len(paths), len(AUS)),
              "aus_mask": torch.zeros(len(paths), len(AUS), dtype=torch.bool)}
    return images, labels, {"source": "ck+48"}


def load(root: str | os.PathLike, split: str | None = None, image_size: int | None = None,
         channels: int | None = None, frames: int = 3, neutral_first: bool = False,
         face_crop: float | None = None) -> FaceArrays:
    """CK+ as 8 canonical classes (contempt included); split ``all`` (cross-validate by subject).

    ``face_crop``: fraction of the shorter side for the fixed central face crop of the original
    frames (see the module docstring); ``None`` = whole frame.
    """
    root = SPEC.root(root)
    split = SPEC.split(split)
    size, ch = check_size(SPEC, image_size, channels, DEFAULT_SIZE, DEFAULT_CHANNELS)
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise SPEC.error(f"frames must be a positive int (last frames per sequence), got {frames!r}")
    try:
        face_crop = check_fraction(face_crop)
    except ValueError as exc:
        raise SPEC.error(str(exc)) from None
    if (root / "cohn-kanade-images").is_dir() or (root / "Emotion").is_dir():
        images, labels, info = _load_original(root, size, ch, frames, neutral_first, face_crop)
    elif face_crop is not None:
        raise SPEC.error(f"face_crop={face_crop} is for the original whole frames (cohn-kanade-images/); the "
                         "CK+48 variant is already cropped: pass face_crop=None", root)
    elif (root / "CK+48").is_dir():
        images, labels, info = _load_48(root / "CK+48", size, ch)
    elif any(p.is_dir() and p.name.lower() in CK48_FOLDERS for p in root.iterdir()):
        images, labels, info = _load_48(root, size, ch)
    else:
        raise SPEC.error(f"no cohn-kanade-images/ + Emotion/ and no CK+48 class folders in {root}", root)
    labels["domain"] = torch.zeros(len(images), dtype=torch.int64)
    info.update(root=str(root), split=split, dataset_order=CKPLUS_ORDER)
    return FaceArrays(images, labels, "ckplus", EXPRESSIONS, info)
