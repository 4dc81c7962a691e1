"""Real-dataset loaders against tiny fixture datasets written here in each real on-disk format."""
from __future__ import annotations

import csv
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fer_nb.data import (affectnet, afew_va, affwild, cache, ckplus, emotionet, fer2013, jaffe,
                         mmi, rafdb, registry, sfew, ssl_benchmarks)
from fer_nb.data.__main__ import main as cli_main
from fer_nb.data.errors import DatasetError
from fer_nb.data.schema import AUS, EXPRESSIONS, FaceArrays

C = {name: i for i, name in enumerate(EXPRESSIONS)}  # canonical index by name
RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- fixture writers
def write_image(path: Path, size=(20, 16), mode="L", value: int | None = None, fmt=None) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    arr = (np.full(shape, value, np.uint8) if value is not None
           else RNG.integers(0, 256, shape, dtype=np.uint8))
    Image.fromarray(arr, mode).save(path, format=fmt)
    return arr


def pixels_str(arr: np.ndarray) -> str:
    return " ".join(str(int(v)) for v in arr.reshape(-1))


def make_fer2013_csv(folder: Path, rows=None, header="emotion,pixels,Usage") -> list[np.ndarray]:
    """rows: (emotion, usage) pairs; returns the 48x48 pixel arrays written."""
    rows = rows or [(0, "Training"), (6, "Training"), (3, "Training"), (5, "PublicTest"),
                    (1, "PrivateTest"), (2, "PrivateTest")]
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    with open(folder / "fer2013.csv", "w", newline="") as fh:
        fh.write(header + "\n")
        for emotion, usage in rows:
            arr = RNG.integers(0, 256, (48, 48), dtype=np.uint8)
            arrays.append(arr)
            fh.write(f'{emotion},"{pixels_str(arr)}",{usage}\n' if header.startswith("emotion,pixels")
                     else f'{emotion},{usage},"{pixels_str(arr)}"\n')
    return arrays


