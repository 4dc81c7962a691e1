"""MMI Facial Expression Database (Pantic et al., ICME 2005), posed onset-apex-offset sequences.

The MMI web release (https://mmifacedb.eu) ships each session as a video plus metadata. This
loader reads the sessions **after frame extraction** and a small label table, a layout you build
once from the download (the metadata viewer / session files give each session's subject and
emotion)::

    mmi/
    ├── labels.csv              session,subject,emotion   (header required)
    └── Sessions/
        └── <session>/          frames of the session in temporal order, e.g. 00000.png ...
                                (or <session>/frames/*.png); extract them with
                                ffmpeg -i S001-001.avi -start_number 0 <session>/%05d.png

``emotion`` is a name (anger, disgust, fear, happiness, sadness, surprise) or MMI's code 1..6 in
that order (:data:`MMI_ORDER`). Sessions present on disk but not in ``labels.csv`` are ignored.

Protocol (Liu et al., 2B(N+M)Softmax): the ``frames`` (default 3) frames in the middle of each
sequence take the sequence label (the apex of an onset-apex-offset clip lies near its middle);
10 subject-independent folds via :func:`fer_nb.data.splits.subject_kfold`.

Face crop (``face_crop=0.6``): MMI frames are whole 720x576 studio frames; a fixed central square
of that fraction of the shorter side is cropped before the resize
(:func:`fer_nb.data.face_crop.central_face_box`; no detector, no alignment); ``None`` (default)
keeps the whole frame.
"""
from __future__ import annotations

import csv
import os

import torch

from fer_nb.data.errors import DatasetSpec, check_size
from fer_nb.data.face_crop import check_fraction, face_boxes
from fer_nb.data.images import list_images, load_images
from fer_nb.data.schema import EXPRESSIONS, FaceArrays

#: MMI's emotion codes 1..6 (code k is MMI_ORDER[k - 1]).
MMI_ORDER = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
#: MMI code -> canonical index of :data:`fer_nb.data.schema.EXPRESSIONS`.
MMI_TO_CANONICAL = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6}
#: Accepted emotion names -> canonical index.
MMI_NAMES = {"anger": 1, "angry": 1, "disgust": 2, "fear": 3, "happiness": 4, "happy": 4,
             "sadness": 5, "sad": 5, "surprise": 6}

SPEC = DatasetSpec(
    name="mmi",
    layout="""\
mmi/
├── labels.csv                 session,subject,emotion  (emotion: name or code 1..6 =
│                              anger, disgust, fear, happiness, sadness, surprise)
└── Sessions/<session>/*.png   extracted frames in temporal order (or <session>/frames/*.png)""",
    obtain="https://mmifacedb.eu (register and sign the MMI end user licence agreement)",
    splits=("all",),
    default_split="all",
)
DEFAULT_SIZE = 64
DEFAULT_CHANNELS = 1


def _emotion(value: str, line: int, path) -> int:
    v = value.strip().lower()
    if v in MMI_NAMES:
        return MMI_NAMES[v]
    try:
        code = int(v)
    except ValueError:
        code = None
    if code not in MMI_TO_CANONICAL:
        raise SPEC.error(f"labels.csv line {line}: emotion {value!r} is neither a name "
                         f"({', '.join(MMI_ORDER)}) nor a code 1..6", path)
    return MMI_TO_CANONICAL[code]


def load(root: str | os.PathLike, split: str | None = None, image_size: int | None = None,
         channels: int | None = None, frames: int = 3, face_crop: float | None = None) -> FaceArrays:
    """MMI, 6 expressions (canonical indices 1..6; class_names has 7, neutral empty).

    ``face_crop``: fraction of the shorter side for the fixed central face crop (module docstring).
    """
    root = SPEC.root(root)
    split = SPEC.split(split)
    size, ch = check_size(SPEC, image_size, channels, DEFAULT_SIZE, DEFAULT_CHANNELS)
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise SPEC.error(f"frames must be a positive int (middle frames per sequence), got {frames!r}")
    try:
        face_crop = check_fraction(face_crop)
    except ValueError as exc:
        raise SPEC.error(str(exc)) from None
    label_csv = SPEC.file(root / "labels.csv", "label table labels.csv")
    sessions = SPEC.dir(root / "Sessions", "Sessions/")
    with open(label_csv, newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or [h.strip().lower() for h in rows[0]][:3] != ["session", "subject", "emotion"]:
        raise SPEC.error("labels.csv must start with the header session,subject,emotion", label_csv)
    paths, y, subj, seq, frame = [], [], [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < 3:
            raise SPEC.error(f"labels.csv line {line}: expected session,subject,emotion", label_csv)
        session, subject = row[0].strip(), row[1].strip()
        try:
            sid = int(subject)
        except ValueError:
            raise SPEC.error(f"labels.csv line {line}: subject {subject!r} is not an integer id", label_csv) from None
        label = _emotion(row[2], line, label_csv)
        folder = sessions / session
        if (folder / "frames").is_dir():
            folder = folder / "frames"
        files = list_images(SPEC.dir(folder, f"Sessions/{session}/ (frames of session {session})"))
        if len(files) < frames:
            raise SPEC.error(f"session {session} has {len(files)} frames, need at least {frames}", folder)
        start = (len(files) - frames) // 2
        seq_id = int(session) if session.isdigit() else line
        for idx in range(start, start + frames):
            paths.append(files[idx])
            y.append(label)
            subj.append(sid)
            seq.append(seq_id)
            frame.append(idx)
    if not paths:
        raise SPEC.error("labels.csv lists no sessions", label_csv)
    images = load_images(paths, image_size=size, channels=ch, spec=SPEC, boxes=face_boxes(paths, face_crop))
    n = len(paths)
    labels = {"expression": torch.tensor(y), "subject": torch.tensor(subj),
              "domain": torch.zeros(n, dtype=torch.int64), "sequence": torch.tensor(seq),
              "frame": torch.tensor(frame)}
    return FaceArrays(images, labels, "mmi", EXPRESSIONS[:7],
                      {"root": str(root), "split": split, "frames": frames, "face_crop": face_crop,
                       "dataset_order": MMI_ORDER})
