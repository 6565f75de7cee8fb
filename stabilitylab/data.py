"""Data sets for the StabilityLab experiments, all returned as in-memory tensors.

Three families are available through :func:`load_dataset`:

* offline 2-D toys generated with scikit-learn (``moons``, ``circles``, ``blobs``),
* offline images: the 8x8 ``digits`` bundled with scikit-learn and ``shapes``, a
  generated 32x32 RGB set of geometric shapes on cluttered, textured backgrounds,
* torchvision sets (``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``), read from
  disk or downloaded when ``download=True`` and a network is available.

Every loader returns an :class:`ArrayDataset`: float32 inputs of shape ``(N, *input_shape)``,
int64 labels of shape ``(N,)`` and the metadata that attacks and certificates need, in
particular ``input_range``, the box ``[low, high]`` every input coordinate lies in.
"""

from __future__ import annotations

import hashlib
import io
import numbers
import os
import pickle
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = [
    "ArrayDataset",
    "ChecksumError",
    "DatasetNotAvailableError",
    "available_datasets",
    "load_dataset",
]

_SPLITS = ("train", "test")
_TOY_DEFAULT_SIZES = {"train": 1000, "test": 500}
_SHAPES_DEFAULT_SIZES = {"train": 5000, "test": 1000}
_SHAPE_CLASSES = ["circle", "square", "triangle", "cross", "ring", "bar"]
_IMAGE_SIZE = 32
_SHAPES_CHUNK = 500
_DIGITS_TEST_SIZE = 450
_DIGITS_SPLIT_SEED = 0
_DIGITS_MAX_PIXEL = 16.0
_ORBITS_DEFAULT_SIZES = {"train": 3500, "test": 1500}  # ORBIT5K: 1000 orbits per r, a 70/30 split
_ORBITS_R = (2.5, 3.5, 4.0, 4.1, 4.3)
_ORBITS_POINTS = 1000
_ORBITS_CHUNK = 500


class DatasetNotAvailableError(RuntimeError):
    """A torchvision data set is neither on disk nor downloadable (or torchvision is missing)."""


class ArrayDataset(TensorDataset):
    """In-memory ``(input, label)`` data set.

    Indexing returns ``(inputs[i], labels[i])`` like :class:`torch.utils.data.TensorDataset`.

    Args:
        inputs: Array or tensor of shape ``(N, *input_shape)``; stored as float32.
        labels: Array or tensor of shape ``(N,)`` with integer class indices in
            ``[0, len(classes))``; stored as int64.
        name: Name of the data set.
        classes: Human-readable class names; ``classes[k]`` names label ``k``.
        input_range: ``(low, high)``, the smallest and largest value an input coordinate
            may take; attacks clip perturbed inputs to this box.

    Attributes:
        name (str): Name of the data set.
        classes (list[str]): Class names.
        num_classes (int): ``len(classes)``.
        input_shape (tuple[int, ...]): Shape of one input, without the batch dimension.
        input_range (tuple[float, float]): ``(low, high)`` as above.

    Raises:
        ValueError: If the shapes, the labels or ``input_range`` are inconsistent.
    """

    def __init__(
        self,
        inputs: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        *,
        name: str,
        classes: Sequence[str],
        input_range: tuple[float, float],
    ) -> None:
        inputs = torch.as_tensor(inputs, dtype=torch.float32)
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if inputs.ndim < 2:
            raise ValueError(f"inputs must have shape (N, *input_shape), got {tuple(inputs.shape)}")
        if labels.ndim != 1 or labels.shape[0] != inputs.shape[0]:
            raise ValueError(
                f"labels must have shape ({inputs.shape[0]},), got {tuple(labels.shape)}"
            )
        if not isinstance(name, str):
            raise TypeError(f"name must be a str, got {type(name).__name__}")
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or not classes:
            raise ValueError(f"classes must be a non-empty sequence of class names, got {classes!r}")
        classes = [str(c) for c in classes]
        if labels.numel() and (labels.min() < 0 or labels.max() >= len(classes)):
            raise ValueError(f"labels must lie in [0, {len(classes)}) for {len(classes)} classes")
        if (
            not isinstance(input_range, (Sequence, np.ndarray))
            or isinstance(input_range, str)
            or len(input_range) != 2
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in input_range)
        ):
            raise ValueError(f"input_range must be a pair of numbers (low, high), got {input_range!r}")
        low, high = float(input_range[0]), float(input_range[1])
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(f"input_range must satisfy low < high (finite), got {input_range}")
        super().__init__(inputs, labels)
        self.name = name
        self.classes = classes
        self.num_classes = len(classes)
        self.input_shape = tuple(inputs.shape[1:])
        self.input_range = (low, high)

    @property
    def inputs(self) -> torch.Tensor:
        """All inputs, float32 of shape ``(N, *input_shape)``."""
        return self.tensors[0]

    @property
    def labels(self) -> torch.Tensor:
        """All labels, int64 of shape ``(N,)``."""
        return self.tensors[1]

    def __repr__(self) -> str:
        return (
            f"ArrayDataset(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, input_range={self.input_range})"
        )