FERPLUS_VOTES = [  # (usage, name, 10 votes: neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF)
    ("Training", "fer0000000.png", [6, 0, 0, 0, 4, 0, 0, 0, 0, 0]),   # neutral (6 > 5)
    ("Training", "fer0000001.png", [0, 0, 0, 0, 0, 0, 0, 0, 10, 0]),  # unknown -> dropped
    ("Training", "fer0000002.png", [3, 3, 0, 0, 2, 0, 0, 0, 0, 0]),   # no majority -> dropped
    ("Training", "", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),                # no image name -> dropped
    ("Training", "fer0000004.png", [0, 0, 0, 0, 0, 0, 0, 7, 3, 0]),   # contempt (7 > 5)
    ("PublicTest", "fer0000005.png", [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),  # all outliers -> dropped
    ("PublicTest", "fer0000006.png", [0, 0, 9, 1, 0, 0, 0, 0, 0, 0]),  # surprise
    ("PrivateTest", "fer0000007.png", [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  # NF -> dropped
    ("PrivateTest", "fer0000008.png", [0, 0, 0, 0, 0, 8, 2, 0, 0, 0]),  # disgust
]


def make_ferplus_csv(root: Path) -> list[np.ndarray]:
    usage_rows = [(0, u) for u, _, _ in FERPLUS_VOTES]
    arrays = make_fer2013_csv(root, usage_rows)
    with open(root / "fer2013new.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Usage", "Image name", *fer2013.FERPLUS_ORDER])
        for usage, name, votes in FERPLUS_VOTES:
            w.writerow([usage, name, *votes])
    return arrays


def make_ferplus_folders(root: Path) -> None:
    folders = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
    for usage, name, votes in FERPLUS_VOTES:
        if not name:
            continue
        folder = root / folders[usage]
        write_image(folder / name, (48, 48))
        with open(folder / "label.csv", "a", newline="") as fh:
            csv.writer(fh).writerow([name, "(0, 0, 48, 48)", *votes])


RAF_LABELS = [("train_00001.jpg", 1), ("train_00002.jpg", 4), ("train_00003.jpg", 7),
              ("test_0001.jpg", 6), ("test_0002.jpg", 2)]


def make_rafdb(root: Path, basic=True) -> Path:
    base = root / "basic" if basic else root
    (base / "EmoLabel").mkdir(parents=True)
    (base / "EmoLabel" / "list_patition_label.txt").write_text(
        "".join(f"{n} {lab}\n" for n, lab in RAF_LABELS))
    for n, _ in RAF_LABELS:
        write_image(base / "Image" / "aligned" / n.replace(".jpg", "_aligned.jpg"), (100, 100), "RGB")
    return base


def make_ckplus(root: Path) -> None:
    seqs = {("S005", "001"): (3, [1, 9, 25]), ("S010", "002"): (2, [12, 14]),
            ("S010", "004"): (5, None), ("S011", "001"): (None, None)}  # last one unlabelled
    for (s, q), (code, aus) in seqs.items():
        for f in range(1, 6):
            write_image(root / "cohn-kanade-images" / s / q / f"{s}_{q}_{f:08d}.png", (24, 20), value=f * 40)
        if code is not None:
            e = root / "Emotion" / s / q / f"{s}_{q}_00000005_emotion.txt"
            e.parent.mkdir(parents=True, exist_ok=True)
            e.write_text(f"   {code:.7e}\n")
        if aus is not None:
            fa = root / "FACS" / s / q / f"{s}_{q}_00000005_facs.txt"
            fa.parent.mkdir(parents=True, exist_ok=True)
            fa.write_text("".join(f"   {a:.7e}   {2:.7e}\n" for a in aus + [62]))


def make_mmi(root: Path, labels="session,subject,emotion\n1,1,anger\n2,1,6\n35,2,happiness\n") -> None:
    for session, n in (("1", 7), ("2", 6), ("35", 3)):
        for f in range(n):
            write_image(root / "Sessions" / session / f"{f:05d}.png", (20, 20), value=10 * f)
    (root / "labels.csv").write_text(labels)


def make_sfew(root: Path, wrapper=False) -> None:
    for split in ("Train", "Val"):
        base = root / split / f"{split}_Aligned_Faces" if wrapper else root / split
        for cls in ("Angry", "Happy", "Neutral", "Surprise"):
            for k in range(2 if split == "Train" else 1):
                write_image(base / cls / f"{cls}_{k}.png", (30, 36), "RGB")
    for k in range(3):
        write_image(root / "Test" / f"t{k}.png", (30, 36), "RGB")


def make_jaffe(root: Path) -> None:
    for name in ("KA.AN1.39.tiff", "KA.NE1.26.tiff", "YM.HA2.53.tiff", "TM.SU1.147.tiff", "NA.DI1.214.tiff"):
        write_image(root / name, (32, 32), fmt="TIFF")
    (root / "README").write_text("JAFFE")


def make_affectnet(root: Path) -> None:
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height",
              "facial_landmarks", "expression", "valence", "arousal"]
    train = [("1/a.jpg", 0, 0.5, -0.25), ("1/b.jpg", 7, -0.1, 0.2), ("2/c.png", 6, -0.8, 0.9),
             ("2/d.jpg", 9, 0.0, 0.0), ("3/e.jpg", 10, -2, -2), ("3/f.jpg", 1, -2, 0.3)]
    for fname, rows in (("training.csv", train), ("validation.csv", [("4/g.jpg", 3, 0.1, 0.6)])):
        with open(lists / fname, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(header)
            for path, expr, v, a in rows:
                w.writerow([path, 4, 6, 20, 20, "1.0;2.0;3.0;4.0", expr, v, a])
                if expr < 8:
                    write_image(root / "Manually_Annotated_Images" / path, (30, 32), "RGB")


def make_afew_va(root: Path) -> None:
    for clip, actor in (("001", "Jane"), ("002", "Bob")):
        frames = {}
        for f in range(3):
            key = f"{f:05d}"
            write_image(root / clip / f"{key}.png", (40, 30), "RGB")
            frames[key] = {"valence": f * 5 - 5, "arousal": 10 - f,
                           "landmarks": [[10.0, 8.0], [25.0, 20.0], [18.0, 14.0]]}
        (root / clip / f"{clip}.json").write_text(json.dumps(
            {"actor": actor, "video_id": clip, "frames": frames}))


def make_affwild1(root: Path) -> None:
    for video, n in (("105", 4), ("271", 3)):
        v = [0.1 * i for i in range(n)]
        a = [-0.2 * i for i in range(n)]
        for kind, vals in (("valence", v), ("arousal", a)):
            p = root / "annotations" / "train" / kind / f"{video}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text("".join(f"{x:.3f}\n" for x in vals))
        for i in range(n):
            if (video, i) != ("105", 2):  # a frame without a detected face
                write_image(root / "frames" / "train" / video / f"{i:05d}.jpg", (24, 24), "RGB")


def make_affwild2(root: Path) -> None:
    ann = root / "Annotations" / "VA_Estimation_Challenge"
    for split_dir, video, rows in (("Train_Set", "1-30-1280x720", ["0.5,0.2", "-5,-5", "0.1,-0.3"]),
                                   ("Validation_Set", "video5_left", ["-0.4,0.8"])):
        (ann / split_dir).mkdir(parents=True, exist_ok=True)
        (ann / split_dir / f"{video}.txt").write_text("valence,arousal\n" + "\n".join(rows) + "\n")
        for i in range(1, len(rows) + 1):
            write_image(root / "cropped_aligned" / video / f"{i:05d}.jpg", (28, 28), "RGB")


def make_emotionet(root: Path, sep=",") -> None:
    rows = [["image", "AU1", "AU2", "AU4", "AU6", "AU12", "AU60", "split"],
            ["http://example.org/img/x1.jpg", "1", "0", "999", "1", "0", "1", "train"],
            ["x2.jpg", "0", "999", "1", "0", "1", "0", "test"],
            ["sub/x3.png", "1", "1", "0", "0", "999", "999", "train"],
            ["x4.jpg", "999", "999", "999", "999", "999", "999", "unlabelled"]]
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text("\n".join(sep.join(r) for r in rows) + "\n")
    for name in ("x1.jpg", "x2.jpg", "sub/x3.png", "x4.jpg"):
        write_image(root / "images" / name, (26, 26), "RGB")


def assert_dataset_error(exc_info, dataset: str, *fragments: str) -> None:
    msg = str(exc_info.value)
    assert isinstance(exc_info.value, DatasetError)
    assert f"[{dataset}]" in msg
    assert "Expected layout" in msg and "Obtain it from" in msg, msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in:\n{msg}"


def check_schema(data: FaceArrays, n: int, size: int, channels: int) -> None:
    assert data.images.dtype == torch.uint8
    assert tuple(data.images.shape) == (n, channels, size, size)
    for key, v in data.labels.items():
        assert v.shape[0] == n, key


# ----------------------------------------------------------------------------- loaders
def test_fer2013_csv_splits_order_and_pixels(tmp_path):
    arrays = make_fer2013_csv(tmp_path)
    train = fer2013.load(tmp_path, "train")
    check_schema(train, 3, 48, 1)
    assert train.labels["expression"].tolist() == [C["anger"], C["neutral"], C["happiness"]]
    assert torch.equal(train.images[0, 0], torch.from_numpy(arrays[0]))  # native size: exact pixels
    assert train.class_names == EXPRESSIONS[:7] and train.info["source"] == "csv"
    assert fer2013.load(tmp_path, "val").labels["expression"].tolist() == [C["surprise"]]
    assert fer2013.load(tmp_path, "test").labels["expression"].tolist() == [C["disgust"], C["fear"]]
    both = fer2013.load(tmp_path, "all", image_size=32, channels=3)
    check_schema(both, 6, 32, 3)
    assert torch.equal(both.images[:, 0], both.images[:, 2])  # gray replicated to RGB
    assert (both.labels["subject"] == -1).all() and (both.labels["domain"] == 1).all()


def test_fer2013_icml_column_order(tmp_path):
    make_fer2013_csv(tmp_path, [(4, "Training"), (2, "PublicTest")], header="emotion, Usage, pixels")
    (tmp_path / "fer2013.csv").rename(tmp_path / "icml_face_data.csv")
    data = fer2013.load(tmp_path, "all")
    assert data.labels["expression"].tolist() == [C["sadness"], C["fear"]]


def test_fer2013_image_folders(tmp_path):
    for split, classes in (("train", ("angry", "happy", "neutral")), ("test", ("sad", "surprise"))):
        for cls in classes:
            write_image(tmp_path / split / cls / f"im_{cls}.jpg", (48, 48))
    train = fer2013.load(tmp_path, "train", image_size=40)
    check_schema(train, 3, 40, 1)
    assert train.labels["expression"].tolist() == [C["anger"], C["happiness"], C["neutral"]]
    assert fer2013.load(tmp_path, "test").labels["expression"].tolist() == [C["sadness"], C["surprise"]]
    assert len(fer2013.load(tmp_path, "all")) == 5


def test_ferplus_vote_rule():
    votes = np.array([v for _, _, v in FERPLUS_VOTES], dtype=float)
    maj = fer2013.ferplus_vote(votes, "majority").tolist()
    assert maj == [C["neutral"], -1, -1, C["happiness"], C["contempt"], -1, C["surprise"], -1, C["disgust"]]
    plu = fer2013.ferplus_vote(votes, "plurality").tolist()
    assert plu[2] == C["neutral"]  # 3-3-2 tie: first arg-max, as np.argmax in FERPlus


def test_ferplus_csv_join(tmp_path):
    arrays = make_ferplus_csv(tmp_path)
    train = fer2013.load_ferplus(tmp_path, "train")
    assert train.class_names == EXPRESSIONS and train.num_classes == 8
    assert train.labels["expression"].tolist() == [C["neutral"], C["contempt"]]
    assert torch.equal(train.images[1, 0], torch.from_numpy(arrays[4]))  # joined by row order
    assert fer2013.load_ferplus(tmp_path, "val").labels["expression"].tolist() == [C["surprise"]]
    assert fer2013.load_ferplus(tmp_path, "test").labels["expression"].tolist() == [C["disgust"]]
    assert len(fer2013.load_ferplus(tmp_path, "train", vote="plurality")) == 3


def test_ferplus_fer2013_csv_in_sibling_folder(tmp_path):
    make_ferplus_csv(tmp_path / "ferplus")
    (tmp_path / "fer2013").mkdir()
    (tmp_path / "ferplus" / "fer2013.csv").rename(tmp_path / "fer2013" / "fer2013.csv")
    assert len(registry.load("ferplus", tmp_path, split="all", cache=False)) == 4


def test_ferplus_folders(tmp_path):
    make_ferplus_folders(tmp_path / "data")
    with open(tmp_path / "data" / "FER2013Test" / "label.csv", "a") as fh:  # unquoted face box
        fh.write("fer0000009.png,(0, 0, 48, 48),0,0,0,0,0,0,0,0,0,10\n")
    data = fer2013.load_ferplus(tmp_path, "all", image_size=24)
    check_schema(data, 4, 24, 1)
    assert sorted(data.labels["expression"].tolist()) == sorted(
        [C["neutral"], C["contempt"], C["surprise"], C["disgust"]])
    assert fer2013.load_ferplus(tmp_path, "val").labels["expression"].tolist() == [C["surprise"]]


@pytest.mark.parametrize("basic", [True, False])
def test_rafdb(tmp_path, basic):
    make_rafdb(tmp_path, basic)
    train = rafdb.load(tmp_path, "train")
    check_schema(train, 3, 100, 3)
    assert train.labels["expression"].tolist() == [C["surprise"], C["happiness"], C["neutral"]]
    test = rafdb.load(tmp_path, "test", image_size=32, channels=1)
    check_schema(test, 2, 32, 1)
    assert test.labels["expression"].tolist() == [C["anger"], C["fear"]]


def test_ckplus_last_frames_and_neutral_first(tmp_path):
    make_ckplus(tmp_path)
    data = ckplus.load(tmp_path)
    check_schema(data, 9, 48, 1)  # 3 labelled sequences x last 3 frames (unlabelled skipped)
    assert data.class_names == EXPRESSIONS
    assert data.labels["expression"].tolist() == [C["disgust"]] * 3 + [C["contempt"]] * 3 + [C["happiness"]] * 3
    assert data.labels["subject"].tolist() == [5] * 3 + [10] * 6
    assert data.labels["frame"].tolist() == [2, 3, 4] * 3
    assert len(set(data.labels["sequence"].tolist())) == 3
    mask, aus = data.labels["aus_mask"], data.labels["aus"]
    assert mask[:6].all() and not mask[6:].any()  # S010/004 has no FACS file
    on = {AUS[j] for j in torch.nonzero(aus[0]).flatten().tolist()}
    assert on == {1, 9, 25}  # AU62 is not a book column
    assert data.images[:3, 0, 0, 0].tolist() == [120, 160, 200]  # frames 3..5 were written as 40*f
    withn = ckplus.load(tmp_path, frames=2, neutral_first=True, image_size=16)
    assert len(withn) == 9
    assert withn.labels["expression"].tolist()[:3] == [C["neutral"], C["disgust"], C["disgust"]]
    assert withn.labels["frame"].tolist()[:3] == [0, 3, 4] and not withn.labels["aus_mask"][0].any()


def test_ckplus_48_variant(tmp_path):
    for cls, name in (("anger", "S010_004_00000017.png"), ("contempt", "S138_008_00000009.png"),
                      ("happy", "S010_006_00000013.png")):
        write_image(tmp_path / "CK+48" / cls / name, (48, 48))
    data = ckplus.load(tmp_path)
    assert data.labels["expression"].tolist() == [C["anger"], C["contempt"], C["happiness"]]
    assert data.labels["subject"].tolist() == [10, 138, 10]
    assert data.labels["frame"].tolist() == [17, 9, 13]


def test_mmi_middle_frames(tmp_path):
    make_mmi(tmp_path)
    data = mmi.load(tmp_path, image_size=20)
    check_schema(data, 9, 20, 1)
    assert data.labels["expression"].tolist() == [C["anger"]] * 3 + [C["surprise"]] * 3 + [C["happiness"]] * 3
    assert data.labels["frame"].tolist() == [2, 3, 4, 1, 2, 3, 0, 1, 2]
    assert data.labels["subject"].tolist() == [1] * 6 + [2] * 3
    assert data.images[0, 0, 0, 0].item() == 20  # frame 2 was written with value 20
    assert len(mmi.load(tmp_path, frames=1)) == 3


@pytest.mark.parametrize("wrapper", [False, True])
def test_sfew(tmp_path, wrapper):
    make_sfew(tmp_path, wrapper)
    train = sfew.load(tmp_path, "train")
    check_schema(train, 8, 96, 3)
    assert train.labels["expression"].tolist() == [C["anger"]] * 2 + [C["happiness"]] * 2 + \
        [C["neutral"]] * 2 + [C["surprise"]] * 2
    assert len(sfew.load(tmp_path, "val")) == 4
    test = sfew.load(tmp_path, "test", image_size=16)
    assert (test.labels["expression"] == -1).all() and len(test) == 3


def test_jaffe(tmp_path):
    make_jaffe(tmp_path / "jaffedbase")
    data = jaffe.load(tmp_path, image_size=32)
    check_schema(data, 5, 32, 1)
    assert data.labels["expression"].tolist() == [C["anger"], C["neutral"], C["disgust"], C["surprise"],
                                                  C["happiness"]]
    assert data.labels["subject"].tolist() == [0, 0, 5, 7, 9]  # KA, KA, NA, TM, YM
    ramp = np.tile(np.arange(32, dtype=np.uint16) * 2000, (32, 1))  # a 16-bit TIFF is rescaled
    Image.fromarray(ramp).save(tmp_path / "jaffedbase" / "KA.AN1.39.tiff", format="TIFF")
    img = jaffe.load(tmp_path, image_size=32).images[0, 0]
    assert img[0, 0].item() == 0 and img[0, -1].item() == 255 and (img[:, 1:] >= img[:, :-1]).all()


def test_affectnet(tmp_path):
    make_affectnet(tmp_path)
    data = affectnet.load(tmp_path, "train", image_size=24)
    check_schema(data, 4, 24, 3)
    assert data.class_names == EXPRESSIONS
    assert data.labels["expression"].tolist() == [C["neutral"], C["contempt"], C["anger"], C["happiness"]]
    va = data.labels["va"]
    assert va[0].tolist() == [0.5, -0.25] and math.isnan(va[3, 0].item()) and va[3, 1].item() == pytest.approx(0.3)
    assert data.info["dropped_8_10"] == 2
    cropped = affectnet.load(tmp_path, "train", image_size=24, crop=True)
    assert not torch.equal(cropped.images, data.images)
    val = affectnet.load(tmp_path, "validation")  # alias of "val"
    assert val.labels["expression"].tolist() == [C["surprise"]]
    capped = affectnet.load(tmp_path, "train", image_size=8, max_per_class=1)
    assert len(capped) == 4


def test_affectnet_npy_release(tmp_path):
    for split, items in (("train_set", [("0", "6", "-0.5", "0.25"), ("1", "8", "0", "0"),
                                        ("2", "7", "-2", "0.5")]),
                         ("val_set", [("9", "1", "0.75", "0.1")])):
        for stem, exp, val, aro in items:
            write_image(tmp_path / split / "images" / f"{stem}.jpg", (32, 32), "RGB")
            ann = tmp_path / split / "annotations"
            ann.mkdir(parents=True, exist_ok=True)
            for suffix, value in (("exp", exp), ("val", val), ("aro", aro)):
                np.save(ann / f"{stem}_{suffix}.npy", np.array(value))  # stored as strings, as released
    data = affectnet.load(tmp_path, "train", image_size=16)
    assert data.info["source"] == "npy" and data.info["dropped_8_10"] == 1
    assert data.labels["expression"].tolist() == [C["anger"], C["contempt"]]
    assert data.labels["va"][0].tolist() == [-0.5, 0.25] and math.isnan(data.labels["va"][1, 0].item())
    assert affectnet.load(tmp_path, "val").labels["expression"].tolist() == [C["happiness"]]
    (tmp_path / "val_set" / "annotations" / "9_aro.npy").unlink()
    with pytest.raises(DatasetError, match="missing annotation file 9_aro.npy"):
        affectnet.load(tmp_path, "val")


def test_afew_va(tmp_path):
    make_afew_va(tmp_path)
    data = afew_va.load(tmp_path, image_size=16)
    check_schema(data, 6, 16, 3)
    assert torch.allclose(data.labels["va"][:3], torch.tensor([[-0.5, 1.0], [0.0, 0.9], [0.5, 0.8]]))
    assert data.labels["subject"].tolist() == [1, 1, 1, 0, 0, 0]  # Bob=0, Jane=1
    assert data.labels["sequence"].tolist() == [1, 1, 1, 2, 2, 2]
    assert "expression" not in data.labels
    full = afew_va.load(tmp_path, image_size=16, crop=False, frame_step=2)
    assert len(full) == 4 and not torch.equal(full.images[0], data.images[0])


def test_affwild1_and_affwild2(tmp_path):
    make_affwild1(tmp_path / "a1")
    d1 = affwild.load(tmp_path / "a1", "all", image_size=16)
    check_schema(d1, 6, 16, 3)  # 7 annotated frames, one without an image
    assert d1.info["frames_without_image"] == 1
    assert d1.labels["frame"].tolist() == [0, 1, 3, 0, 1, 2]
    assert d1.labels["va"][2].tolist() == pytest.approx([0.3, -0.6])
    assert d1.labels["sequence"].tolist() == [0, 0, 0, 1, 1, 1]
    make_affwild2(tmp_path / "a2")
    d2 = affwild.load(tmp_path / "a2", "train", image_size=16)
    assert torch.allclose(d2.labels["va"], torch.tensor([[0.5, 0.2], [0.1, -0.3]]))  # -5 row dropped
    assert d2.labels["frame"].tolist() == [0, 2]
    assert len(affwild.load(tmp_path / "a2", "val")) == 1
    assert len(affwild.load(tmp_path / "a2", "all")) == 3
    # public Aff-Wild has only train labels: train/test are a seeded hold-out of whole videos
    tr = affwild.load(tmp_path / "a1", "train", image_size=8)
    te = affwild.load(tmp_path / "a1", "test", image_size=8)
    assert tr.info["holdout"] and len(tr) + len(te) == 6
    assert not set(tr.info["videos"]) & set(te.info["videos"])
    assert len(tr) == 3 and len(te) == 3


def test_afew_va_person_independent_holdout(tmp_path):
    make_afew_va(tmp_path)
    tr = afew_va.load(tmp_path, "train", image_size=8, test_fraction=0.5)
    te = afew_va.load(tmp_path, "test", image_size=8, test_fraction=0.5)
    assert len(tr) == len(te) == 3
    assert not set(tr.labels["subject"].tolist()) & set(te.labels["subject"].tolist())
    again = afew_va.load(tmp_path, "test", image_size=8, test_fraction=0.5)
    assert torch.equal(again.labels["subject"], te.labels["subject"])


@pytest.mark.parametrize("sep", [",", "\t"])
def test_emotionet(tmp_path, sep):
    make_emotionet(tmp_path, sep)
    data = emotionet.load(tmp_path, image_size=16)
    check_schema(data, 4, 16, 3)
    aus, mask = data.labels["aus"], data.labels["aus_mask"]
    col = {a: AUS.index(a) for a in (1, 2, 4, 6, 12, 25)}
    assert mask[0, col[4]].item() is False and mask[0, col[1]].item() is True  # 999 -> masked
    assert aus[0, col[1]] == 1 and aus[0, col[6]] == 1 and aus[0, col[12]] == 0
    assert not mask[:, col[25]].any()  # AU25 not in the table
    assert data.info["aus_ignored"] == [60]
    assert len(emotionet.load(tmp_path, "train", image_size=16)) == 2
    pool = emotionet.load(tmp_path, "unlabeled", image_size=16)  # alias of "unlabelled"
    assert len(pool) == 1 and not pool.labels["aus_mask"].any()
    with pytest.raises(DatasetError, match="no rows for split 'val'"):
        emotionet.load(tmp_path, "val")


def _write_cifar10(root: Path):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        data = RNG.integers(0, 256, (2, 3072), dtype=np.uint8)
        with open(base / name, "wb") as fh:
            pickle.dump({"data": data, "labels": [3, 9]}, fh)
    with open(base / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                     "horse", "ship", "truck"]}, fh)


