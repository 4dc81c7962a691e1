"""The catalogue of bad inputs tried against the book's public entry points (issue #19).

Every case builds its input in a fresh folder and calls the public function a reader would call;
``tests/test_reliability_bad_inputs.py`` checks that each one raises an error from inside
``fer_nb`` (never a raw traceback from torch or numpy) and that book/reliability.md lists it.
``ACCEPTED`` lists inputs that used to fail and are now read correctly.

    python tests/bad_inputs.py      # prints the Markdown table of book/reliability.md

Paths in the printed messages are shortened to ``<tmp>``. The loss functions' bad inputs are
catalogued by their own tests (tests/test_losses_*.py) and added to the page's table from there.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fer_nb import config, io, report, train  # noqa: E402
from fer_nb.data import registry, splits  # noqa: E402
from fer_nb.data.schema import FaceArrays  # noqa: E402
from fer_nb.seed import seed_everything  # noqa: E402

Case = tuple[str, str, Callable[[Path], object]]  # (area, what was tried, run(tmp))
CASES: list[Case] = []
ACCEPTED: list[Case] = []


def case(area: str, what: str, into: list = CASES):
    def deco(fn):
        into.append((area, what, fn))
        return fn
    return deco


def resolve(t: Path, **kw):
    kw.setdefault("device", "cpu")
    kw.setdefault("out_dir", t / "run")
    return config.resolve(kw.pop("notebook", "toolkit_tour"), **kw)


def notebook_namespace(t: Path, **injected) -> dict:
    """A kernel's globals after the parameters cell and papermill's injected cell."""
    ns = {"__name__": "__main__", "SCALE": "smoke", "DATASET": "synthfacs", "DATA_ROOT": None, "DEVICE": "cpu",
          "SEEDS": 1, "OUT_DIR": str(t / "run"), "config": config}
    ns.update(injected)
    exec("cfg = config.resolve('toolkit_tour', SCALE, DATASET, DATA_ROOT, DEVICE, SEEDS, OUT_DIR)", ns)
    return ns


# ------------------------------------------------------------------ run parameters (config.resolve)
for _what, _kw in [
    ("SCALE='huge'", dict(scale="huge")),
    ("SCALE='Small' (wrong case)", dict(scale="Small")),
    ("SCALE=1", dict(scale=1)),
    ("DATASET='imagenet'", dict(dataset="imagenet")),
    ("DATASET='rafdb' with no DATA_ROOT and no FER_NB_DATA", dict(notebook="large_margin", dataset="rafdb")),
    ("DEVICE='tpu'", dict(device="tpu")),
    ("DEVICE=0", dict(device=0)),
    ("SEEDS=0", dict(seeds=0)),
    ("SEEDS=-1", dict(seeds=-1)),
    ("SEEDS='[0, 1]' (papermill -p)", dict(seeds="[0, 1]")),
    ("SEEDS='3'", dict(seeds="3")),
    ("SEEDS=[1, 'a']", dict(seeds=[1, "a"])),
    ("SEEDS=True", dict(seeds=True)),
    ("SEEDS=[]", dict(seeds=[])),
    ("SEEDS=[0, 0]", dict(seeds=[0, 0])),
    ("SEEDS=2.0", dict(seeds=2.0)),
    ("hyperparameter no_such_knob=1", dict(no_such_knob=1)),
    ("hyperparameter epochs='3'", dict(epochs="3")),
    ("hyperparameter epochs=2.5", dict(epochs=2.5)),
    ("hyperparameter lr='fast'", dict(lr="fast")),
    ("OUT_DIR=3", dict(out_dir=3)),
    ("OUT_DIR=''", dict(out_dir="")),
    ("OUT_DIR='/proc/nope'", dict(out_dir="/proc/nope")),
    ("DATA_ROOT=5", dict(data_root=5)),
    ("notebook='no_such_notebook'", dict(notebook="no_such_notebook")),
    ("notebook=5", dict(notebook=5)),
]:
    case("parameters", _what)(lambda t, _kw=_kw: resolve(t, **dict(_kw)))


@case("parameters", "OUT_DIR is an existing file")
def _(t):
    (t / "f").write_text("x")
    return resolve(t, out_dir=t / "f")


@case("parameters", "papermill -p scale small (lower-case name)")
def _(t):
    return notebook_namespace(t, scale="small")


@case("parameters", "papermill -p device cpu (lower-case name)")
def _(t):
    return notebook_namespace(t, device="cpu")


@case("parameters", "papermill -p Seeds 3 (mixed case)")
def _(t):
    return notebook_namespace(t, Seeds=3)


@case("parameters", "seed_everything('0')")
def _(t):
    return seed_everything("0")


# ------------------------------------------------------------------ checkpoints and training
def _toy():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))

    def step(batch, ctx):
        loss = torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss}

    return model, opt, step, (lambda e: [(x, y)])


def _fit(t, ckpt=None, epochs=1, run_hash="h", model=None, step=None):
    m, opt, s, batches = _toy()
    model = model or m
    if model is not m:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return train.fit({"m": model}, {"o": opt}, step or s, batches, epochs, checkpoint=ckpt, run_hash=run_hash,
                     progress=False)


def _good_checkpoint(t):
    ckpt = t / "checkpoints" / "run-h.pt"
    _fit(t, ckpt)
    return ckpt


@case("checkpoints", "a truncated checkpoint in OUT_DIR")
def _(t):
    ckpt = _good_checkpoint(t)
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    return _fit(t, ckpt, 2)


@case("checkpoints", "an empty (0-byte) checkpoint")
def _(t):
    ckpt = _good_checkpoint(t)
    ckpt.write_bytes(b"")
    return _fit(t, ckpt, 2)


@case("checkpoints", "a text file named like a checkpoint")
def _(t):
    ckpt = _good_checkpoint(t)
    ckpt.write_text("hello")
    return _fit(t, ckpt, 2)


@case("checkpoints", "a malicious checkpoint (pickled os.system call)")
def _(t):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    ckpt = t / "c.pt"
    torch.save({"run_hash": "h", "x": Evil()}, ckpt)
    return _fit(t, ckpt)


@case("checkpoints", "a checkpoint of another configuration at the same path")
def _(t):
    return _fit(t, _good_checkpoint(t), 2, run_hash="other")


@case("checkpoints", "a tensor file that is not a training checkpoint")
def _(t):
    io.save_torch({"weights": torch.ones(2)}, t / "c.pt")
    return _fit(t, t / "c.pt")


@case("checkpoints", "a checkpoint of a model with other layer shapes")
def _(t):
    return _fit(t, _good_checkpoint(t), 2, model=torch.nn.Linear(5, 2))


@case("checkpoints", "load_torch of a missing file")
def _(t):
    return io.load_torch(t / "absent.pt")


@case("training", "a loss that becomes NaN")
def _(t):
    return _fit(t, step=lambda b, c: {"loss": torch.tensor(math.nan)})


@case("training", "fit(epochs=-1)")
def _(t):
    return _fit(t, epochs=-1)


@case("training", "fit(epochs=2.5)")
def _(t):
    return _fit(t, epochs=2.5)


# ------------------------------------------------------------------ results files
@case("results", "save_json with NaN")
def _(t):
    return io.save_json({"acc": math.nan}, t / "m.json")


@case("results", "save_json with a nested inf")
def _(t):
    return io.save_json({"tables": {"t": {"row": {"acc": math.inf}}}}, t / "m.json")


@case("results", "save_json of an object JSON cannot hold")
def _(t):
    return io.save_json({"x": object()}, t / "m.json")


@case("results", "write_metrics with a NaN table entry")
def _(t):
    return report.write_metrics(resolve(t), {"t": {"r": {"acc": math.nan}}}, {"acc": 1.0})


@case("results", "load_paper of an unknown paper")
def _(t):
    return report.load_paper("no_such_paper")


@case("results", "compare with an unknown table")
def _(t):
    return report.compare("large_margin", "table99")


@case("results", "summarise_seeds([])")
def _(t):
    return report.summarise_seeds([])


# ------------------------------------------------------------------ samples, splits
@case("samples", "FaceArrays with float images")
def _(t):
    return FaceArrays(torch.zeros(2, 1, 4, 4), {"expression": torch.zeros(2, dtype=torch.long)}, "x")


@case("samples", "FaceArrays whose labels have other row counts than the images")
def _(t):
    return FaceArrays(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), {"expression": torch.zeros(3, dtype=torch.long)}, "x")


@case("samples", "FaceArrays with an unknown label key")
def _(t):
    return FaceArrays(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), {"emotion": torch.zeros(2, dtype=torch.long)}, "x")


@case("splits", "subject_kfold with k=1")
def _(t):
    return splits.subject_kfold([0, 1, 2], 1)


@case("splits", "subject_kfold with more folds than subjects")
def _(t):
    return splits.subject_kfold([0, 0, 1], 3)


@case("splits", "labelled_split asking for more labels than exist")
def _(t):
    return splits.labelled_split([0, 1, 0, 1], 10)


@case("splits", "train_val_by_subject with val_fraction=1.5")
def _(t):
    return splits.train_val_by_subject([0, 1, 2, 3], 1.5)


# ------------------------------------------------------------------ real datasets
def fer_row(code=0, usage="Training", n=2304, value="10"):
    return f"{code},{' '.join([value] * n)},{usage}\n"


def fer_csv(t: Path, body: str, header: str = "emotion,pixels,Usage\n", raw: bytes | None = None) -> Path:
    folder = t / "data" / "fer2013"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fer2013.csv").write_bytes(raw if raw is not None else (header + body).encode())
    return t / "data"


def load(name, root, **kw):
    return registry.load(name, root, cache=False, image_size=16, **kw)


@case("datasets", "registry.load of an unknown dataset name")
def _(t):
    return load("imagenet", t)


@case("datasets", "registry.load with no root and no FER_NB_DATA")
def _(t):
    saved = os.environ.pop("FER_NB_DATA", None)
    try:
        return registry.load("rafdb")
    finally:
        if saved is not None:
            os.environ["FER_NB_DATA"] = saved


@case("datasets", "a data root that does not exist")
def _(t):
    return load("rafdb", t / "absent")


@case("datasets", "a data root without the dataset's folder")
def _(t):
    (t / "fer2013").mkdir()
    return load("rafdb", t)


@case("datasets", "an unknown split")
def _(t):
    return load("fer2013", fer_csv(t, fer_row()), split="validation_set")


@case("datasets", "an unknown loader option")
def _(t):
    return load("fer2013", fer_csv(t, fer_row()), crop=True)


@case("datasets", "image_size=0")
def _(t):
    return registry.load("fer2013", fer_csv(t, fer_row()), cache=False, image_size=0)


@case("datasets", "channels=2")
def _(t):
    return registry.load("fer2013", fer_csv(t, fer_row()), cache=False, channels=2)


@case("datasets", "FER2013: an empty CSV")
def _(t):
    return load("fer2013", fer_csv(t, "", header=""))


@case("datasets", "FER2013: a CSV with other columns")
def _(t):
    return load("fer2013", fer_csv(t, fer_row(), header="label,image,split\n"))


@case("datasets", "FER2013: emotion 9")
def _(t):
    return load("fer2013", fer_csv(t, fer_row(code=9)))


@case("datasets", "FER2013: emotion 'happy'")
def _(t):
    return load("fer2013", fer_csv(t, fer_row(code="happy")))


@case("datasets", "FER2013: Usage 'Train'")
def _(t):
    return load("fer2013", fer_csv(t, fer_row(usage="Train")))


@case("datasets", "FER2013: 2303 pixels in a row")
def _(t):
    return load("fer2013", fer_csv(t, fer_row(n=2303)))


@case("datasets", "FER2013: a non-integer pixel")
def _(t):
    return load("fer2013", fer_csv(t, fer_row(value="1.5")))


@case("datasets", "FER2013: a row with a missing field")
def _(t):
    return load("fer2013", fer_csv(t, "0,1 2 3\n"))


@case("datasets", "FER2013: a CSV in Latin-1 (not UTF-8)")
def _(t):
    return load("fer2013", fer_csv(t, "", raw="émotion,pixels,Usage\n".encode("latin-1") + fer_row().encode()))


def rafdb(t: Path, labels: str, images: dict[str, Image.Image | bytes] | None = None) -> Path:
    root = t / "data" / "rafdb"
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "Image" / "aligned").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text(labels)
    if images is None:
        images = {"train_00001_aligned.jpg": Image.new("RGB", (100, 100), (120, 80, 60))}
    for name, img in images.items():
        if isinstance(img, bytes):
            (root / "Image" / "aligned" / name).write_bytes(img)
        else:
            img.save(root / "Image" / "aligned" / name)
    return t / "data"


@case("datasets", "RAF-DB: label 8")
def _(t):
    return load("rafdb", rafdb(t, "train_00001.jpg 8\n"), split="train")


@case("datasets", "RAF-DB: label 'x'")
def _(t):
    return load("rafdb", rafdb(t, "train_00001.jpg x\n"), split="train")


@case("datasets", "RAF-DB: a label line with three fields")
def _(t):
    return load("rafdb", rafdb(t, "train_00001.jpg 1 2\n"), split="train")


@case("datasets", "RAF-DB: an image name without train_/test_")
def _(t):
    return load("rafdb", rafdb(t, "img_00001.jpg 1\n"), split="train")


@case("datasets", "RAF-DB: a listed image that is missing")
def _(t):
    return load("rafdb", rafdb(t, "train_00002.jpg 1\n"), split="train")


@case("datasets", "RAF-DB: a corrupt image file")
def _(t):
    return load("rafdb", rafdb(t, "train_00001.jpg 1\n", {"train_00001_aligned.jpg": b"\xff\xd8not a jpeg"}),
                split="train")


@case("datasets", "RAF-DB: a truncated JPEG")
def _(t):
    import io as _io

    buf = _io.BytesIO()
    Image.new("RGB", (100, 100), (1, 2, 3)).save(buf, "JPEG")
    return load("rafdb", rafdb(t, "train_00001.jpg 1\n", {"train_00001_aligned.jpg": buf.getvalue()[:300]}),
                split="train")


@case("datasets", "RAF-DB: a 1x1 image")
def _(t):
    return load("rafdb", rafdb(t, "train_00001.jpg 1\n", {"train_00001_aligned.jpg": Image.new("RGB", (1, 1))}),
                split="train")


@case("datasets", "RAF-DB: a 3x3000 image")
def _(t):
    return load("rafdb", rafdb(t, "train_00001.jpg 1\n", {"train_00001_aligned.jpg": Image.new("RGB", (3, 3000))}),
                split="train")


@case("datasets", "RAF-DB: a 40x400 image (10:1)")
def _(t):
    return load("rafdb", rafdb(t, "train_00001.jpg 1\n", {"train_00001_aligned.jpg": Image.new("RGB", (40, 400))}),
                split="train")


@case("datasets", "RAF-DB: no images of the asked split")
def _(t):
    return load("rafdb", rafdb(t, "train_00001.jpg 1\n"), split="test")


@case("datasets", "RAF-DB: the label file is missing")
def _(t):
    root = rafdb(t, "train_00001.jpg 1\n")
    (root / "rafdb" / "EmoLabel" / "list_patition_label.txt").unlink()
    return load("rafdb", root, split="train")


@case("datasets", "AFEW-VA: a clip annotation that is not JSON")
def _(t):
    clip = t / "data" / "afew_va" / "001"
    clip.mkdir(parents=True)
    (clip / "001.json").write_text("{not json")
    return load("afew_va", t / "data")


@case("datasets", "AFEW-VA: a folder without clip folders")
def _(t):
    (t / "data" / "afew_va").mkdir(parents=True)
    return load("afew_va", t / "data")


# ------------------------------------------------------------------ accepted now (used to fail)
@case("datasets", "FER2013: a CSV saved with a UTF-8 BOM", ACCEPTED)
def _(t):
    data = load("fer2013", fer_csv(t, "", raw=b"\xef\xbb\xbf" + b"emotion,pixels,Usage\n" + fer_row().encode()))
    assert len(data) == 1
    return "loaded (1 image)"


@case("datasets", "RAF-DB: a label file saved with a UTF-8 BOM", ACCEPTED)
def _(t):
    data = load("rafdb", rafdb(t, "\ufefftrain_00001.jpg 1\n"), split="train")
    assert len(data) == 1
    return "loaded (1 image)"


@case("datasets", "DATA_ROOT pointing at the dataset folder itself (…/rafdb)", ACCEPTED)
def _(t):
    data = load("rafdb", rafdb(t, "train_00001.jpg 1\n") / "rafdb", split="train")
    assert len(data) == 1
    return "loaded (1 image), as `python -m fer_nb.data check rafdb …/rafdb` accepts it"


# ------------------------------------------------------------------ running and printing
def run(fn: Callable[[Path], object]) -> BaseException | object:
    """Run a case in a fresh folder; return the exception it raised (or its result)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            return fn(Path(tmp))
        except Exception as exc:  # noqa: BLE001 - the point is to look at it
            exc.tmp = tmp
            return exc


