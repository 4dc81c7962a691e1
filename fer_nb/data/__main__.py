"""``python -m fer_nb.data check NAME PATH``: validate a real dataset folder.

``PATH`` is the dataset folder itself or the folder holding ``NAME/``. Every split is loaded
(all images decoded, at a small size) and the image count per split and class is printed. On
any problem the dataset's error (what is wrong, the expected layout, where to obtain the data)
is printed to stderr and the exit code is 2. Splits a valid copy may simply lack (e.g. ``val``
of the FER2013 image-folder variant) are reported but do not fail the check.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fer_nb.data.errors import DatasetError


def _describe(data) -> str:
    parts = [f"{len(data)} images"]
    if "expression" in data.labels:
        parts.append(", ".join(f"{k}={v}" for k, v in data.counts().items()))
    if "va" in data.labels:
        va = data.labels["va"]
        parts.append(f"valence/arousal on {int(va.isfinite().all(1).sum())} images")
    if "aus_mask" in data.labels:
        parts.append(f"{int(data.labels['aus_mask'].any(1).sum())} images with AU labels")
    if "subject" in data.labels and bool((data.labels["subject"] >= 0).any()):
        parts.append(f"{int(data.labels['subject'].unique().numel())} subjects")
    return "; ".join(parts)


def check(name: str, path: str, splits: list[str] | None = None, image_size: int = 16) -> int:
    from fer_nb.data import registry

    try:
        spec = registry.spec(name)
    except DatasetError as exc:
        print(exc, file=sys.stderr)
        return 2
    p = Path(path).expanduser()
    folder = p / name if (p / name).is_dir() else p
    fn = registry.DATASETS[name][0]
    todo = splits or [s for s in spec.splits if s != "all" and "+" not in s] or ["all"]
    print(f"{name}: {folder}")
    ok = True
    for split in todo:
        try:
            data = fn(folder, split=split, image_size=image_size)
        except DatasetError as exc:
            if exc.kind == "absent_split" and split != spec.default_split and not splits:
                print(f"  {split}: not present ({exc.problem})")
                continue
            print(f"  {split}: FAILED", file=sys.stderr)
            print(exc, file=sys.stderr)
            ok = False
            break
        print(f"  {split}: {_describe(data)}")
    print("OK" if ok else "FAILED")
    return 0 if ok else 2


def main(argv: list[str] | None = None) -> int:
    from fer_nb.data.registry import NAMES

    parser = argparse.ArgumentParser(prog="python -m fer_nb.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="validate a dataset folder and print counts per split and class")
    c.add_argument("name", help=f"dataset name: {', '.join(NAMES)}")
    c.add_argument("path", help="the dataset folder, or the folder holding NAME/")
    c.add_argument("--split", action="append", help="check only this split (repeatable)")
    c.add_argument("--image-size", type=int, default=16, help="decode size for the check (default 16)")
    args = parser.parse_args(argv)
    return check(args.name, args.path, args.split, args.image_size)


if __name__ == "__main__":
    sys.exit(main())
