"""Errors of the real-dataset loaders: every failure names the dataset, its layout and its source.

The real FER datasets are licence-gated, so a reader assembles them by hand and the commonest
failure is a folder in a slightly different shape. Every loader therefore fails with one
:class:`DatasetError` whose message says *which* dataset, *what* is wrong (with the path), the
*expected layout* as a short tree, and *where to obtain* the data officially. Loaders never fall
back to synthetic data.

Each dataset module declares one :class:`DatasetSpec` (name, layout tree, source, splits) and
raises through it, so the three parts of the message can never drift apart.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


class DatasetError(RuntimeError):
    """A real dataset is missing, in the wrong layout, or holds bad files/labels.

    Attributes: ``dataset`` (registry name), ``problem`` (what went wrong), ``layout`` (expected
    tree), ``obtain`` (official source), ``path`` (the offending path, if any), ``kind``
    (``"absent_split"`` when the folder is fine but lacks the requested split, else ``"invalid"``).
    """

    def __init__(self, dataset: str, problem: str, layout: str = "", obtain: str = "",
                 path: str | os.PathLike | None = None, kind: str = "invalid") -> None:
        self.dataset = dataset
        self.kind = kind  # "invalid", or "absent_split" when a valid copy simply lacks that split
        self.problem = problem
        self.layout = layout
        self.obtain = obtain
        self.path = None if path is None else str(path)
        msg = f"[{dataset}] {problem}"
        if self.path is not None and self.path not in problem:
            msg += f" (path: {self.path})"
        if layout:
            msg += "\nExpected layout:\n" + "\n".join("    " + ln for ln in layout.strip("\n").splitlines())
        if obtain:
            msg += f"\nObtain it from: {obtain}"
        msg += (f"\nCheck a folder with: python -m fer_nb.data check {dataset} /path/to/{dataset}")
        super().__init__(msg)


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset looks like on disk and where it comes from; builds its errors."""

    name: str
    layout: str
    obtain: str
    splits: tuple[str, ...]
    default_split: str

    def error(self, problem: str, path: str | os.PathLike | None = None,
              kind: str = "invalid") -> DatasetError:
        return DatasetError(self.name, problem, self.layout, self.obtain, path, kind)

    def split(self, split: str | None) -> str:
        """Validate a split name (``None`` = the dataset's default split)."""
        if split is None:
            return self.default_split
        for alias, canonical in (("validation", "val"), ("unlabeled", "unlabelled"), ("unlabelled", "unlabeled")):
            if split == alias and alias not in self.splits and canonical in self.splits:
                return canonical
        if not isinstance(split, str) or split not in self.splits:
            raise self.error(f"unknown split {split!r}; this dataset has splits {list(self.splits)}")
        return split

    def root(self, root: str | os.PathLike | None) -> Path:
        """The dataset folder, which must exist."""
        if root is None or str(root) == "":
            raise self.error("no dataset folder given: pass root=... (or set FER_NB_DATA and use "
                             "fer_nb.data.registry.load)")
        path = Path(root).expanduser()
        if not path.is_dir():
            raise self.error(f"dataset folder {path} does not exist or is not a folder", path)
        return path

    def dir(self, path: Path, what: str) -> Path:
        if not path.is_dir():
            raise self.error(f"missing folder {what}: {path}", path)
        return path

    def file(self, path: Path, what: str) -> Path:
        if not path.is_file():
            raise self.error(f"missing {what}: {path}", path)
        return path


def check_size(spec: DatasetSpec, image_size: int | None, channels: int | None,
               default_size: int, default_channels: int) -> tuple[int, int]:
    """Resolve ``image_size``/``channels`` (``None`` = dataset default) and validate them."""
    size = default_size if image_size is None else image_size
    ch = default_channels if channels is None else channels
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise spec.error(f"image_size must be a positive int (or None for {default_size}), got {image_size!r}")
    if ch not in (1, 3) or isinstance(ch, bool):
        raise spec.error(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    return size, ch