def _stream_seed(name: str, split: str, seed: int, *extra: int) -> np.random.SeedSequence:
    name_code = int.from_bytes(name.encode(), "little")
    return np.random.SeedSequence([seed, _SPLITS.index(split), name_code, *extra])


def _sklearn_seed(name: str, split: str, seed: int) -> int:
    return int(_stream_seed(name, split, seed).generate_state(1)[0])


# ----------------------------------------------------------------------------- 2-D toys

_BLOB_CENTERS = 2.5 * np.array(
    [[np.cos(a), np.sin(a)] for a in np.pi / 2 + 2 * np.pi / 3 * np.arange(3)]
)


def _make_moons(n: int, rs: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_moons

    return make_moons(n_samples=n, noise=0.2, random_state=rs)


def _make_circles(n: int, rs: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_circles

    return make_circles(n_samples=n, noise=0.1, factor=0.5, random_state=rs)


def _make_blobs(n: int, rs: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_blobs

    return make_blobs(n_samples=n, centers=_BLOB_CENTERS, cluster_std=1.0, random_state=rs)


# name -> (generator, classes, input_range). Each box extends at least five noise standard
# deviations beyond the noiseless support, so clipping to it changes (almost) no point.
_ToyMaker = Callable[[int, int], tuple[np.ndarray, np.ndarray]]
_TOYS: dict[str, tuple[_ToyMaker, list[str], tuple[float, float]]] = {
    "moons": (_make_moons, ["upper moon", "lower moon"], (-2.0, 3.0)),
    "circles": (_make_circles, ["outer circle", "inner circle"], (-1.75, 1.75)),
    "blobs": (_make_blobs, ["blob 0", "blob 1", "blob 2"], (-7.5, 7.5)),
}


def _load_toy(name: str, split: str, n_samples: int | None, seed: int) -> ArrayDataset:
    make, classes, (low, high) = _TOYS[name]
    n = _TOY_DEFAULT_SIZES[split] if n_samples is None else n_samples
    x, y = make(n, _sklearn_seed(name, split, seed))
    x = np.clip(x, low, high)
    return ArrayDataset(x, y, name=name, classes=classes, input_range=(low, high))


# ----------------------------------------------------------------------------- digits


def _load_digits(split: str, n_samples: int | None) -> ArrayDataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.float64)
    x_train, x_test, y_train, y_test = train_test_split(
        x,
        bunch.target,
        test_size=_DIGITS_TEST_SIZE,
        stratify=bunch.target,
        random_state=_DIGITS_SPLIT_SEED,
    )
    mean, std = x_train.mean(), x_train.std()
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    n = _take(len(y), n_samples, "digits", split)
    x = ((x[:n] - mean) / std)[:, None]
    input_range = ((0.0 - mean) / std, (_DIGITS_MAX_PIXEL - mean) / std)
    classes = [str(d) for d in bunch.target_names]
    return ArrayDataset(x, y[:n], name="digits", classes=classes, input_range=input_range)


def _take(available: int, n_samples: int | None, name: str, split: str) -> int:
    if n_samples is None:
        return available
    if n_samples > available:
        raise ValueError(
            f"n_samples={n_samples} exceeds the {available} samples of {name!r} (split={split!r})"
        )
    return n_samples


# ----------------------------------------------------------------------------- shapes


def _blend(images: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> None:
    a = alpha[:, None]
    images *= 1.0 - a
    images += a * color[:, :, None, None]


def _coverage(distance: np.ndarray) -> np.ndarray:
    return np.clip(0.5 - distance, 0.0, 1.0)


def _frame(
    rng: np.random.Generator, cx: np.ndarray, cy: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    theta = rng.uniform(0.0, 2.0 * np.pi, n).astype(np.float32)
    grid = np.arange(_IMAGE_SIZE, dtype=np.float32) + 0.5
    dx = grid[None, None, :] - cx[:, None, None]
    dy = grid[None, :, None] - cy[:, None, None]
    c, s = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    return c * dx + s * dy, c * dy - s * dx


def _box_distance(u, v, half_u, half_v) -> np.ndarray:
    return np.maximum(np.abs(u) - half_u, np.abs(v) - half_v)


def _shape_distance(label: int, u: np.ndarray, v: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Approximate signed distance (negative inside) to shape ``label`` of size ``r``."""
    if label == 0:
        return np.hypot(u, v) - r
    if label == 1:
        return _box_distance(u, v, 0.8 * r, 0.8 * r)
    if label == 2:
        angles = np.pi / 2 + 2 * np.pi / 3 * np.arange(3)
        edges = [np.cos(a) * u + np.sin(a) * v for a in angles]
        return np.maximum(np.maximum(edges[0], edges[1]), edges[2]) - 0.5 * r
    if label == 3:
        arm = 0.28 * r
        return np.minimum(_box_distance(u, v, r, arm), _box_distance(u, v, arm, r))
    if label == 4:
        return np.abs(np.hypot(u, v) - 0.75 * r) - 0.25 * r
    return _box_distance(u, v, 1.1 * r, 0.2 * r)


def _upsample_matrix(low: int) -> np.ndarray:
    pos = (np.arange(_IMAGE_SIZE) + 0.5) / _IMAGE_SIZE * (low - 1)
    eye = np.eye(low, dtype=np.float32)
    return np.stack([np.interp(pos, np.arange(low), eye[k]) for k in range(low)], axis=1)


def _shapes_background(rng: np.random.Generator, n: int) -> np.ndarray:
    base = rng.uniform(0.15, 0.85, (n, 3, 1, 1))
    grid = np.arange(_IMAGE_SIZE) + 0.5
    phi = rng.uniform(0.0, np.pi, (n, 1, 1))
    freq = rng.uniform(0.04, 0.3, (n, 1, 1))
    phase = rng.uniform(0.0, 2 * np.pi, (n, 1, 1))
    wave = np.sin(
        2 * np.pi * freq * (np.cos(phi) * grid[None, None, :] + np.sin(phi) * grid[None, :, None])
        + phase
    )
    stripe_amp = rng.uniform(0.0, 0.15, (n, 1, 1, 1)) * rng.uniform(0.4, 1.0, (n, 3, 1, 1))
    low = 5
    up = _upsample_matrix(low)
    coarse = rng.normal(0.0, 1.0, (n, 3, low, low)) * rng.uniform(0.0, 0.1, (n, 1, 1, 1))
    smooth = np.einsum("ij,ncjk,lk->ncil", up, coarse, up, optimize=True)
    return (base + stripe_amp * wave[:, None] + smooth).astype(np.float32)


def _shapes_clutter(rng: np.random.Generator, images: np.ndarray, slots: int, p: float) -> None:
    n = images.shape[0]
    for _ in range(slots):
        cx, cy = rng.uniform(0.0, _IMAGE_SIZE, (2, n)).astype(np.float32)
        u, v = _frame(rng, cx, cy, n)
        size = rng.uniform(0.7, 1.6, (n, 1, 1)).astype(np.float32)
        length = rng.uniform(1.5, 3.5, (n, 1, 1)).astype(np.float32)
        width = rng.uniform(0.3, 0.6, (n, 1, 1)).astype(np.float32)
        is_line = rng.random((n, 1, 1)) < 0.5
        distance = np.where(is_line, _box_distance(u, v, length, width), np.hypot(u, v) - size)
        present = (rng.random(n) < p)[:, None, None]
        _blend(images, _coverage(distance) * present, rng.uniform(0.0, 1.0, (n, 3)))


def _shapes_occluder(
    rng: np.random.Generator, images: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray
) -> None:
    n = images.shape[0]
    ox = cx + r * rng.uniform(-1.0, 1.0, n)
    oy = cy + r * rng.uniform(-1.0, 1.0, n)
    u, v = _frame(rng, ox.astype(np.float32), oy.astype(np.float32), n)
    half = (r * rng.uniform(0.3, 0.6, (2, n))).astype(np.float32)[:, :, None, None]
    present = (rng.random(n) < 0.2)[:, None, None]
    alpha = _coverage(_box_distance(u, v, half[0], half[1])) * present
    _blend(images, alpha, rng.uniform(0.0, 1.0, (n, 3)))


def _shape_colors(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
    n = images.shape[0]
    reference = images.mean(axis=(2, 3))
    direction = rng.normal(0.0, 1.0, (n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    low_contrast = rng.random(n) < 0.15
    magnitude = np.where(low_contrast, rng.uniform(0.15, 0.35, n), rng.uniform(0.4, 0.9, n))
    return np.clip(reference + magnitude[:, None] * direction, 0.0, 1.0)


def _render_shapes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.arange(n) % len(_SHAPE_CLASSES))
    images = _shapes_background(rng, n)
    _shapes_clutter(rng, images, slots=2, p=0.6)
    r = np.exp(rng.uniform(np.log(3.5), np.log(11.0), n)).astype(np.float32)
    margin = 0.6 * r
    cx = rng.uniform(margin, _IMAGE_SIZE - margin).astype(np.float32)
    cy = rng.uniform(margin, _IMAGE_SIZE - margin).astype(np.float32)
    u, v = _frame(rng, cx, cy, n)
    distance = np.empty_like(u)
    for label in range(len(_SHAPE_CLASSES)):
        idx = labels == label
        distance[idx] = _shape_distance(label, u[idx], v[idx], r[idx, None, None])
    _blend(images, _coverage(distance), _shape_colors(rng, images))
    _shapes_occluder(rng, images, cx, cy, r)
    _shapes_clutter(rng, images, slots=1, p=0.4)
    sigma = rng.uniform(0.01, 0.06, (n, 1, 1, 1)).astype(np.float32)
    images += sigma * rng.standard_normal(images.shape, dtype=np.float32)
    np.clip(images, 0.0, 1.0, out=images)
    return images, labels


def _load_shapes(split: str, n_samples: int | None, seed: int) -> ArrayDataset:
    n = _SHAPES_DEFAULT_SIZES[split] if n_samples is None else n_samples
    chunks = []
    for k in range(-(-n // _SHAPES_CHUNK)):
        rng = np.random.default_rng(_stream_seed("shapes", split, seed, k))
        chunks.append(_render_shapes(rng, _SHAPES_CHUNK))
    images = np.concatenate([c[0] for c in chunks])[:n]
    labels = np.concatenate([c[1] for c in chunks])[:n]
    return ArrayDataset(
        images, labels, name="shapes", classes=_SHAPE_CLASSES, input_range=(0.0, 1.0)
    )


# ----------------------------------------------------------------------------- orbits


def _load_orbits(split: str, n_samples: int | None, seed: int) -> ArrayDataset:
    from stabilitylab.topology import _orbits

    n = _ORBITS_DEFAULT_SIZES[split] if n_samples is None else n_samples
    clouds, labels = [], []
    for k in range(-(-n // _ORBITS_CHUNK)):
        stream = _stream_seed("orbits", split, seed, k)
        generator = torch.Generator().manual_seed(int(stream.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
        y = torch.randperm(_ORBITS_CHUNK, generator=generator) % len(_ORBITS_R)
        r = torch.tensor(_ORBITS_R, dtype=torch.float64)[y]
        clouds.append(_orbits(r, _ORBITS_POINTS, generator))
        labels.append(y)
    return ArrayDataset(
        torch.cat(clouds)[:n], torch.cat(labels)[:n], name="orbits",
        classes=[f"r={r}" for r in _ORBITS_R], input_range=(0.0, 1.0),
    )


# ----------------------------------------------------------------------------- torchvision

_TORCHVISION = {
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
}
_OFFLINE = ["moons", "circles", "blobs", "digits", "shapes", "orbits"]
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}
# Generated sets accepted by load_dataset but not listed by available_datasets()
_UNLISTED: list[str] = []


def _default_root() -> Path:
    env = os.environ.get("STABILITYLAB_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "stabilitylab" / "data"


def _not_available(name: str, root: Path, reason: str) -> DatasetNotAvailableError:
    if name.startswith("cifar"):
        offline = 'load_dataset("shapes") (colour images) or load_dataset("digits")'
    else:
        offline = 'load_dataset("digits") (or load_dataset("shapes") for colour images)'
    return DatasetNotAvailableError(
        f"data set {name!r} is not available in {str(root)!r}: {reason}. "
        f"download=True fetches it, but needs a network connection; to work offline use {offline}."
    )


_CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", "batches.meta", "label_names", "labels",
                {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}),
    "cifar100": ("cifar-100-python", "meta", "fine_label_names", "fine_labels",
                 {"train": ["train"], "test": ["test"]}),
}


#: The official archives (file name, published MD5 sum), as torchvision's CIFAR readers list them.
_CIFAR_ARCHIVES = {
    "cifar10": ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": ("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}


class ChecksumError(DatasetNotAvailableError):
    """An official archive on disk does not have its published checksum (a truncated or altered file)."""


def _md5(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_archive(name: str, path: Path) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the published MD5 sum of ``name``'s archive."""
    file_name, expected = _CIFAR_ARCHIVES[name]
    actual = _md5(path)
    if actual != expected:
        raise ChecksumError(
            f"{str(path)!r} is not the official {file_name}: its MD5 sum is {actual}, the published one is "
            f"{expected}. The file is truncated or altered; delete it and download it again "
            f"(load_dataset({name!r}, download=True))."
        )


def _unpickle(f) -> dict:
    entry = pickle.load(f, encoding="latin1")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _read_cifar(name: str, split: str, root: Path, n_samples: int | None) -> ArrayDataset | None:
    """Read CIFAR's python batches from disk: the extracted folder (the layout torchvision
    downloads to) when all its files are there, else the official archive (``*.tar.gz``) in
    ``root`` after checking its published MD5 sum; None when neither is there.

    Extracted batches are read as they are (no checksum), so that a set rebuilt or shrunk by the
    user loads too; an official archive is verified first (:class:`ChecksumError` on a mismatch).
    """
    folder_name, meta_name, names_key, labels_key, files = _CIFAR_FILES[name]
    folder = root / folder_name
    paths = [folder / meta_name, *(folder / f for f in files[split])]
    if all(p.is_file() for p in paths):
        entries = []
        for path in paths:
            with open(path, "rb") as f:
                entries.append(_unpickle(f))
    else:
        archive = root / _CIFAR_ARCHIVES[name][0]
        if not archive.is_file():
            return None
        _verify_archive(name, archive)
        members = [f"{folder_name}/{meta_name}", *(f"{folder_name}/{f}" for f in files[split])]
        entries = []
        with tarfile.open(archive, "r:gz") as tar:
            for member in members:
                try:
                    handle = tar.extractfile(member)
                except KeyError:
                    handle = None
                if handle is None:
                    raise ChecksumError(f"{str(archive)!r} has the published checksum but no file {member!r}")
                entries.append(_unpickle(io.BytesIO(handle.read())))
    classes = list(entries[0][names_key])
    batches = entries[1:]
    data = np.concatenate([np.asarray(b["data"], dtype=np.uint8).reshape(-1, 3, 32, 32) for b in batches])
    targets = torch.as_tensor(np.concatenate([np.asarray(b[labels_key]) for b in batches]), dtype=torch.int64)
    n = _take(len(targets), n_samples, name, split)
    inputs = torch.from_numpy(data[:n]).to(torch.float32) / 255.0
    return ArrayDataset(inputs, targets[:n], name=name, classes=classes, input_range=(0.0, 1.0))


def _load_torchvision(
    name: str, split: str, root, download: bool, n_samples: int | None
) -> ArrayDataset:
    root = _default_root() if root is None else Path(root).expanduser()
    if name in _CIFAR_FILES:
        on_disk = _read_cifar(name, split, root, n_samples)
        if on_disk is not None:
            return on_disk
    try:
        import torchvision.datasets as tvd
    except ImportError as exc:
        raise _not_available(name, root, "torchvision is not installed") from exc
    cls = getattr(tvd, _TORCHVISION[name])
    try:
        ds = cls(root=str(root), train=(split == "train"), download=download)
    except (RuntimeError, OSError, tarfile.TarError) as exc:
        reason = "the download failed" if download else "the files are not on disk"
        raise _not_available(name, root, f"{reason} ({exc})") from exc
    data = torch.as_tensor(np.asarray(ds.data))
    data = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
    targets = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    n = _take(len(targets), n_samples, name, split)
    inputs = data[:n].to(torch.float32) / 255.0
    return ArrayDataset(
        inputs, targets[:n], name=name, classes=list(ds.classes), input_range=(0.0, 1.0)
    )


# ----------------------------------------------------------------------------- public API


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`.

    Returns:
        The offline data sets (``moons``, ``circles``, ``blobs``, ``digits``, ``shapes``)
        first, then the torchvision ones (``mnist``, ``fashion-mnist``, ``cifar10``,
        ``cifar100``), which need their files on disk or a network.
    """
    return [*_OFFLINE, *_TORCHVISION]


def _check_args(name, split, n_samples, seed) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in available_datasets() and key not in _UNLISTED:
        known = [*available_datasets(), *_UNLISTED]
        raise ValueError(f"name must be a known data set, got {name!r}; available: {', '.join(known)}")
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got split={split!r}")
    if n_samples is not None:
        if isinstance(n_samples, bool) or not isinstance(n_samples, numbers.Integral):
            raise TypeError(f"n_samples must be an int or None, got {n_samples!r}")
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got n_samples={n_samples}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got seed={seed}")
    return key


def load_dataset(
    name: str,
    *,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = False,
    n_samples: int | None = None,
    seed: int = 0,
) -> ArrayDataset:
    """Load a data set into memory.

    Offline sets:

    * ``moons`` (noise 0.2), ``circles`` (noise 0.1, factor 0.5), ``blobs`` (three
      Gaussian blobs, std 1, centres on a circle of radius 2.5): inputs of shape ``(2,)``.
      The generator seed is derived from ``(name, split, seed)``, so ``train`` and
      ``test`` are different samples. ``input_range`` is a fixed box per set,
      ``(-2, 3)``, ``(-1.75, 1.75)`` and ``(-7.5, 7.5)``, that reaches at least five noise
      standard deviations past the noiseless data; points are clipped to it (rarely
      changes any). Default sizes: 1000 (train), 500 (test).
    * ``digits``: scikit-learn's 8x8 digits, shape ``(1, 8, 8)``, fixed stratified
      split of 1347 train / 450 test images (independent of ``seed``), standardised with
      the train split's global pixel mean and std, so ``input_range`` is the image of
      ``[0, 16]`` under that map. ``n_samples`` takes the first images of the (fixed,
      shuffled) split; ``seed`` is ignored.
    * ``shapes``: generated 32x32 RGB images, shape ``(3, 32, 32)``, values in
      ``[0, 1]``, six balanced classes (circle, square, triangle, cross, ring, bar) with
      random position, size, rotation and colour, on striped / smoothly noisy
      backgrounds, with clutter, occasional occlusion, low contrast and pixel noise.
      Default sizes: 5000 (train), 1000 (test). Images come in blocks of 500 drawn from
      streams seeded by ``(split, seed, block)``, so a smaller ``n_samples`` gives a
      prefix of a larger one.
    * ``orbits``: ORBIT5K-style point clouds [adams2017persistence], shape ``(1000, 2)``
      (1000 points in ``[0, 1)^2``), five balanced classes ``r=2.5``, ``r=3.5``, ``r=4.0``,
      ``r=4.1``, ``r=4.3``: the orbit of a uniform random start under the linked twist map
      with parameter :math:`r` (:func:`stabilitylab.topology.orbit`), stored in float32.
      Default sizes: 3500 (train), 1500 (test) (ORBIT5K's 70/30 split). Orbits come in
      blocks of 500 (100 per class, shuffled) drawn from streams seeded by
      ``(split, seed, block)``, so a smaller ``n_samples`` gives a prefix of a larger one;
      ``input_range = (0, 1)``. Take fewer points with ``ds.inputs[:, :n]`` (a prefix of an
      orbit is an orbit).

    Torchvision sets (``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100``) are read
    with ``torchvision.datasets`` from ``root`` and converted to float32 in ``[0, 1]``,
    shape ``(N, C, H, W)`` (``(1, 28, 28)`` or ``(3, 32, 32)``), ``input_range=(0, 1)``,
    classes from torchvision. CIFAR's python batches, once on disk in torchvision's layout
    (``cifar-10-batches-py``, ``cifar-100-python``), are read directly, without torchvision
    and without comparing them with the official archive's checksums (so that a rebuilt or
    shrunk set loads too). When only the official archive (``cifar-10-python.tar.gz``,
    ``cifar-100-python.tar.gz``) is in ``root``, it is read without extracting it, after its MD5
    sum has been compared with the published one (:class:`ChecksumError` on a mismatch);
    torchvision's download checks the archive too. ``n_samples`` takes the first images;
    ``seed`` is ignored.

    Args:
        name: A name from :func:`available_datasets`, case-insensitive
            (``fashion_mnist`` is accepted for ``fashion-mnist``).
        split: ``"train"`` or ``"test"``.
        root: Directory of the torchvision sets; default: the environment variable
            ``STABILITYLAB_DATA`` or ``~/.cache/stabilitylab/data``. Unused offline.
        download: Let torchvision download a missing set (needs a network).
        n_samples: Number of samples (default: the whole split / the default size).
        seed: Non-negative seed of the generated sets (toys, ``shapes`` and ``orbits``).

    Returns:
        An :class:`ArrayDataset` with float32 inputs ``(N, *input_shape)`` and int64
        labels ``(N,)``.

    Raises:
        ValueError: Unknown ``name`` (the message lists the names), ``split`` not
            ``"train"``/``"test"``, ``n_samples < 1`` or larger than a fixed split,
            ``seed < 0``.
        TypeError: ``n_samples`` or ``seed`` not an integer, ``name`` not a string.
        DatasetNotAvailableError: A torchvision set is not on disk and cannot be
            downloaded, or torchvision is not installed; :class:`ChecksumError` (a subclass)
            when an official CIFAR archive on disk does not have its published MD5 sum.
    """
    key = _check_args(name, split, n_samples, seed)
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a path (str or os.PathLike) or None, got {type(root).__name__}")
    if not isinstance(download, bool):
        raise TypeError(f"download must be a bool, got {download!r}")
    if key in _TOYS:
        return _load_toy(key, split, n_samples, int(seed))
    if key == "digits":
        return _load_digits(split, n_samples)
    if key == "shapes":
        return _load_shapes(split, n_samples, int(seed))
    if key == "orbits":
        return _load_orbits(split, n_samples, int(seed))
    return _load_torchvision(key, split, root, download, n_samples)
