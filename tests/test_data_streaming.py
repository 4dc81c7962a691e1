"""Dataset cache streaming (issue #17): decodes stream into the cache file, loads memory-map it.

Small fixture folders in the real RAF-DB / FER2013 layouts; no network, no real datasets. The
mapping checks read ``/proc/self/maps`` (Linux) to prove the images tensor is backed by the cache
file itself rather than an in-RAM copy; peak-memory checks use ``tracemalloc`` (numpy reports its
array buffers to it), each paired with a control that shows the same measurement sees an in-RAM
decode.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tracemalloc
import warnings
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from fer_nb.data import cache, images, rafdb, registry
from fer_nb.data.errors import DatasetError
from fer_nb.data.schema import FaceArrays

HERE = Path(__file__).resolve().parent
ROW = 3 * 40 * 40  # bytes of one decoded RGB row at image_size=40

pytestmark = pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")


# ----------------------------------------------------------------------------- fixtures and helpers
def write_rafdb(root: Path, n: int, seed: int = 0, size: int = 40) -> Path:
    """A RAF-DB ``basic`` folder with ``n`` train images (``size`` px RGB JPEGs), labels cycling 1..7."""
    rng = np.random.default_rng(seed)
    base = root / "rafdb" / "basic"
    (base / "EmoLabel").mkdir(parents=True)
    (base / "Image" / "aligned").mkdir(parents=True)
    lines = []
    for i in range(1, n + 1):
        lines.append(f"train_{i:05d}.jpg {(i % 7) + 1}\n")
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(base / "Image" / "aligned" / f"train_{i:05d}_aligned.jpg")
    (base / "EmoLabel" / "list_patition_label.txt").write_text("".join(lines))
    return base


def image_files(root: Path) -> list[Path]:
    return sorted((root / "rafdb" / "basic" / "Image" / "aligned").iterdir())


def reference_decode(paths: list[Path], size: int = 40, channels: int = 3) -> torch.Tensor:
    """Rows decoded one by one by the decoder itself, stacked in RAM: the bytes any path must give."""
    return torch.from_numpy(np.stack([images._decode_one(p, size, channels, None) for p in paths]))


def mapped_from(tensor: torch.Tensor, path: Path) -> bool:
    """Whether ``tensor``'s memory lies in a mapping of the file ``path`` (per /proc/self/maps)."""
    ptr, target = tensor.data_ptr(), os.path.realpath(path)
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split(maxsplit=5)
            if len(parts) == 6 and parts[5].strip() == target:
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= ptr < hi:
                    return True
    return False


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.endswith(".tmp")] if folder.exists() else []


def load_rafdb(root: Path, cdir, **kw) -> FaceArrays:
    return registry.load("rafdb", root, split="train", image_size=40, cache=cdir, **kw)


def peak_bytes(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ----------------------------------------------------------------------------- mapped loads
def test_loaded_images_are_mapped_from_the_cache_file_and_identical(tmp_path):
    write_rafdb(tmp_path, 120)
    cdir = tmp_path / "cache"
    ref = reference_decode(image_files(tmp_path))
    first = load_rafdb(tmp_path, cdir)  # decoded now, streamed into the cache file
    (cache_file,) = cdir.glob("rafdb-*.npz")
    assert first.info["cache"] == str(cache_file) and temp_files(cdir) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "non-writable NumPy array" warning
        second, peak = peak_bytes(lambda: load_rafdb(tmp_path, cdir))  # read back: mapped, not read
    for data in (first, second):
        assert mapped_from(data.images, cache_file), "images must be backed by the cache file"
        assert data.images.dtype == torch.uint8 and torch.equal(data.images, ref)
    assert peak < ref.numel() // 3, f"loading the cache allocated {peak} bytes for {ref.numel()} bytes of images"
    assert torch.equal(load_rafdb(tmp_path, False).images, ref)  # the in-RAM decode: same bytes
    with np.load(cache_file, allow_pickle=False) as z:  # still a plain .npz of plain arrays
        assert np.array_equal(z["images"], ref.numpy()) and z["images"].dtype == np.uint8
    assert torch.equal(second.labels["expression"], load_rafdb(tmp_path, False).labels["expression"])


def test_from_array_decodes_stream_too_and_keep_their_bytes(tmp_path):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (30, 48, 48), dtype=np.uint8)
    (tmp_path / "fer2013").mkdir()
    with open(tmp_path / "fer2013" / "fer2013.csv", "w") as fh:
        fh.write("emotion,pixels,Usage\n")
        for i, arr in enumerate(pixels):
            fh.write(f'{i % 7},"{" ".join(map(str, arr.reshape(-1)))}",Training\n')
    kw = dict(split="train", image_size=60, channels=3)
    mapped = registry.load("fer2013", tmp_path, cache=tmp_path / "c", **kw)
    in_ram = registry.load("fer2013", tmp_path, cache=False, **kw)
    assert mapped_from(mapped.images, Path(mapped.info["cache"]))
    assert torch.equal(mapped.images, in_ram.images)
    assert torch.equal(in_ram.images, images.from_array(pixels, image_size=60, channels=3))
    # gray -> RGB at the native size (no resize) used to fail on an in-place op over expand()
    same_size = images.from_array(pixels, image_size=48, channels=3)
    assert torch.equal(same_size, torch.from_numpy(pixels)[:, None].repeat(1, 3, 1, 1))


