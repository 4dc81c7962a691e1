"""EmotioNet (Benitez-Quiroz et al., CVPR 2016), action-unit occurrence table.

EmotioNet is distributed as tables of image URLs/paths with one column per AU (1 = present,
0 = absent, 999 = not annotated); the images are downloaded by the user. This loader reads::

    emotionet/
    ├── labels.csv          image,AU1,AU2,AU4,... (comma or tab separated; "1", "AU1" or "AU 1"
    │                       headers; an optional "split" column with train/val/test/unlabelled)
    └── images/<image>      the files named in the first column (for URLs: the file name only)

AUs of the book (:data:`fer_nb.data.schema.AUS`) missing from the table, and 999 entries, get
``aus_mask = False``; AUs the book does not use are ignored (listed in ``info``). No expression.
Rows whose ``split`` is ``unlabelled`` form the unlabelled pool (Racoviteanu et al. use ~400k
images beyond the labelled part); their AU entries may all be 999.
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

from fer_nb.data.errors import DatasetSpec, check_size
from fer_nb.data.images import load_images
from fer_nb.data.schema import AUS, EXPRESSIONS, FaceArrays

AU_RE = re.compile(r"^(?:au)?\s*_?(\d+)$", re.IGNORECASE)
IMAGE_COLUMNS = ("image", "file", "filename", "path", "url", "image_path", "subdirectory_filepath")
#: Code of an unannotated AU in EmotioNet tables.
MISSING = 999

SPEC = DatasetSpec(
    name="emotionet",
    layout="""\
emotionet/
├── labels.csv       image,AU1,AU2,AU4,...   values 0 / 1 / 999 (999 = not annotated)
│                    optional column split = train|val|test|unlabelled
└── images/<image>   (for URL rows: images/<file name of the URL>)""",
    obtain="https://cbcsl.ece.ohio-state.edu/dbform_emotionet.html (EmotioNet licence; the "
           "images are downloaded from the listed URLs)",
    splits=("all", "train", "val", "test", "unlabelled"),
    default_split="all",
)
DEFAULT_SIZE = 96
DEFAULT_CHANNELS = 3


def load(root: str | os.PathLike, split: str | None = None, image_size: int | None = None,
         channels: int | None = None) -> FaceArrays:
    """EmotioNet AU occurrence labels: ``aus`` (0/1) and ``aus_mask`` in the book's AU columns."""
    root = SPEC.root(root)
    split = SPEC.split(split)
    size, ch = check_size(SPEC, image_size, channels, DEFAULT_SIZE, DEFAULT_CHANNELS)
    table = SPEC.file(root / "labels.csv", "AU table labels.csv")
    img_root = SPEC.dir(root / "images", "images/")
    text = table.read_text()
    delim = "\t" if text.split("\n", 1)[0].count("\t") > text.split("\n", 1)[0].count(",") else ","
    rows = [r for r in csv.reader(text.splitlines(), delimiter=delim) if r]
    if len(rows) < 2:
        raise SPEC.error("labels.csv needs a header and at least one row", table)
    header = [h.strip() for h in rows[0]]
    low = [h.lower() for h in header]
    img_col = next((i for i, h in enumerate(low) if h in IMAGE_COLUMNS), 0)
    split_col = low.index("split") if "split" in low else None
    au_cols = {i: int(m.group(1)) for i, h in enumerate(header)
               if i not in (img_col, split_col) and (m := AU_RE.match(h))}
    if not au_cols:
        raise SPEC.error(f"labels.csv header {header} has no AU columns (AU1, AU2, ...)", table)
    if split != "all" and split_col is None:
        raise SPEC.error(f"split {split!r} needs a 'split' column in labels.csv; use split='all'", table,
                         kind="absent_split")
    paths, aus, mask = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise SPEC.error(f"labels.csv line {line}: {len(row)} fields, expected {len(header)}", table)
        if split_col is not None:
            s = row[split_col].strip().lower()
            s = "unlabelled" if s == "unlabeled" else s
            if s not in ("train", "val", "test", "unlabelled"):
                raise SPEC.error(f"labels.csv line {line}: split {s!r} is not train/val/test/unlabelled", table)
            if split != "all" and s != split:
                continue
        ref = row[img_col].strip()
        name = Path(urlparse(ref).path).name if "://" in ref else ref
        a = np.zeros(len(AUS), dtype=np.float32)
        m = np.zeros(len(AUS), dtype=bool)
        for i, au in au_cols.items():
            try:
                v = int(float(row[i]))
            except ValueError:
                v = None
            if v not in (0, 1, MISSING):
                raise SPEC.error(f"labels.csv line {line}: AU{au} = {row[i]!r}; expected 0, 1 or 999", table)
            if au in AUS and v != MISSING:
                a[AUS.index(au)] = v
                m[AUS.index(au)] = True
        paths.append(img_root / name)
        aus.append(a)
        mask.append(m)
    if not paths:
        raise SPEC.error(f"no rows for split {split!r}", table, kind="absent_split" if split != "all" else "invalid")
    images = load_images(paths, image_size=size, channels=ch, spec=SPEC)
    n = len(paths)
    labels = {"aus": torch.from_numpy(np.stack(aus)), "aus_mask": torch.from_numpy(np.stack(mask)),
              "subject": torch.full((n,), -1, dtype=torch.int64),
              "domain": torch.ones(n, dtype=torch.int64),
              "sequence": torch.full((n,), -1, dtype=torch.int64),
              "frame": torch.zeros(n, dtype=torch.int64)}
    return FaceArrays(images, labels, "emotionet", EXPRESSIONS[:7],
                      {"root": str(root), "split": split,
                       "aus_in_table": sorted(set(au_cols.values())),
                       "aus_ignored": sorted(set(au_cols.values()) - set(AUS))})