def test_ssl_benchmarks_cifar10_and_svhn(tmp_path, monkeypatch):
    import scipy.io
    import torchvision.datasets as tvd

    # fixture files are not the real ones, so torchvision's md5 check is bypassed here only
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(tvd.SVHN, "_check_integrity", lambda self: True)
    _write_cifar10(tmp_path / "cifar10")
    data = registry.load("cifar10", tmp_path, split="train", cache=False)
    check_schema(data, 10, 32, 3)
    assert data.class_names[3] == "cat" and data.labels["expression"].tolist()[:2] == [3, 9]
    (tmp_path / "svhn").mkdir()
    scipy.io.savemat(tmp_path / "svhn" / "test_32x32.mat",
                     {"X": RNG.integers(0, 256, (32, 32, 3, 4), dtype=np.uint8), "y": np.array([[10], [1], [5], [10]])})
    sv = ssl_benchmarks.load("svhn", tmp_path / "svhn", "test", image_size=16, channels=1)
    check_schema(sv, 4, 16, 1)
    assert sv.labels["expression"].tolist() == [0, 1, 5, 0]


# ----------------------------------------------------------------------------- registry, cache, CLI
def test_registry_env_root_and_cache(tmp_path, monkeypatch):
    make_rafdb(tmp_path / "rafdb")
    monkeypatch.setenv("FER_NB_DATA", str(tmp_path))
    cdir = tmp_path / "cache"
    first = registry.load("rafdb", split="test", image_size=20, cache=cdir)
    files = list(cdir.glob("rafdb-*.npz"))
    assert len(files) == 1 and first.info["cache"] == str(files[0])
    with np.load(files[0], allow_pickle=False) as z:  # plain arrays: loads without pickle
        assert z["images"].dtype == np.uint8
    second = registry.load("rafdb", split="test", image_size=20, cache=cdir)
    assert torch.equal(first.images, second.images)
    assert all(torch.equal(first.labels[k], second.labels[k]) for k in first.labels)
    assert second.class_names == first.class_names and second.info["split"] == "test"
    registry.load("rafdb", split="test", image_size=24, cache=cdir)  # other args -> other entry
    assert len(list(cdir.glob("rafdb-*.npz"))) == 2
    img = tmp_path / "rafdb" / "basic" / "Image" / "aligned" / "test_0001_aligned.jpg"
    write_image(img, (100, 100), "RGB", value=7)
    os.utime(img, ns=(1, 10**18))  # a changed file invalidates the key
    third = registry.load("rafdb", split="test", image_size=20, cache=cdir)
    assert len(list(cdir.glob("rafdb-*.npz"))) == 3 and (third.images[0] == 7).all()


