"""JAFFE (Japanese Female Facial Expression; Lyons et al., FG 1998).

213 grayscale 256x256 TIFF images of 10 posers; the file name encodes poser and expression::

    jaffe/                 (or jaffe/jaffedbase/)
    ├── KA.AN1.39.tiff     <poser>.<expression><take>.<image number>.tiff
    ├── KA.NE1.26.tiff
    └── ...

Expressions AN, DI, FE, HA, NE, SA, SU (7 classes, no contempt); posers KA, KL, KM, KR, MK, NA,
NM, TM, UY, YM -> subject ids 0..9 (any other initials get ids from 10 on, in name order).
"""
from __future__ import annotations

import os
import re

import torch

from fer_nb.data.errors import DatasetSpec, check_size
from fer_nb.data.images import load_images
from fer_nb.data.schema import EXPRESSIONS, FaceArrays

#: JAFFE expression codes -> canonical index of :data:`fer_nb.data.schema.EXPRESSIONS`.
JAFFE_TO_CANONICAL = {"NE": 0, "AN": 1, "DI": 2, "FE": 3, "HA": 4, "SA": 5, "SU": 6}
JAFFE_ORDER = ("AN", "DI", "FE", "HA", "NE", "SA", "SU")
#: The ten posers of the release, in subject-id order.
JAFFE_SUBJECTS = ("KA", "KL", "KM", "KR", "MK", "NA", "NM", "TM", "UY", "YM")
NAME_RE = re.compile(r"^([A-Z]{2})\.([A-Z]{2})(\d+)\.(\d+)\.tiff?$", re.IGNORECASE)

SPEC = DatasetSpec(
    name="jaffe",
    layout="""\
jaffe/                        (or jaffe/jaffedbase/)
├── KA.AN1.39.tiff            <poser>.<AN|DI|FE|HA|NE|SA|SU><take>.<number>.tiff
└── ... (213 files)""",
    obtain="https://zenodo.org/record/3451524 (request access; non-commercial scientific use)",
    splits=("all",),
    default_split="all",
)
DEFAULT_SIZE = 96
DEFAULT_CHANNELS = 1


def load(root: str | os.PathLike, split: str | None = None, image_size: int | None = None,
         channels: int | None = None) -> FaceArrays:
    """JAFFE, 7 canonical classes with poser ids; split ``all`` (cross-validate by poser)."""
    root = SPEC.root(root)
    if (root / "jaffedbase").is_dir():
        root = root / "jaffedbase"
    split = SPEC.split(split)
    size, ch = check_size(SPEC, image_size, channels, DEFAULT_SIZE, DEFAULT_CHANNELS)
    tiffs = sorted(p for p in root.iterdir() if p.suffix.lower() in (".tif", ".tiff") and p.is_file()
                   and not p.name.startswith("."))
    if not tiffs:
        raise SPEC.error(f"no .tiff images in {root}", root)
    parsed = []
    for p in tiffs:
        m = NAME_RE.match(p.name)
        if m is None:
            raise SPEC.error(f"file name {p.name!r} does not follow <poser>.<expr><take>.<number>.tiff", p)
        poser, expr = m.group(1).upper(), m.group(2).upper()
        if expr not in JAFFE_TO_CANONICAL:
            raise SPEC.error(f"{p.name}: unknown expression code {expr!r}; expected one of {JAFFE_ORDER}", p)
        parsed.append((p, poser, JAFFE_TO_CANONICAL[expr]))
    extra = sorted({poser for _, poser, _ in parsed} - set(JAFFE_SUBJECTS))
    ids = {s: i for i, s in enumerate(JAFFE_SUBJECTS + tuple(extra))}
    paths = [p for p, _, _ in parsed]
    images = load_images(paths, image_size=size, channels=ch, spec=SPEC)
    n = len(paths)
    labels = {"expression": torch.tensor([c for _, _, c in parsed]),
              "subject": torch.tensor([ids[s] for _, s, _ in parsed]),
              "domain": torch.zeros(n, dtype=torch.int64),
              "sequence": torch.full((n,), -1, dtype=torch.int64),
              "frame": torch.zeros(n, dtype=torch.int64)}
    return FaceArrays(images, labels, "jaffe", EXPRESSIONS[:7],
                      {"root": str(root), "split": split, "dataset_order": JAFFE_ORDER,
                       "subjects": tuple(ids)})
