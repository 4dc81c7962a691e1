"""RAF-DB (Real-world Affective Faces, basic emotions subset; Li, Deng & Du, CVPR 2017).

On disk (the ``basic`` archive, after unpacking ``aligned.zip``)::

    rafdb/  (or rafdb/basic/)
    ├── EmoLabel/list_patition_label.txt   "train_00001.jpg 5" per line (sic: "patition")
    └── Image/aligned/train_00001_aligned.jpg ... test_3068_aligned.jpg   (100x100 RGB)
        Image/original/train_00001.jpg ...                                  (optional)

Labels 1..7 = Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral; the split is the file
name prefix (12,271 ``train_``, 3,068 ``test_``). No identities are released (subject = -1).
"""
from __future__ import annotations

import os

from fer_nb.data.errors import DatasetSpec, check_size
from fer_nb.data.images import load_images, still_labels
from fer_nb.data.schema import EXPRESSIONS, FaceArrays

#: RAF-DB's own order: label k (1-based) is RAFDB_ORDER[k - 1].
RAFDB_ORDER = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
#: RAF-DB label (1..7) -> canonical index of :data:`fer_nb.data.schema.EXPRESSIONS`.
RAFDB_TO_CANONICAL = {1: 6, 2: 3, 3: 2, 4: 4, 5: 5, 6: 1, 7: 0}

SPEC = DatasetSpec(
    name="rafdb",
    layout="""\
rafdb/                       (or rafdb/basic/)
├── EmoLabel/list_patition_label.txt    train_00001.jpg 5   (labels 1..7)
└── Image/
    ├── aligned/train_00001_aligned.jpg ... test_3068_aligned.jpg   (unzip aligned.zip)
    └── original/train_00001.jpg ...                                (only for aligned=False)""",
    obtain="http://www.whdeng.cn/raf/model1.html (academic licence agreement signed by a "
           "faculty member, e-mailed to the authors)",
    splits=("train", "test", "all"),
    default_split="train",
)
DEFAULT_SIZE = 100
DEFAULT_CHANNELS = 3


def load(root: str | os.PathLike, split: str | None = None, image_size: int | None = None,
         channels: int | None = None, aligned: bool = True) -> FaceArrays:
    """RAF-DB basic: 7 classes in canonical order, default 100 px RGB aligned faces."""
    root = SPEC.root(root)
    if (root / "basic").is_dir() and not (root / "EmoLabel").is_dir():
        root = root / "basic"
    split = SPEC.split(split)
    size, ch = check_size(SPEC, image_size, channels, DEFAULT_SIZE, DEFAULT_CHANNELS)
    label_file = SPEC.file(root / "EmoLabel" / "list_patition_label.txt",
                           "label file EmoLabel/list_patition_label.txt")
    image_dir = SPEC.dir(root / "Image" / ("aligned" if aligned else "original"),
                         "Image/aligned/ (unzip aligned.zip)" if aligned else "Image/original/")
    paths, labels = [], []
    for line_no, line in enumerate(label_file.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise SPEC.error(f"list_patition_label.txt line {line_no}: expected '<name>.jpg <label>', "
                             f"got {line!r}", label_file)
        name, lab = parts
        try:
            code = int(lab)
        except ValueError:
            raise SPEC.error(f"list_patition_label.txt line {line_no}: label {lab!r} is not an integer",
                             label_file) from None
        if code not in RAFDB_TO_CANONICAL:
            raise SPEC.error(f"list_patition_label.txt line {line_no}: label {code} out of range 1..7 "
                             f"({', '.join(RAFDB_ORDER)})", label_file)
        prefix = name.split("_", 1)[0]
        if prefix not in ("train", "test"):
            raise SPEC.error(f"list_patition_label.txt line {line_no}: image {name!r} does not start "
                             "with train_ or test_", label_file)
        if split != "all" and prefix != split:
            continue
        stem, ext = os.path.splitext(name)
        paths.append(image_dir / (f"{stem}_aligned{ext}" if aligned else name))
        labels.append(RAFDB_TO_CANONICAL[code])
    if not paths:
        raise SPEC.error(f"no images of split {split!r} listed in list_patition_label.txt", label_file)
    images = load_images(paths, image_size=size, channels=ch, spec=SPEC)
    return FaceArrays(images, still_labels(len(paths), labels, domain=1), "rafdb", EXPRESSIONS[:7],
                      {"root": str(root), "split": split, "aligned": aligned,
                       "dataset_order": RAFDB_ORDER})
