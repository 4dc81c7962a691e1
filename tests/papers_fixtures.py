"""Tiny datasets in the real on-disk formats, for the paper-protocol tests (FER+, CK+ original
release with FACS files and whole frames, MMI sessions, SFEW folders, EmotioNet table)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

FERPLUS_FOLDERS = {"train": "FER2013Train", "val": "FER2013Valid", "test": "FER2013Test"}
# FER+ vote columns: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF
FERPLUS_CLASSES = 8


def _img(path: Path, size: tuple[int, int], rng, mode: str = "L", face: bool = False) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    shape = (h, w) if mode == "L" else (h, w, 3)
    arr = rng.integers(0, 60, shape, dtype=np.uint8)
    if face:   # a bright square in the middle of a dark frame: what the central crop must keep
        arr[h // 2 - h // 6:h // 2 + h // 6, w // 2 - h // 6:w // 2 + h // 6] = 220
    Image.fromarray(arr, mode).save(path)
    return arr


def make_ferplus(root: Path, per_split=(40, 8, 16), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    base = root / "ferplus"
    for (split, folder), n in zip(FERPLUS_FOLDERS.items(), per_split):
        rows = []
        for i in range(n):
            name = f"fer{split}{i:05d}.png"
            _img(base / folder / name, (48, 48), rng)
            votes = [0] * 10
            votes[i % FERPLUS_CLASSES] = 10
            rows.append([name, "(0, 0, 48, 48)", *votes])
        with open(base / folder / "label.csv", "w", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerows(rows)


#: CK+ emotion codes used by the fixture: 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise
CK_CODES_AUS = {1: [4, 5, 7, 23], 2: [12, 14], 3: [9, 15, 16], 4: [1, 2, 4, 5, 20, 26], 5: [6, 12, 25],
                6: [1, 4, 15, 17], 7: [1, 2, 5, 26]}


def make_ckplus(root: Path, n_subjects: int = 6, frames: int = 4, size=(80, 62), seed: int = 0) -> None:
    """Whole frames (80x62, a bright 'face' in the middle), every subject shows every emotion."""
    rng = np.random.default_rng(seed)
    base = root / "ckplus"
    for s in range(1, n_subjects + 1):
        for q, (code, aus) in enumerate(CK_CODES_AUS.items(), start=1):
            sd, qd = f"S{s:03d}", f"{q:03d}"
            for f in range(1, frames + 1):
                _img(base / "cohn-kanade-images" / sd / qd / f"{sd}_{qd}_{f:08d}.png", size, rng, face=True)
            last = f"{sd}_{qd}_{frames:08d}"
            e = base / "Emotion" / sd / qd / f"{last}_emotion.txt"
            e.parent.mkdir(parents=True, exist_ok=True)
            e.write_text(f"   {code:.7e}\n")
            fa = base / "FACS" / sd / qd / f"{last}_facs.txt"
            fa.parent.mkdir(parents=True, exist_ok=True)
            fa.write_text("".join(f"   {a:.7e}   {3:.7e}\n" for a in aus))


def make_mmi(root: Path, n_subjects: int = 4, frames: int = 5, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    base = root / "mmi"
    rows = ["session,subject,emotion"]
    session = 1
    for s in range(1, n_subjects + 1):
        for emo in ("anger", "disgust", "fear", "happiness", "sadness", "surprise"):
            for f in range(frames):
                _img(base / "Sessions" / str(session) / f"{f:05d}.png", (72, 58), rng, face=True)
            rows.append(f"{session},{s},{emo}")
            session += 1
    (base / "labels.csv").write_text("\n".join(rows) + "\n")


def make_sfew(root: Path, per_class=(4, 2), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    base = root / "sfew"
    for split, n in zip(("Train", "Val"), per_class):
        for cls in ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"):
            for k in range(n):
                _img(base / split / cls / f"{cls}_{k}.png", (40, 40), rng, mode="RGB")


def make_emotionet(root: Path, n=(24, 12, 24), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    base = root / "emotionet"
    aus = (1, 2, 4, 5, 6, 9, 12, 17, 20, 25, 26, 43)
    rows = [["image", *[f"AU{a}" for a in aus], "split"]]
    for split, k in zip(("train", "test", "unlabelled"), n):
        for i in range(k):
            name = f"{split}_{i}.jpg"
            _img(base / "images" / name, (32, 32), rng, mode="RGB")
            vals = ["999"] * len(aus) if split == "unlabelled" else [str(int(v)) for v in rng.random(len(aus)) < 0.3]
            rows.append([f"http://example.org/{name}", *vals, split])
    (base / "labels.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