def test_batches_indexing_and_subset_read_the_right_rows(tmp_path):
    write_rafdb(tmp_path, 50)
    cdir = tmp_path / "cache"
    load_rafdb(tmp_path, cdir)
    data = load_rafdb(tmp_path, cdir)
    cache_file = Path(data.info["cache"])
    in_ram = FaceArrays(data.images.clone(), {k: v.clone() for k, v in data.labels.items()},
                        data.name, data.class_names, dict(data.info))
    assert not mapped_from(in_ram.images, cache_file) and mapped_from(data.images, cache_file)
    got = list(data.batches(8, shuffle=True, generator=torch.Generator().manual_seed(5)))
    want = list(in_ram.batches(8, shuffle=True, generator=torch.Generator().manual_seed(5)))
    assert len(got) == len(want) == 7
    for g, w in zip(got, want):
        assert torch.equal(g["image"], w["image"]) and torch.equal(g["expression"], w["expression"])
    order = torch.randperm(50, generator=torch.Generator().manual_seed(5))[:8]
    assert torch.equal(got[0]["image"], data.images[order].float() / 255.0)
    assert torch.equal(data[17]["image"], in_ram[17]["image"])
    sub = data.subset([3, 41, 0])
    assert torch.equal(sub.images, in_ram.images[[3, 41, 0]]) and not mapped_from(sub.images, cache_file)
    assert mapped_from(data.to("cpu").images, cache_file)  # same device: no copy
    # copy-on-write: an in-place change stays in this process and never reaches the cache file
    data.images[0].fill_(0)
    assert torch.equal(load_rafdb(tmp_path, cdir).images, in_ram.images)


