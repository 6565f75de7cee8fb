"""Small data sets written in torchvision's on-disk formats, for testing the torchvision path and
the chapters' `full` configurations without a network."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (MNIST's raw format): magic 0x0000 08 <ndim>, big-endian sizes, uint8 data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", *, n_train: int = 20, n_test: int = 10, seed: int = 0) -> dict:
    """Write MNIST-format raw files (what torchvision's ``MNIST`` / ``FashionMNIST`` read) under
    ``root/<folder>/raw``; return ``{"train": (images, labels), "t10k": (images, labels)}``."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = (images, labels)
    return arrays


def _write_pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def write_cifar10(root: Path, *, n_per_batch: int = 4, n_test: int = 6, seed: int = 0) -> dict:
    """Write CIFAR-10's python batches (what torchvision's ``CIFAR10`` downloads) under
    ``root/cifar-10-batches-py``; return ``{file name: (data (n, 3072) uint8, labels)}`` and
    ``"label_names"``."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"label {i}" for i in range(10)]
    _write_pickle(folder / "batches.meta", {"label_names": names})
    batches = {"label_names": names}
    for file_name, n in [(f"data_batch_{i}", n_per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        _write_pickle(folder / file_name, {"data": data, "labels": labels})
        batches[file_name] = (data, labels)
    return batches


def write_cifar10_archive(root: Path, *, n_per_batch: int = 4, n_test: int = 6, seed: int = 0) -> dict:
    """Write CIFAR-10's python batches packed as torchvision downloads them, in
    ``root/cifar-10-python.tar.gz`` (members ``cifar-10-batches-py/...``), without leaving the
    extracted folder; return what :func:`write_cifar10` returns."""
    import shutil
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        batches = write_cifar10(Path(tmp), n_per_batch=n_per_batch, n_test=n_test, seed=seed)
        with tarfile.open(Path(root) / "cifar-10-python.tar.gz", "w:gz") as tar:
            tar.add(Path(tmp) / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        shutil.rmtree(Path(tmp) / "cifar-10-batches-py")
    return batches
