"""Semi-supervised benchmarks of Margin-Mix (Florea et al.): CIFAR-10/100, SVHN, STL-10.

Read with ``torchvision.datasets`` and ``download=False`` (this package never downloads): put the
files torchvision expects under ``<root>`` (``<FER_NB_DATA>/<name>`` via the registry)::

    cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
    cifar100/cifar-100-python/{train,test,meta}
    svhn/{train_32x32.mat,test_32x32.mat,extra_32x32.mat}
    stl10/stl10_binary/{train_X.bin,train_y.bin,test_X.bin,test_y.bin,unlabeled_X.bin,class_names.txt}

(one way: ``torchvision.datasets.CIFAR10(root, download=True)`` once, on a machine with internet).
The result is a :class:`~fer_nb.data.schema.FaceArrays` whose ``expression`` holds the class id
(``-1`` for STL-10's unlabelled split) and whose ``class_names`` are the benchmark's classes.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from fer_nb.data.errors import DatasetSpec, check_size
from fer_nb.data.images import from_array, still_labels
from fer_nb.data.schema import FaceArrays

SPECS = {
    "cifar10": DatasetSpec(
        "cifar10", "cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
        "https://www.cs.toronto.edu/~kriz/cifar.html (or torchvision.datasets.CIFAR10(root, download=True))",
        ("train", "test"), "train"),
    "cifar100": DatasetSpec(
        "cifar100", "cifar100/cifar-100-python/{train,test,meta}",
        "https://www.cs.toronto.edu/~kriz/cifar.html (or torchvision.datasets.CIFAR100(root, download=True))",
        ("train", "test"), "train"),
    "svhn": DatasetSpec(
        "svhn", "svhn/{train_32x32.mat,test_32x32.mat,extra_32x32.mat}",
        "http://ufldl.stanford.edu/housenumbers/ (format 2; or torchvision.datasets.SVHN(root, download=True))",
        ("train", "test", "extra"), "train"),
    "stl10": DatasetSpec(
        "stl10", "stl10/stl10_binary/{train_X.bin,train_y.bin,test_X.bin,test_y.bin,unlabeled_X.bin,"
        "class_names.txt}",
        "https://cs.stanford.edu/~acoates/stl10/ (or torchvision.datasets.STL10(root, download=True))",
        ("train", "test", "unlabeled", "train+unlabeled"), "train"),
}
NATIVE_SIZE = {"cifar10": 32, "cifar100": 32, "svhn": 32, "stl10": 96}


def load(name: str, root: str | os.PathLike, split: str | None = None, image_size: int | None = None,
         channels: int | None = None) -> FaceArrays:
    """One benchmark as uint8 ``(N, C, S, S)`` arrays; default native size, RGB."""
    import torchvision.datasets as tvd

    if name not in SPECS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(SPECS)}")
    spec = SPECS[name]
    root = spec.root(root)
    split = spec.split(split)
    size, ch = check_size(spec, image_size, channels, NATIVE_SIZE[name], 3)
    try:
        if name in ("cifar10", "cifar100"):
            cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
            ds = cls(str(root), train=split == "train", download=False)
            data, targets, layout, classes = ds.data, np.asarray(ds.targets), "NHWC", tuple(ds.classes)
        elif name == "svhn":
            ds = tvd.SVHN(str(root), split=split, download=False)
            data, targets, layout, classes = ds.data, np.asarray(ds.labels), "NCHW", tuple(str(d) for d in range(10))
        else:
            ds = tvd.STL10(str(root), split=split, download=False)
            data, targets, layout, classes = ds.data, np.asarray(ds.labels), "NCHW", tuple(ds.classes)
    except (RuntimeError, OSError, ValueError) as exc:
        raise spec.error(f"torchvision could not read {name} split {split!r} from {root} "
                         f"(download=False): {exc}", root) from None
    targets = targets.astype(np.int64)
    if len(targets) and (targets.max() >= len(classes) or targets.min() < -1):
        raise spec.error(f"labels outside 0..{len(classes) - 1}", root)
    images = from_array(np.asarray(data, dtype=np.uint8), image_size=size, channels=ch, layout=layout)
    labels = still_labels(len(images), torch.from_numpy(targets), domain=0)
    return FaceArrays(images, labels, name, classes, {"root": str(root), "split": split})