# ----------------------------------------------------------------------------- streaming decode
def test_first_decode_streams_in_chunks_with_bounded_peak_memory(tmp_path, monkeypatch):
    """Peak traced memory of a first decode must not grow with the pixels: between a folder of n and
    one of 3n images it may grow by the paths and labels (~0.5 kB an image), not by a row (4.8 kB)."""
    small, large, rows = 120, 360, 16
    write_rafdb(tmp_path / "small", small, seed=1)
    write_rafdb(tmp_path / "large", large, seed=2)
    monkeypatch.setattr(images, "CHUNK_BYTES", rows * ROW)
    writes: list[int] = []
    real_write = cache._ImagesWriter.write

    def counting_write(self, chunk):
        writes.append(len(chunk))
        real_write(self, chunk)

    monkeypatch.setattr(cache._ImagesWriter, "write", counting_write)
    load_rafdb(tmp_path / "small", False)  # warm-up: imports and one-time set-up are not measured
    peaks, data = {}, {}
    for cdir in ("cache", False):
        for name in ("small", "large"):
            data[cdir, name], peaks[cdir, name] = peak_bytes(
                lambda: load_rafdb(tmp_path / name, cdir and tmp_path / cdir))
    assert writes == [rows] * (small // rows) + [small % rows] + [rows] * (large // rows) + [large % rows], \
        "the decode must reach the cache file chunk by chunk"
    growth = (peaks["cache", "large"] - peaks["cache", "small"]) / (large - small)
    control = (peaks[False, "large"] - peaks[False, "small"]) / (large - small)
    assert control >= ROW, f"control: an in-RAM decode grew by only {control:.0f} traced bytes an image"
    assert growth < ROW / 3, f"a streamed decode grew by {growth:.0f} traced bytes an image (a row is {ROW})"
    for name in ("small", "large"):
        streamed = data["cache", name]
        assert mapped_from(streamed.images, Path(streamed.info["cache"]))
        assert torch.equal(streamed.images, data[False, name].images)
        assert torch.equal(streamed.images, reference_decode(image_files(tmp_path / name)))


def test_a_loader_that_changes_its_rows_gets_them_cached_as_returned(tmp_path, monkeypatch):
    write_rafdb(tmp_path, 70)
    monkeypatch.setattr(images, "CHUNK_BYTES", 8 * ROW)
    folder, cdir = tmp_path / "rafdb", tmp_path / "c"
    ref = reference_decode(image_files(tmp_path))

    def build():  # streams its decode, then returns other rows: the cache must hold what it returns
        data = rafdb.load(folder, split="train", image_size=40)
        return FaceArrays(data.images.flip(0).contiguous(), data.labels, data.name, data.class_names, data.info)

    def must_not_build():
        raise AssertionError("the cache should have been used")

    first = cache.cached("rafdb", folder, {"flip": 1}, build, cdir)
    again = cache.cached("rafdb", folder, {"flip": 1}, must_not_build, cdir)
    assert torch.equal(first.images, ref.flip(0)) and torch.equal(again.images, ref.flip(0))
    assert all(mapped_from(d.images, Path(d.info["cache"])) for d in (first, again))
    assert temp_files(cdir) == [] and len(list(cdir.iterdir())) == 1


# ----------------------------------------------------------------------------- atomicity
def test_a_failed_decode_leaves_no_cache_and_no_temp_file(tmp_path, monkeypatch):
    write_rafdb(tmp_path, 120)
    monkeypatch.setattr(images, "CHUNK_BYTES", 10 * ROW)
    bad = image_files(tmp_path)[95]
    good = bad.read_bytes()
    bad.write_bytes(good[: len(good) // 3])  # truncated JPEG, several chunks into the decode
    cdir = tmp_path / "cache"
    with pytest.raises(DatasetError, match="train_00096"):
        load_rafdb(tmp_path, cdir)
    assert list(cdir.iterdir()) == []
    bad.write_bytes(good)
    data = load_rafdb(tmp_path, cdir)
    assert torch.equal(data.images, reference_decode(image_files(tmp_path)))


def test_a_failed_write_warns_and_returns_correct_data_without_a_cache(tmp_path, monkeypatch):
    write_rafdb(tmp_path, 70)
    ref = reference_decode(image_files(tmp_path))
    monkeypatch.setattr(images, "CHUNK_BYTES", 8 * ROW)
    cdir = tmp_path / "cache"

    # 1. the disk fills while rows stream in: the decode is redone in RAM
    calls = []
    real_write = cache._ImagesWriter.write

    def failing_write(self, chunk):
        calls.append(1)
        if len(calls) == 3:
            raise cache.CacheWriteError("writing failed: [Errno 28] No space left on device")
        real_write(self, chunk)

    monkeypatch.setattr(cache._ImagesWriter, "write", failing_write)
    with pytest.warns(UserWarning, match="decoding into RAM instead"):
        data = load_rafdb(tmp_path, cdir)
    assert torch.equal(data.images, ref) and list(cdir.iterdir()) == []
    monkeypatch.setattr(cache._ImagesWriter, "write", real_write)

    # 2. writing the labels fails after every row is on disk: no cache, the mapped rows stay valid
    real_write_array = np.lib.format.write_array

    def failing_write_array(fh, array, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", failing_write_array)
    with pytest.warns(UserWarning, match="could not write dataset cache"):
        data = load_rafdb(tmp_path, cdir)
    assert torch.equal(data.images, ref) and list(cdir.iterdir()) == []
    monkeypatch.setattr(np.lib.format, "write_array", real_write_array)

    # 3. not enough free space for the images: decoded into RAM, nothing half-written
    monkeypatch.setattr(cache.shutil, "disk_usage",
                        lambda p: SimpleNamespace(total=10**6, used=10**6 - 100, free=100))
    with pytest.warns(UserWarning, match="GiB free"):
        data = load_rafdb(tmp_path, cdir)
    assert torch.equal(data.images, ref) and list(cdir.iterdir()) == []
    assert "cache" not in data.info


_KILLED_WRITER = """
import sys, time
from fer_nb.data import images, registry
images.CHUNK_BYTES = int(sys.argv[3])
real = images._decode_one
def slow(*a, **k):
    time.sleep(0.02)
    return real(*a, **k)
images._decode_one = slow
registry.load("rafdb", sys.argv[1], split="train", image_size=40, cache=sys.argv[2])
print("finished", flush=True)
"""


def test_a_killed_writer_leaves_no_trusted_cache_and_its_leftover_is_removed(tmp_path):
    n = 200
    write_rafdb(tmp_path, n)
    cdir = tmp_path / "cache"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(tmp_path), str(cdir), str(10 * ROW)],
                            env=env, stdout=subprocess.PIPE)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            temps = temp_files(cdir)
            if temps and temps[0].stat().st_size > 3 * 10 * ROW:  # three chunks on disk: mid-decode
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the writer ended before it could be killed: {proc.stdout.read()!r}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert list(cdir.glob("rafdb-*.npz")) == [], "a killed writer must not leave a cache file"
    (leftover,) = temp_files(cdir)
    assert leftover.stat().st_size < n * ROW  # killed mid-decode
    data = load_rafdb(tmp_path, cdir)  # decodes again; the dead writer's temp file is removed
    assert torch.equal(data.images, reference_decode(image_files(tmp_path)))
    assert temp_files(cdir) == [] and len(list(cdir.glob("rafdb-*.npz"))) == 1


def test_a_truncated_cache_file_is_not_trusted(tmp_path):
    write_rafdb(tmp_path, 30)
    cdir = tmp_path / "cache"
    ref = load_rafdb(tmp_path, cdir).images.clone()
    (cache_file,) = cdir.glob("rafdb-*.npz")
    blob = cache_file.read_bytes()
    cache_file.write_bytes(blob[: len(blob) // 2])
    with pytest.warns(UserWarning, match="ignoring unreadable dataset cache"):
        data = load_rafdb(tmp_path, cdir)
    assert torch.equal(data.images, ref) and cache_file.stat().st_size == len(blob)


# ----------------------------------------------------------------------------- old caches, format
def _write_format_1(path: Path, data: FaceArrays) -> None:
    """A cache file as fer_nb wrote it before streaming (format 1: images read whole, no version)."""
    import json

    meta = json.dumps({"name": data.name, "class_names": list(data.class_names), "info": {},
                       "labels": list(data.labels)})
    arrays = {"images": data.images.numpy(), "meta": np.array(meta)}
    arrays.update({f"label_{k}": v.numpy() for k, v in data.labels.items()})
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def test_old_format_caches_are_rebuilt_and_the_superseded_file_removed(tmp_path):
    write_rafdb(tmp_path, 20)
    folder, cdir = tmp_path / "rafdb", tmp_path / "cache"
    cdir.mkdir()
    ref = load_rafdb(tmp_path, False)
    stale = FaceArrays(torch.zeros_like(ref.images), ref.labels, "rafdb", ref.class_names)
    args = {"split": "train", "image_size": 40, "channels": None}
    old_path = cdir / f"rafdb-{cache.cache_key('rafdb', folder, args, version=1)[:24]}.npz"
    _write_format_1(old_path, stale)
    data = load_rafdb(tmp_path, cdir)
    assert torch.equal(data.images, ref.images), "a format-1 cache must not be used"
    assert not old_path.exists(), "the superseded format-1 file of the same key is removed"
    new_path = Path(data.info["cache"])
    assert new_path.exists() and new_path != old_path
    _write_format_1(new_path, stale)  # a format-1 file where a format-2 one belongs
    with pytest.warns(UserWarning, match="format-1 cache"):
        data = load_rafdb(tmp_path, cdir)
    assert torch.equal(data.images, ref.images) and mapped_from(data.images, new_path)
    assert torch.equal(load_rafdb(tmp_path, cdir).images, ref.images)


def test_zip64_images_member_is_mapped(tmp_path, monkeypatch):
    """Paper-size caches exceed 4 GiB: the zip64 local header of the images member is handled."""
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)
    rng = np.random.default_rng(9)
    data = FaceArrays(torch.from_numpy(rng.integers(0, 256, (12, 3, 20, 20), dtype=np.uint8)),
                      {"expression": torch.arange(12) % 7}, "toy")
    path = cache.save(tmp_path / "toy.npz", data)
    with zipfile.ZipFile(path) as zf:
        assert len(zf.getinfo("images.npy").extra) > 0  # zip64 extra field present
    back = cache.load(path)
    assert mapped_from(back.images, path) and torch.equal(back.images, data.images)
    assert torch.equal(back.labels["expression"], data.labels["expression"])
    with np.load(path, allow_pickle=False) as z:
        assert np.array_equal(z["images"], data.images.numpy())


def test_saving_a_cache_file_removes_a_dead_writers_temp_file_of_the_same_name(tmp_path, dead_pid):
    """``cache.save`` (no ``clean_stale`` sweep before it) clears a killed writer's leftover for its target."""
    target = tmp_path / "x.npz"
    dead = tmp_path / f".x.npz.pid{dead_pid}.ab12cd34.tmp"
    dead.write_bytes(b"x" * 100)
    data = FaceArrays(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), {"expression": torch.tensor([0, 1])}, "x", ("a", "b"))
    cache.save(target, data)
    assert temp_files(tmp_path) == [] and target.is_file()
    assert torch.equal(cache.load(target).images, data.images)
