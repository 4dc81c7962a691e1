"""Decode a real dataset once into a ``uint8`` cache file; later loads memory-map its images.

**Key.** The cache key hashes :data:`FORMAT_VERSION`, the dataset folder's absolute path, the
loader name and arguments, and the relative path, size and modification time (ns) of every file
under the folder, so editing, adding or removing any file (or asking for another size/split)
decodes afresh.

**Format** (version 2). One file ``<dataset>-<key>.npz`` per entry: an *uncompressed*
(``ZIP_STORED``) zip of plain ``.npy`` members, exactly what ``numpy.savez`` writes, so
``numpy.load(path, allow_pickle=False)["images"]`` reads it like any ``.npz``:

* ``images.npy``: ``uint8 (N, C, H, W)``. Stored uncompressed, its bytes lie contiguous in the
  file, so :func:`load` memory-maps them in place (``numpy.memmap`` at the member's data offset)
  instead of reading them;
* ``label_<key>.npy``: one array per label, read into RAM (a few bytes per row);
* ``meta.npy``: a JSON string with the format version, the image shape, name, class names, info
  and label keys.

Nothing is pickled and every member is read with ``allow_pickle=False``, so a cache file cannot
run code. A file of another format version (version 1 held the images as an ordinary ``.npz``
member that was read whole into RAM) is never trusted: the version is part of the key and is
checked again in the file, so old caches are simply rebuilt; the version-1 file of the same key is
deleted once its replacement is written.

**When images are memory-mapped: always.** Mapping costs a page-table entry, not a copy, so small
datasets lose nothing, and one code path serves the 48 px test fixtures and EmotioNet's pool at
227 px alike (no size threshold whose other side the tests never run). Only the rows a batch
touches are read; the OS page cache keeps what fits in RAM and is shared by every process reading
the same dataset (several notebooks, papermill kernels). The mapping is copy-on-write
(``mmap_mode="c"``): the tensor is writable, so torch never warns about a non-writable array and an
in-place change cannot crash on a read-only page; the change stays private to the process (only
the pages it touches are copied into RAM) and never reaches the cache file.

Which operations on a :class:`~fer_nb.data.schema.FaceArrays` with mapped images read only the rows
they need: ``ds[i]``, ``ds.batches(...)``, ``len``, ``ds.images[a:b]`` (a view) and ``ds.subset``
(which copies just the selected rows into RAM, so a ``subset`` of most rows costs most of the
array). Which read or copy the *whole* array: ``to("cuda")`` (``to("cpu")`` of CPU data is a no-op
that stays mapped), :func:`~fer_nb.data.schema.concat`, and whole-tensor operations on ``images``
such as ``.float()``, ``.clone()``, ``.pin_memory()``, ``torch.save`` or passing the dataset to
DataLoader workers started with ``spawn``. Labels are always in RAM. fer_nb never rewrites a cache file in
place (a rebuild is renamed over it, a new inode), so a mapped file is never truncated under a
reader; removing the cache file while it is mapped is safe on Linux (the mapping keeps its inode).

**Streaming decode.** :func:`cached` opens the new cache file *before* the loader runs and hands it
to :func:`fer_nb.data.images.decode_into`: the loader's first ``load_images``/``from_array`` call
appends its rows to the ``images.npy`` member chunk by chunk (:data:`fer_nb.data.images.CHUNK_BYTES`)
and gets back the finished rows mapped from the file, so the first decode, too, never holds
``(N, C, H, W)`` in RAM. If a loader hands back images that are not those rows (it post-processed
them), they are written from the tensor at commit time instead, chunk by chunk.

**Atomicity.** The file is written under ``.<name>.pid<PID>.<random>.tmp`` beside the target (the
naming of :func:`fer_nb.io._atomic_write`), fsynced, renamed over the target and the folder fsynced:
a reader sees no file or a whole one, never images without labels or half the rows. A failed build
or write removes its temp file; a killed writer's temp file is removed by the next build into the
same folder (:func:`fer_nb.io.clean_stale_temp` rules: its process is gone). An unreadable cache
file is ignored with a warning and rebuilt; an unwritable cache folder, a full disk or a failed
write only warn, and the dataset is then decoded into RAM.

The cache folder is ``cache_dir`` if given, else ``$FER_NB_CACHE``, else ``~/.cache/fer_nb``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import shutil
import stat
import struct
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from fer_nb.data import images as images_mod
from fer_nb.data.schema import FaceArrays
from fer_nb.io import _umask, clean_stale_temp

CACHE_ENV = "FER_NB_CACHE"
#: 2: images memory-mapped from an uncompressed member, written while decoding (1: read whole)
FORMAT_VERSION = 2
_SKIP_DIRS = {".fer_nb_cache", "__pycache__", ".ipynb_checkpoints"}
_IMAGES = "images.npy"
_LOCAL_HEADER = struct.Struct("<4s5H3I2H")  # zip local file header (30 bytes)
_TEMP = re.compile(r"^\.(?P<name>.+\.npz)\.pid\d+\.[A-Za-z0-9_]+\.tmp$")


class CacheWriteError(RuntimeError):
    """Writing the cache file failed (disk full, I/O error) while rows were streamed into it.

    Not an ``OSError`` on purpose, so a loader's own ``except OSError`` never mistakes it for a
    bad image; :func:`cached` turns it into a warning and decodes into RAM instead.
    """


def default_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fer_nb").expanduser()


def fingerprint(folder: str | os.PathLike) -> str:
    """SHA-256 over (relative path, size, mtime_ns) of every file below ``folder``."""
    folder = Path(folder).resolve()
    h = hashlib.sha256()
    entries = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.stat(p)
            except OSError:
                continue
            entries.append(f"{os.path.relpath(p, folder)}\0{st.st_size}\0{st.st_mtime_ns}")
    for e in sorted(entries):
        h.update(e.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()


def cache_key(dataset: str, folder: str | os.PathLike, args: dict[str, Any], *,
              files: str | None = None, version: int | None = None) -> str:
    """The key of one cache entry. ``files`` is :func:`fingerprint` of ``folder`` (computed when not
    given); ``version`` defaults to :data:`FORMAT_VERSION` (older ones find superseded files)."""
    payload = json.dumps({"v": FORMAT_VERSION if version is None else version, "dataset": dataset,
                          "folder": str(Path(folder).resolve()), "args": args,
                          "files": fingerprint(folder) if files is None else files},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` header (magic, version 1.0, 64-byte aligned dict) of a C-order uint8 array."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def _map_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray:
    """Memory-map (copy-on-write) the uint8 ``.npy`` member ``info`` of the zip file ``path``.

    Raises ``ValueError`` for a member that is compressed, encrypted, not ``uint8 (N, C, H, W)`` in
    C order, or shorter than its header says (a truncated file).
    """
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise ValueError(f"{info.filename} in {path} is compressed or encrypted, so it cannot be memory-mapped")
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        raw = fh.read(_LOCAL_HEADER.size)
        if len(raw) != _LOCAL_HEADER.size or raw[:4] != b"PK\x03\x04":
            raise ValueError(f"no zip entry header for {info.filename} at byte {info.header_offset} of {path}")
        *_, name_len, extra_len = _LOCAL_HEADER.unpack(raw)
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        fh.seek(start)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"{info.filename} in {path} has .npy version {version}; expected 1.0 or 2.0")
        offset = fh.tell()
        size = os.fstat(fh.fileno()).st_size
    if dtype != np.uint8 or fortran or len(shape) != 4:
        raise ValueError(f"{info.filename} in {path} is {dtype} {shape} (fortran={fortran}); "
                         "expected C-order uint8 (N, C, H, W)")
    nbytes = int(np.prod(shape, dtype=np.int64))
    if info.file_size != offset - start + nbytes or offset + nbytes > size:
        raise ValueError(f"{info.filename} in {path} holds {info.file_size - (offset - start)} bytes of "
                         f"pixels, its header says {nbytes} (truncated file?)")
    if nbytes == 0:
        return np.zeros(shape, dtype=np.uint8)
    return np.memmap(path, dtype=np.uint8, mode="c", offset=offset, shape=shape)


def _same_rows(tensor: torch.Tensor, ref: torch.Tensor) -> bool:
    return (tensor.device == ref.device and tensor.data_ptr() == ref.data_ptr()
            and tensor.shape == ref.shape and tensor.stride() == ref.stride())


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _ImagesWriter:
    """Appends decoded rows to the ``images.npy`` member of a :class:`CacheFile` (see
    :class:`fer_nb.data.images.ImageWriter`); write errors become :class:`CacheWriteError`."""

    def __init__(self, owner: "CacheFile", shape: tuple[int, int, int, int]) -> None:
        self.owner, self.shape, self.rows = owner, tuple(int(d) for d in shape), 0
        header = _npy_header(self.shape)
        info = zipfile.ZipInfo(_IMAGES, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = len(header) + int(np.prod(self.shape, dtype=np.int64))  # picks zip64 when > 4 GiB
        self.info = info
        self.stream = self._guard(lambda: owner.zip.open(info, "w"))
        owner.writer = self  # registered before any write, so that discard() can close the member
        self._guard(lambda: self.stream.write(header))

    def _guard(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except OSError as exc:
            raise CacheWriteError(f"writing {self.owner.tmp} failed: {exc}") from exc

    def write(self, rows: np.ndarray) -> None:
        if rows.dtype != np.uint8 or tuple(rows.shape[1:]) != self.shape[1:]:
            raise ValueError(f"rows of {rows.dtype} {tuple(rows.shape)} written to a cache of {self.shape}")
        if self.rows + len(rows) > self.shape[0]:
            raise ValueError(f"{self.rows + len(rows)} rows written to a cache of {self.shape[0]}")
        rows = np.ascontiguousarray(rows)
        self._guard(lambda: self.stream.write(memoryview(rows).cast("B")))
        self.rows += len(rows)

    def finish(self) -> torch.Tensor:
        if self.rows != self.shape[0]:
            raise ValueError(f"the decode wrote {self.rows} of {self.shape[0]} rows to {self.owner.tmp}")
        self._guard(self.stream.close)
        self._guard(self.owner.fh.flush)
        tensor = torch.from_numpy(_map_member(self.owner.tmp, self.info))
        self.owner.streamed = tensor
        return tensor


class CacheFile:
    """One cache file being written: a temp file beside ``path``, renamed over it by :meth:`commit`.

    It is also the image sink of the build (:class:`fer_nb.data.images.ImageSink`): the first decode
    claims it and streams its rows into the ``images.npy`` member; later decodes of the same build
    are held in RAM. Opening raises ``OSError`` when the folder cannot be written.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temp(self.path)
        self.tmp = self.path.parent / f".{self.path.name}.pid{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        try:
            try:
                mode = stat.S_IMODE(os.stat(self.path).st_mode)  # replacing a file: keep its permissions
            except FileNotFoundError:
                mode = 0o666 & ~_umask()
            os.fchmod(fd, mode)
            self.fh = os.fdopen(fd, "w+b")
        except BaseException:
            os.close(fd)
            os.unlink(self.tmp)
            raise
        self.zip = zipfile.ZipFile(self.fh, "w", zipfile.ZIP_STORED, allowZip64=True)
        self.writer: _ImagesWriter | None = None
        self.streamed: torch.Tensor | None = None
        self.declined: str | None = None  # why a decode was not streamed here (no space)

    def claim(self, shape: tuple[int, int, int, int]) -> _ImagesWriter | None:
        """A writer for the first decode of the build (``None`` for later ones, or without room)."""
        if self.writer is not None or self.declined is not None:
            return None
        need = int(np.prod(shape, dtype=np.int64))
        try:
            free = shutil.disk_usage(self.tmp.parent).free
        except OSError:
            free = need
        if need > free:
            self.declined = (f"the images need {need / 2**30:.2f} GiB, the cache folder has {free / 2**30:.2f} "
                             f"GiB free; free space or point ${CACHE_ENV} (or cache=) at a bigger disk")
            warnings.warn(f"not streaming the decode into {self.path}: {self.declined}; decoding into RAM",
                          stacklevel=3)
            return None
        return _ImagesWriter(self, shape)  # sets self.writer

    def _write_images(self, tensor: torch.Tensor) -> torch.Tensor:
        writer = self.claim(tuple(tensor.shape))
        if writer is None:
            raise OSError(self.declined or f"cannot stream images into {self.tmp}")
        step = images_mod.chunk_rows(tensor.shape)
        for start in range(0, len(tensor), step):
            writer.write(tensor[start:start + step].cpu().contiguous().numpy())
        return writer.finish()

    def commit(self, data: FaceArrays) -> torch.Tensor:
        """Write ``data`` (its images unless they are the rows streamed here), rename the file over
        :attr:`path` and return the images memory-mapped from it. Raises ``OSError`` or
        :class:`CacheWriteError` when the disk refuses; the caller then :meth:`discard`\\ s it."""
        if self.declined is not None:
            raise OSError(self.declined)
        if self.streamed is None or not _same_rows(data.images, self.streamed):
            if self.writer is not None:  # the streamed rows are not the result: start a fresh file
                self.discard()
                self._open()
            self._write_images(data.images)
        images = self.streamed
        meta = json.dumps({"format": FORMAT_VERSION, "shape": list(images.shape), "name": data.name,
                           "class_names": list(data.class_names), "info": data.info, "labels": list(data.labels)},
                          default=lambda o: list(o) if isinstance(o, tuple) else str(o))
        members = {"meta": np.array(meta)}
        members.update({f"label_{k}": v.cpu().numpy() for k, v in data.labels.items()})
        for name, array in members.items():
            with self.zip.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)
        self.zip.close()
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)  # atomic on POSIX: readers see no file or the whole file
        _fsync_dir(self.path.parent)
        return images

    def discard(self) -> None:
        """Close and remove the temp file (tensors mapped from it stay valid on POSIX)."""
        closers = [self.zip.close, self.fh.close]
        if self.writer is not None:
            closers.insert(0, self.writer.stream.close)  # the zip refuses to close with a member open
        for close in closers:
            try:
                close()
            except Exception:  # noqa: BLE001 - cleaning up after a failure: its first error is what counts
                pass
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def save(path: str | os.PathLike, data: FaceArrays) -> Path:
    """Write ``data`` to the cache file ``path`` atomically (images copied from the tensor in chunks)."""
    out = CacheFile(path)
    try:
        out.commit(data)
    except BaseException:
        out.discard()
        raise
    return out.path


