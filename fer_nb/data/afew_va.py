"""AFEW-VA (Kossaifi et al., IVC 2017): 600 movie clips with per-frame valence and arousal.

On disk (the 12 zip parts unpacked into one folder)::

    afew_va/
    ├── 001/
    │   ├── 00000.png 00001.png ...          full video frames
    │   └── 001.json                         {"actor": ..., "video_id": "001",
    │                                         "frames": {"00000": {"valence": v, "arousal": a,
    │                                                              "landmarks": [[x, y], ...]}, ...}}
    └── ... 600/

Valence/arousal are integers on -10..10 and are divided by 10 into [-1, 1]. AFEW-VA has no
official split: ``train``/``test`` are this book's seeded person-independent hold-out
(``test_fraction`` of the actors, ``split_seed``; by clip when actors are missing), ``all`` is
everything. ``crop=True``
(default) crops each frame to its 68 landmarks' bounding box enlarged by ``margin``. Subjects are
the ``actor`` names (ids in name order), sequences the clip numbers, ``frame`` the frame index.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from fer_nb.data.errors import DatasetSpec, check_size
from fer_nb.data.images import IMAGE_EXTS, load_images
from fer_nb.data.schema import EXPRESSIONS, FaceArrays
from fer_nb.data.splits import train_val_by_subject

SPEC = DatasetSpec(
    name="afew_va",
    layout="""\
afew_va/
├── 001/
│   ├── 00000.png 00001.png ...
│   └── 001.json     {"actor", "video_id", "frames": {"00000": {"valence", "arousal", "landmarks"}}}
└── ... 600/         (valence/arousal on -10..10)""",
    obtain="https://ibug.doc.ic.ac.uk/resources/afew-va-database/ (academic licence, request form)",
    splits=("all", "train", "test"),
    default_split="all",
)
DEFAULT_SIZE = 96
DEFAULT_CHANNELS = 3


def _landmark_box(landmarks, margin: float):
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        return None
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return (cx - side / 2, cy - side / 2, side, side)


def load(root: str | os.PathLike, split: str | None = None, image_size: int | None = None,
         channels: int | None = None, crop: bool = True, margin: float = 0.2,
         frame_step: int = 1, test_fraction: float = 0.2, split_seed: int = 0) -> FaceArrays:
    """AFEW-VA frames with ``va`` in [-1, 1]; ``frame_step`` keeps every k-th annotated frame."""
    root = SPEC.root(root)
    split = SPEC.split(split)
    size, ch = check_size(SPEC, image_size, channels, DEFAULT_SIZE, DEFAULT_CHANNELS)
    if isinstance(frame_step, bool) or not isinstance(frame_step, int) or frame_step < 1:
        raise SPEC.error(f"frame_step must be a positive int, got {frame_step!r}")
    clips = sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not clips:
        raise SPEC.error(f"no clip folders (001/, 002/, ...) in {root}", root)
    records = []
    for clip in clips:
        ann = SPEC.file(clip / f"{clip.name}.json", f"annotation {clip.name}/{clip.name}.json")
        try:
            data = json.loads(ann.read_text(encoding="utf-8-sig"))
            frames = data["frames"]
        except (ValueError, KeyError, TypeError) as exc:  # JSON, UTF-8 and shape errors
            raise SPEC.error(f"{ann.name} is not an AFEW-VA annotation ({type(exc).__name__}: {exc})", ann) from None
        actor = str(data.get("actor", ""))
        for k, key in enumerate(sorted(frames)):
            if k % frame_step:
                continue
            f = frames[key]
            try:
                v, a = float(f["valence"]), float(f["arousal"])
            except (KeyError, TypeError, ValueError):
                raise SPEC.error(f"{ann.name} frame {key}: needs numeric valence and arousal", ann) from None
            if not (-10 <= v <= 10 and -10 <= a <= 10):
                raise SPEC.error(f"{ann.name} frame {key}: valence/arousal ({v}, {a}) outside -10..10", ann)
            image = next((clip / f"{key}{ext}" for ext in IMAGE_EXTS if (clip / f"{key}{ext}").is_file()),
                         clip / f"{key}.png")
            box = _landmark_box(f.get("landmarks") or [], margin) if crop else None
            records.append((image, box, v / 10.0, a / 10.0, actor, int(clip.name), int(key) if key.isdigit() else k))
    if not records:
        raise SPEC.error("the annotation files list no frames", root)
    actors = {name: i for i, name in enumerate(sorted({r[4] for r in records if r[4]}))}
    if split != "all":
        groups = [actors[r[4]] if r[4] in actors else -1 for r in records]
        if min(groups) < 0:  # some clip without an actor name: hold out whole clips instead
            groups = [r[5] for r in records]
        try:
            train_idx, test_idx = train_val_by_subject(groups, test_fraction, split_seed)
        except ValueError as exc:
            raise SPEC.error(f"cannot make the {split!r} hold-out: {exc}", root) from None
        records = [records[i] for i in (train_idx if split == "train" else test_idx).tolist()]
    images = load_images([r[0] for r in records], image_size=size, channels=ch, spec=SPEC,
                         boxes=[r[1] for r in records] if crop else None)
    n = len(records)
    labels = {"va": torch.tensor([[r[2], r[3]] for r in records], dtype=torch.float32),
              "subject": torch.tensor([actors.get(r[4], -1) for r in records]),
              "domain": torch.ones(n, dtype=torch.int64),
              "sequence": torch.tensor([r[5] for r in records]),
              "frame": torch.tensor([r[6] for r in records])}
    return FaceArrays(images, labels, "afew_va", EXPRESSIONS[:7],
                      {"root": str(root), "split": split, "crop": crop, "clips": len(clips),
                       "test_fraction": test_fraction, "split_seed": split_seed,
                       "actors": tuple(actors)})