def raised_in(exc: BaseException) -> str:
    """The file of the innermost traceback frame (where the error was raised)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return frames[-1].filename if frames else ""


def message(exc: BaseException) -> str:
    text = str(exc)
    tmp = getattr(exc, "tmp", None)
    if tmp:
        text = text.replace(os.path.realpath(tmp), "<tmp>").replace(tmp, "<tmp>")
    return text.replace(str(ROOT), "<repo>")   # the page holds no machine's paths


def first_line(text: str, limit: int = 230) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _cell(text: str) -> str:
    """A table cell: no pipes, and no ``<...>`` that Markdown would take for HTML."""
    return text.replace("|", "/").replace("<", "&lt;").replace(">", "&gt;")


def markdown() -> str:
    rows = ["| # | area | input tried | error raised (first line of the message) |", "|---|---|---|---|"]
    for i, (area, what, fn) in enumerate(CASES, 1):
        out = run(fn)
        shown = (f"`{type(out).__name__}`: {first_line(message(out))}" if isinstance(out, BaseException)
                 else f"NO ERROR: {out!r}")
        rows.append(f"| {i} | {area} | {what} | {_cell(shown)} |")
    for j, (area, what, fn) in enumerate(ACCEPTED, len(CASES) + 1):
        out = run(fn)
        shown = (f"FAILED: `{type(out).__name__}`: {first_line(message(out))}" if isinstance(out, BaseException)
                 else f"accepted: {out}")
        rows.append(f"| {j} | {area} | {what} | {_cell(shown)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    os.environ.setdefault("FER_NB_PLAIN_PROGRESS", "1")
    torch.set_num_threads(1)
    print(markdown())