def load(path: str | os.PathLike) -> FaceArrays:
    """Read a cache file written by :func:`save`/:func:`cached`: labels into RAM, images memory-mapped.

    Raises ``ValueError`` for a file of another format version (``cached`` then rebuilds it) and
    whatever numpy/zipfile raise for a file that is not a cache (``allow_pickle=False`` throughout).
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as z:
        if "meta" not in z.files or _IMAGES not in z.zip.namelist():
            raise ValueError(f"{path} is not a fer_nb dataset cache (no meta/images members)")
        meta = json.loads(str(z["meta"]))
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            found = meta.get("format", 1) if isinstance(meta, dict) else "unknown"
            raise ValueError(f"{path} is a format-{found} cache; this fer_nb reads format {FORMAT_VERSION} "
                             "(it is rebuilt)")
        labels = {k: torch.from_numpy(z[f"label_{k}"]) for k in meta["labels"]}
        info = z.zip.getinfo(_IMAGES)
    images = _map_member(path, info)
    if list(images.shape) != meta["shape"]:
        raise ValueError(f"{path}: images are {images.shape}, the metadata says {meta['shape']}")
    return FaceArrays(torch.from_numpy(images), labels, meta["name"], tuple(meta["class_names"]), meta["info"])


def clean_stale(directory: str | os.PathLike) -> None:
    """Remove temp files of killed cache writers anywhere in ``directory`` (any key), so a decode
    killed before its key was asked for again does not leave gigabytes behind."""
    try:
        names = {m.group("name") for e in os.scandir(directory) if (m := _TEMP.match(e.name))}
    except OSError:
        return
    for name in names:
        clean_stale_temp(Path(directory) / name)


def _remove_superseded(directory: Path, dataset: str, folder: str | os.PathLike, args: dict[str, Any],
                       files: str) -> None:
    for version in range(1, FORMAT_VERSION):
        key = cache_key(dataset, folder, args, files=files, version=version)
        old = directory / f"{dataset}-{key[:24]}.npz"
        try:
            old.unlink()
        except OSError:  # absent (the usual case) or not ours to remove
            pass


def cached(dataset: str, folder: str | os.PathLike, args: dict[str, Any],
           build: Callable[[], FaceArrays], cache_dir: str | os.PathLike | None = None) -> FaceArrays:
    """``build()`` once, streaming its decode into the cache; later calls map the cached file.

    The returned images are memory-mapped from the cache file (copy-on-write) both on the first
    and on later calls; labels are in RAM. An unreadable cache file is ignored with a warning and
    rebuilt; an unwritable cache folder or a failed write warns and returns the data decoded into
    RAM.
    """
    directory = Path(cache_dir) if cache_dir is not None else default_dir()
    files = fingerprint(folder)
    key = cache_key(dataset, folder, args, files=files)
    path = directory / f"{dataset}-{key[:24]}.npz"
    if path.is_file():
        try:
            out = load(path)
            out.info["cache"] = str(path)
            return out
        except Exception as exc:  # corrupt/foreign/old-format cache: decode again
            warnings.warn(f"ignoring unreadable dataset cache {path}: {exc}", stacklevel=2)
    clean_stale(directory)
    try:
        sink = CacheFile(path)
    except OSError as exc:
        warnings.warn(f"could not write dataset cache {path}: {exc}", stacklevel=2)
        return build()
    try:
        with images_mod.decode_into(sink):
            data = build()
    except CacheWriteError as exc:
        sink.discard()
        warnings.warn(f"could not write dataset cache {path}: {exc}; decoding into RAM instead", stacklevel=2)
        return build()
    except BaseException:
        sink.discard()
        raise
    try:
        data.images = sink.commit(data)
    except (OSError, CacheWriteError) as exc:
        sink.discard()
        warnings.warn(f"could not write dataset cache {path}: {exc}", stacklevel=2)
        return data  # streamed rows stay mapped from the removed temp file (POSIX keeps the inode)
    data.info["cache"] = str(path)
    _remove_superseded(directory, dataset, folder, args, files)
    return data