def test_cache_ignores_corrupt_file(tmp_path):
    make_jaffe(tmp_path / "jaffe")
    args = {"image_size": 8}
    key = cache.cache_key("jaffe", tmp_path / "jaffe", args)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / f"jaffe-{key[:24]}.npz").write_bytes(b"not a zip")
    with pytest.warns(UserWarning, match="unreadable dataset cache"):
        data = cache.cached("jaffe", tmp_path / "jaffe", args,
                            lambda: jaffe.load(tmp_path / "jaffe", image_size=8), tmp_path / "c")
    assert len(data) == 5


def test_registry_names_cover_brief():
    assert set(registry.NAMES) == {"fer2013", "ferplus", "rafdb", "ckplus", "mmi", "sfew", "jaffe",
                                   "affectnet", "afew_va", "affwild", "emotionet", "cifar10", "cifar100",
                                   "svhn", "stl10"}


def test_cli_check_ok_and_fail(tmp_path, capsys):
    for split, cls in (("train", "angry"), ("test", "happy")):
        write_image(tmp_path / "fer2013" / split / cls / "a.jpg", (48, 48))
    assert cli_main(["check", "fer2013", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "train: 1 images" in out and "anger=1" in out and "val: not present" in out and "OK" in out
    assert cli_main(["check", "rafdb", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "[rafdb]" in err and "Expected layout" in err


def test_cli_subprocess_exit_code(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "fer_nb.data", "check", "nosuchset", str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "unknown dataset name 'nosuchset'" in r.stderr and "rafdb" in r.stderr


# ----------------------------------------------------------------------------- bad input
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _fer_bad_row(tmp_path, row: str):
    make_fer2013_csv(tmp_path)
    with open(tmp_path / "fer2013.csv", "a") as fh:
        fh.write(row + "\n")
    return lambda: fer2013.load(tmp_path)


def _edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


def bad_missing_root(t):
    return "fer2013", lambda: fer2013.load(t / "absent"), ["does not exist"]


def bad_root_is_file(t):
    (t / "f").write_text("x")
    return "rafdb", lambda: rafdb.load(t / "f"), ["not a folder"]


def bad_fer_empty_folder(t):
    return "fer2013", lambda: fer2013.load(t), ["neither fer2013.csv"]


def bad_fer_pixel_count(t):
    return "fer2013", _fer_bad_row(t, '3,"1 2 3",Training'), ["line 8", "3 pixel values", "2304"]


def bad_fer_emotion_range(t):
    return "fer2013", _fer_bad_row(t, f'7,"{" ".join(["0"] * 2304)}",Training'), ["emotion 7 out of range"]


def bad_fer_usage(t):
    return "fer2013", _fer_bad_row(t, f'1,"{" ".join(["0"] * 2304)}",Validation'), ["Usage 'Validation'"]


def bad_fer_pixel_value(t):
    return "fer2013", _fer_bad_row(t, f'1,"{" ".join(["300"] * 2304)}",Training'), ["outside 0..255"]


def bad_fer_pixel_token(t):
    return "fer2013", _fer_bad_row(t, f'1,"{" ".join(["7"] * 2303)} x",Training'), ["pixels are not integers"]


def bad_fer_pixel_float(t):
    return "fer2013", _fer_bad_row(t, f'1,"{" ".join(["7"] * 2303)} 1.5",Training'), ["pixels are not integers"]


def bad_fer_header(t):
    (t / "fer2013.csv").write_text("label,image\n1,2\n")
    return "fer2013", lambda: fer2013.load(t), ["emotion,pixels,Usage"]


def bad_fer_unknown_class_folder(t):
    write_image(t / "train" / "confused" / "a.jpg", (48, 48))
    return "fer2013", lambda: fer2013.load(t), ["unknown class folder 'confused'"]


def bad_fer_folder_val(t):
    write_image(t / "train" / "angry" / "a.jpg", (48, 48))
    return "fer2013", lambda: fer2013.load(t, "val"), ["no val split"]


def bad_unknown_split(t):
    make_fer2013_csv(t)
    return "fer2013", lambda: fer2013.load(t, "dev"), ["unknown split 'dev'", "'train', 'val', 'test', 'all'"]


def bad_ferplus_row_mismatch(t):
    make_ferplus_csv(t)
    _edit(t / "fer2013new.csv", "PrivateTest,fer0000008.png,0,0,0,0,0,8,2,0,0,0\n", "")
    return "ferplus", lambda: fer2013.load_ferplus(t), ["8 rows", "row by row"]


def bad_ferplus_missing_pixels(t):
    make_ferplus_csv(t)
    (t / "fer2013.csv").unlink()
    return "ferplus", lambda: fer2013.load_ferplus(t), ["not the FER2013 pixels"]


def bad_ferplus_votes(t):
    make_ferplus_folders(t)
    with open(t / "FER2013Train" / "label.csv", "a") as fh:
        fh.write('fer0000009.png,"(0, 0, 48, 48)",11,0,0,0,0,0,0,0,0,0\n')
    return "ferplus", lambda: fer2013.load_ferplus(t), ["10 integer vote counts"]


def bad_rafdb_missing_labels(t):
    base = make_rafdb(t)
    (base / "EmoLabel" / "list_patition_label.txt").unlink()
    return "rafdb", lambda: rafdb.load(t), ["list_patition_label.txt"]


def bad_rafdb_label_range(t):
    base = make_rafdb(t)
    _edit(base / "EmoLabel" / "list_patition_label.txt", "train_00002.jpg 4", "train_00002.jpg 8")
    return "rafdb", lambda: rafdb.load(t), ["line 2", "label 8 out of range 1..7"]


def bad_rafdb_missing_image(t):
    base = make_rafdb(t)
    (base / "Image" / "aligned" / "train_00003_aligned.jpg").unlink()
    return "rafdb", lambda: rafdb.load(t), ["missing", "train_00003_aligned.jpg"]


def bad_rafdb_corrupt_image(t):
    base = make_rafdb(t)
    (base / "Image" / "aligned" / "train_00002_aligned.jpg").write_bytes(b"\x00garbage" * 20)
    return "rafdb", lambda: rafdb.load(t), ["cannot decode image", "train_00002_aligned.jpg"]


def bad_rafdb_truncated_image(t):
    base = make_rafdb(t)
    _truncate(base / "Image" / "aligned" / "test_0001_aligned.jpg")
    return "rafdb", lambda: rafdb.load(t, "test"), ["cannot decode image", "test_0001_aligned.jpg"]


def bad_ckplus_emotion_code(t):
    make_ckplus(t)
    (t / "Emotion" / "S005" / "001" / "S005_001_00000005_emotion.txt").write_text("   9.0000000e+00\n")
    return "ckplus", lambda: ckplus.load(t), ["emotion code 9 out of range 0..7"]


def bad_ckplus_subject_folder(t):
    make_ckplus(t)
    e = t / "Emotion" / "S005"
    e.rename(t / "Emotion" / "subject5")
    return "ckplus", lambda: ckplus.load(t), ["not named S<number>"]


def bad_ckplus48_filename(t):
    write_image(t / "CK+48" / "anger" / "face1.png", (48, 48))
    return "ckplus", lambda: ckplus.load(t), ["S<subject>_<sequence>_<frame>"]


def bad_ckplus_png_truncated(t):
    make_ckplus(t)
    _truncate(t / "cohn-kanade-images" / "S010" / "002" / "S010_002_00000004.png")
    return "ckplus", lambda: ckplus.load(t), ["cannot decode image", "S010_002_00000004.png"]


def bad_mmi_missing_labels(t):
    make_mmi(t)
    (t / "labels.csv").unlink()
    return "mmi", lambda: mmi.load(t), ["labels.csv"]


def bad_mmi_emotion(t):
    make_mmi(t, "session,subject,emotion\n1,1,boredom\n")
    return "mmi", lambda: mmi.load(t), ["emotion 'boredom'"]


def bad_mmi_short_session(t):
    make_mmi(t)
    return "mmi", lambda: mmi.load(t, frames=5), ["session 35 has 3 frames"]


def bad_sfew_missing_split(t):
    (t / "Val").mkdir()
    return "sfew", lambda: sfew.load(t, "train"), ["missing split folder Train/"]


def bad_jaffe_expression(t):
    make_jaffe(t)
    write_image(t / "KA.XX1.40.tiff", (32, 32), fmt="TIFF")
    return "jaffe", lambda: jaffe.load(t), ["unknown expression code 'XX'"]


def bad_affectnet_expression(t):
    make_affectnet(t)
    _edit(t / "Manually_Annotated_file_lists" / "training.csv", "1.0;2.0;3.0;4.0,9,", "1.0;2.0;3.0;4.0,11,")
    return "affectnet", lambda: affectnet.load(t), ["expression 11 out of range 0..10"]


def bad_affectnet_valence(t):
    make_affectnet(t)
    _edit(t / "Manually_Annotated_file_lists" / "training.csv", ",0,0.5,-0.25", ",0,1.5,-0.25")
    return "affectnet", lambda: affectnet.load(t), ["valence 1.5 outside [-1, 1]"]


def bad_affectnet_no_images(t):
    make_affectnet(t)
    (t / "Manually_Annotated_Images").rename(t / "images")
    return "affectnet", lambda: affectnet.load(t), ["Manually_Annotated_Images/"]


def bad_afew_missing_json(t):
    make_afew_va(t)
    (t / "002" / "002.json").unlink()
    return "afew_va", lambda: afew_va.load(t), ["002/002.json"]


def bad_afew_range(t):
    make_afew_va(t)
    _edit(t / "001" / "001.json", '"arousal": 10', '"arousal": 12')
    return "afew_va", lambda: afew_va.load(t), ["outside -10..10"]


def bad_affwild_length(t):
    make_affwild1(t)
    (t / "annotations" / "train" / "arousal" / "105.txt").write_text("0.1\n")
    return "affwild", lambda: affwild.load(t), ["4 valence but 1 arousal"]


def bad_affwild_range(t):
    make_affwild1(t)
    (t / "annotations" / "train" / "valence" / "271.txt").write_text("0.1\n1.5\n0.2\n")
    return "affwild", lambda: affwild.load(t), ["outside [-1, 1]"]


def bad_affwild2_header(t):
    make_affwild2(t)
    f = t / "Annotations" / "VA_Estimation_Challenge" / "Train_Set" / "1-30-1280x720.txt"
    f.write_text("0.5,0.2\n")
    return "affwild", lambda: affwild.load(t), ["header valence,arousal"]


def bad_affwild_val_split(t):
    make_affwild1(t)
    return "affwild", lambda: affwild.load(t, "val"), ["no annotations for split 'val'", "never released"]


def bad_emotionet_value(t):
    make_emotionet(t)
    _edit(t / "labels.csv", "x2.jpg,0,", "x2.jpg,2,")
    return "emotionet", lambda: emotionet.load(t), ["AU1 = '2'", "0, 1 or 999"]


def bad_emotionet_no_au_columns(t):
    t.mkdir(exist_ok=True)
    (t / "images").mkdir()
    (t / "labels.csv").write_text("image,smile\nx.jpg,1\n")
    return "emotionet", lambda: emotionet.load(t), ["no AU columns"]


def bad_cifar_absent(t):
    (t / "cifar10").mkdir()
    return "cifar10", lambda: registry.load("cifar10", t, cache=False), ["download=False", "cifar-10-batches-py"]


def bad_registry_unknown_name(t):
    return "raf", lambda: registry.load("raf", t), ["unknown dataset name 'raf'", "rafdb", "affectnet"]


def bad_registry_no_root(t):
    os.environ.pop("FER_NB_DATA", None)
    return "rafdb", lambda: registry.load("rafdb"), ["FER_NB_DATA"]


def bad_registry_missing_dataset_folder(t):
    (t / "fer2013").mkdir()
    return "rafdb", lambda: registry.load("rafdb", t, cache=t / "c"), ["rafdb does not exist"]


def bad_ferplus_label_fields(t):
    make_ferplus_folders(t)
    with open(t / "FER2013Test" / "label.csv", "a") as fh:
        fh.write("fer0000010.png,4,0,0\n")
    return "ferplus", lambda: fer2013.load_ferplus(t, "test"), ["4 fields"]


def bad_registry_unknown_option(t):
    make_rafdb(t / "rafdb")
    return "rafdb", lambda: registry.load("rafdb", t, vote="majority"), ["unknown option(s) ['vote']", "aligned"]


def bad_image_size(t):
    make_fer2013_csv(t)
    return "fer2013", lambda: fer2013.load(t, image_size=0), ["image_size must be a positive int"]


def bad_channels(t):
    make_rafdb(t)
    return "rafdb", lambda: rafdb.load(t, channels=2), ["channels must be 1"]


BAD_CASES = [f for name, f in sorted(globals().items()) if name.startswith("bad_")]


@pytest.mark.parametrize("case", BAD_CASES, ids=[f.__name__[4:] for f in BAD_CASES])
def test_bad_input_raises_clear_dataset_error(tmp_path, monkeypatch, case):
    monkeypatch.delenv("FER_NB_DATA", raising=False)
    dataset, call, fragments = case(tmp_path)
    with pytest.raises(DatasetError) as exc_info:
        call()
    if dataset == "raf":  # an unknown name has no layout to show; it lists the known names
        assert "[raf]" in str(exc_info.value)
        for frag in fragments:
            assert frag in str(exc_info.value)
        return
    assert_dataset_error(exc_info, dataset, *fragments)


def test_at_least_25_bad_input_cases():
    assert len(BAD_CASES) >= 25
