"""Tests for stabilitylab.data: offline generators, digits, shapes and the torchvision path."""

from __future__ import annotations

import os
import pickle
import sys
import time
import warnings
from urllib.error import URLError

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stabilitylab.data import (
    ArrayDataset,
    DatasetNotAvailableError,
    available_datasets,
    load_dataset,
)
from torchvision_format import write_cifar10, write_cifar10_archive, write_mnist

OFFLINE = {
    # name: (input_shape, num_classes, default train size, default test size)
    "moons": ((2,), 2, 1000, 500),
    "circles": ((2,), 2, 1000, 500),
    "blobs": ((2,), 3, 1000, 500),
    "digits": ((1, 8, 8), 10, 1347, 450),
    "shapes": ((3, 32, 32), 6, 5000, 1000),
    "orbits": ((1000, 2), 5, 3500, 1500),
}
TOYS = ["moons", "circles", "blobs"]


def _small(name: str) -> int | None:
    return {"shapes": 600, "orbits": 50}.get(name)


def _check_dataset(ds: ArrayDataset, name: str, split: str) -> None:
    shape, num_classes, n_train, n_test = OFFLINE[name]
    n = _small(name) or (n_train if split == "train" else n_test)
    assert isinstance(ds, ArrayDataset)
    assert ds.name == name
    assert ds.inputs.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert tuple(ds.inputs.shape) == (n, *shape)
    assert tuple(ds.labels.shape) == (n,)
    assert ds.input_shape == shape
    assert ds.num_classes == num_classes == len(ds.classes)
    assert all(isinstance(c, str) for c in ds.classes)
    assert set(ds.labels.tolist()) == set(range(num_classes))
    low, high = ds.input_range
    assert isinstance(low, float) and isinstance(high, float) and low < high
    assert ds.inputs.min() >= low and ds.inputs.max() <= high
    assert torch.isfinite(ds.inputs).all()


# ----------------------------------------------------------------------------- generic


@pytest.mark.parametrize("split", ["train", "test"])
@pytest.mark.parametrize("name", list(OFFLINE))
def test_offline_shapes_dtypes_ranges(name, split):
    ds = load_dataset(name, split=split, n_samples=_small(name))
    _check_dataset(ds, name, split)
    x, y = ds[3]
    assert tuple(x.shape) == ds.input_shape and y.dtype == torch.int64


@pytest.mark.parametrize("name", list(OFFLINE))
def test_offline_deterministic_and_splits_differ(name):
    kwargs = {"n_samples": _small(name) or 300}
    a = load_dataset(name, **kwargs)
    b = load_dataset(name, **kwargs)
    test = load_dataset(name, split="test", **kwargs)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, test.inputs)


def test_available_datasets_offline_first():
    names = available_datasets()
    assert names[:6] == list(OFFLINE)
    assert names[6:] == ["mnist", "fashion-mnist", "cifar10", "cifar100"]


def test_names_are_case_insensitive():
    a = load_dataset("MOONS", n_samples=50)
    b = load_dataset(" moons ", n_samples=50)
    assert torch.equal(a.inputs, load_dataset("moons", n_samples=50).inputs)
    assert torch.equal(a.inputs, b.inputs)


def test_default_sizes_for_generated_sets():
    assert len(load_dataset("moons")) == 1000
    assert len(load_dataset("circles", split="test")) == 500


# ----------------------------------------------------------------------------- toys


@settings(max_examples=8, deadline=None)
@given(
    name=st.sampled_from(TOYS),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(4, 300),
)
def test_toys_seeded(name, seed, n):
    a = load_dataset(name, seed=seed, n_samples=n)
    b = load_dataset(name, seed=seed, n_samples=n)
    test = load_dataset(name, split="test", seed=seed, n_samples=n)
    other = load_dataset(name, seed=seed + 1, n_samples=n)
    assert a.inputs.shape == (n, 2)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, test.inputs)
    assert not torch.equal(a.inputs, other.inputs)
    low, high = a.input_range
    assert a.inputs.min() >= low and a.inputs.max() <= high
    assert a.labels.min() >= 0 and a.labels.max() < a.num_classes


@pytest.mark.parametrize("name", TOYS)
def test_toys_balanced_and_overlapping(name):
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    train, test = load_dataset(name), load_dataset(name, split="test")
    counts = torch.bincount(train.labels, minlength=train.num_classes)
    assert counts.min() >= 0.9 * len(train) / train.num_classes
    knn = KNeighborsClassifier(15).fit(train.inputs.numpy(), train.labels.numpy())
    accuracy = knn.score(test.inputs.numpy(), test.labels.numpy())
    assert 0.8 < accuracy < 1.0
    if name != "blobs":
        linear = LogisticRegression().fit(train.inputs.numpy(), train.labels.numpy())
        assert linear.score(test.inputs.numpy(), test.labels.numpy()) < accuracy


# ----------------------------------------------------------------------------- digits


def test_digits_standardised_with_train_statistics():
    train = load_dataset("digits")
    x = train.inputs.double()
    assert abs(x.mean().item()) < 1e-6
    assert abs(x.std(correction=0).item() - 1.0) < 1e-6
    low, high = train.input_range
    assert x.min().item() == pytest.approx(low, abs=1e-6)
    assert x.max().item() == pytest.approx(high, abs=1e-6)
    for ds in (train, load_dataset("digits", split="test")):
        raw = (ds.inputs.double() - low) / (high - low) * 16.0
        assert torch.allclose(raw, raw.round(), atol=1e-4)
        assert raw.min() >= -1e-4 and raw.max() <= 16 + 1e-4
        assert ds.input_range == (low, high)


def test_digits_split_fixed_stratified_and_subset():
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    assert torch.equal(train.inputs, load_dataset("digits", seed=7).inputs)
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 43 and counts.max() <= 47
    flat_train = {tuple(r) for r in train.inputs.flatten(1).tolist()}
    overlap = sum(tuple(r) in flat_train for r in test.inputs.flatten(1).tolist())
    assert overlap < 5
    sub = load_dataset("digits", n_samples=100)
    assert torch.equal(sub.inputs, train.inputs[:100])
    assert torch.equal(sub.labels, train.labels[:100])
    assert sub.input_range == train.input_range
    with pytest.raises(ValueError, match="n_samples"):
        load_dataset("digits", split="test", n_samples=451)


# ----------------------------------------------------------------------------- shapes


def test_shapes_balanced_distinct_and_prefix_stable():
    ds = load_dataset("shapes", n_samples=1200)
    assert ds.input_range == (0.0, 1.0)
    assert ds.classes == ["circle", "square", "triangle", "cross", "ring", "bar"]
    counts = torch.bincount(ds.labels, minlength=6)
    assert counts.min() >= 180 and counts.max() <= 220
    flat = ds.inputs.flatten(1)
    assert len({tuple(r) for r in flat[:200].tolist()}) == 200
    assert (flat.std(dim=1) > 0.01).all()
    prefix = load_dataset("shapes", n_samples=700)
    assert torch.equal(prefix.inputs, ds.inputs[:700])
    other_seed = load_dataset("shapes", n_samples=700, seed=1)
    assert not torch.equal(other_seed.inputs, prefix.inputs)


def test_shapes_generation_is_fast():
    start = time.perf_counter()
    ds = load_dataset("shapes", n_samples=2000)
    assert len(ds) == 2000
    assert time.perf_counter() - start < 10.0


def _invariant_features(x: np.ndarray) -> np.ndarray:
    """Translation-, rotation- and colour-invariant summary: radial power spectrum of the
    per-pixel distance to the image's median colour, plus quantiles of that distance."""
    saliency = np.abs(x - np.median(x, axis=(2, 3), keepdims=True)).sum(axis=1)
    centred = saliency - saliency.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(centred)) ** 2
    k = np.fft.fftfreq(x.shape[-1])
    rings = np.digitize(np.hypot(k[:, None], k[None, :]), np.linspace(0.0, 0.71, 17))
    radial = np.stack([power[:, rings == b].mean(axis=1) for b in np.unique(rings)], axis=1)
    levels = [0.5, 0.7, 0.8, 0.9, 0.95, 0.99]
    quantiles = np.quantile(saliency.reshape(len(x), -1), levels, axis=1).T
    return np.concatenate([np.log1p(radial), quantiles], axis=1)


def test_shapes_not_trivially_separable_but_learnable():
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train = load_dataset("shapes", n_samples=2000)
    test = load_dataset("shapes", split="test", n_samples=500)
    x_train, x_test = train.inputs.numpy(), test.inputs.numpy()
    y_train, y_test = train.labels.numpy(), test.labels.numpy()
    chance = 1.0 / train.num_classes

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        raw = LogisticRegression(C=0.01, max_iter=200).fit(x_train.reshape(2000, -1), y_train)
    raw_accuracy = raw.score(x_test.reshape(500, -1), y_test)
    assert raw_accuracy < 0.5

    scaler = StandardScaler().fit(_invariant_features(x_train))
    features = LogisticRegression(C=1.0, max_iter=1000).fit(
        scaler.transform(_invariant_features(x_train)), y_train
    )
    accuracy = features.score(scaler.transform(_invariant_features(x_test)), y_test)
    assert chance + 0.08 < accuracy < 0.9


# ----------------------------------------------------------------------------- errors


def test_unknown_name_lists_all_names():
    with pytest.raises(ValueError) as info:
        load_dataset("imagenet")
    for name in available_datasets():
        assert name in str(info.value)


@pytest.mark.parametrize("split", ["val", "Train", "", None])
def test_bad_split(split):
    with pytest.raises(ValueError, match="split") as info:
        load_dataset("moons", split=split)
    assert repr(split) in str(info.value)


@pytest.mark.parametrize("n_samples", [0, -3])
def test_bad_n_samples_value(n_samples):
    with pytest.raises(ValueError, match="n_samples"):
        load_dataset("moons", n_samples=n_samples)


@pytest.mark.parametrize("n_samples", [2.5, "10", True])
def test_bad_n_samples_type(n_samples):
    with pytest.raises(TypeError, match="n_samples"):
        load_dataset("moons", n_samples=n_samples)


def test_bad_seed():
    with pytest.raises(ValueError, match="seed"):
        load_dataset("shapes", seed=-1)
    with pytest.raises(TypeError, match="seed"):
        load_dataset("moons", seed=1.5)


def test_array_dataset_validates():
    x, y = torch.zeros(4, 2), torch.tensor([0, 1, 1, 0])
    ds = ArrayDataset(x, y, name="toy", classes=["a", "b"], input_range=(0, 1))
    assert ds.input_range == (0.0, 1.0) and ds.input_shape == (2,) and len(ds) == 4
    assert "toy" in repr(ds)
    meta = {"name": "toy", "classes": ["a", "b"]}
    with pytest.raises(ValueError):
        ArrayDataset(x, torch.tensor([0, 1, 2, 0]), input_range=(0, 1), **meta)
    with pytest.raises(ValueError):
        ArrayDataset(x, y[:3], input_range=(0, 1), **meta)
    with pytest.raises(ValueError):
        ArrayDataset(x, y, input_range=(1, 0), **meta)


def test_public_functions_documented():
    for obj in (load_dataset, available_datasets, ArrayDataset, DatasetNotAvailableError):
        assert obj.__doc__ and obj.__doc__.strip()
    for section in ("Args:", "Returns:", "Raises:"):
        assert section in load_dataset.__doc__


# ----------------------------------------------------------------------------- torchvision

@pytest.fixture
def tv():
    return pytest.importorskip("torchvision")


@pytest.mark.parametrize(
    ("name", "folder", "tv_class"),
    [("mnist", "MNIST", "MNIST"), ("fashion_mnist", "FashionMNIST", "FashionMNIST")],
)
def test_mnist_from_disk(tmp_path, tv, name, folder, tv_class):
    arrays = write_mnist(tmp_path, folder)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_dataset(name, root=tmp_path, split=split)
        images, labels = arrays[prefix]
        assert ds.inputs.dtype == torch.float32 and ds.inputs.shape == (len(labels), 1, 28, 28)
        assert torch.equal(ds.inputs, torch.from_numpy(images[:, None].astype(np.float32) / 255.0))
        assert torch.equal(ds.labels, torch.from_numpy(labels.astype(np.int64)))
        assert ds.input_range == (0.0, 1.0) and ds.input_shape == (1, 28, 28)
        assert ds.classes == list(getattr(tv.datasets, tv_class).classes)
        assert ds.num_classes == 10
    sub = load_dataset(name, root=tmp_path, n_samples=5)
    assert torch.equal(sub.inputs, load_dataset(name, root=tmp_path).inputs[:5])


def test_default_root_from_environment(tmp_path, tv, monkeypatch):
    arrays = write_mnist(tmp_path, "MNIST")
    monkeypatch.setenv("STABILITYLAB_DATA", str(tmp_path))
    ds = load_dataset("mnist", split="test")
    assert torch.equal(ds.labels, torch.from_numpy(arrays["t10k"][1].astype(np.int64)))


def _write_pickle(path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar10_from_disk(tmp_path):
    # read without torchvision, whose loader would compare the files with the real archives' md5
    batches = write_cifar10(tmp_path, seed=1)
    names = batches["label_names"]
    test = load_dataset("cifar10", root=tmp_path, split="test")
    data, labels = batches["test_batch"]
    expected = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    assert test.inputs.shape == (6, 3, 32, 32) and test.input_shape == (3, 32, 32)
    assert torch.equal(test.inputs, expected)
    assert torch.equal(test.labels, torch.tensor(labels, dtype=torch.int64))
    assert test.classes == names and test.input_range == (0.0, 1.0)

    train = load_dataset("cifar10", root=tmp_path, n_samples=10)
    data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])[:10]
    labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])[:10]
    expected = torch.from_numpy(data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    assert torch.equal(train.inputs, expected)
    assert torch.equal(train.labels, torch.tensor(labels))


def test_cifar10_with_a_missing_batch_is_not_available(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    assert load_dataset("cifar10", root=tmp_path, split="test").num_classes == 10
    with pytest.raises(DatasetNotAvailableError, match="cifar10"):
        load_dataset("cifar10", root=tmp_path, split="train")


def test_cifar100_from_disk(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    names = [f"class{i}" for i in range(100)]
    _write_pickle(folder / "meta", {"fine_label_names": names})
    for file_name in ("train", "test"):
        _write_pickle(
            folder / file_name,
            {"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), "fine_labels": [5, 99, 0]},
        )
    ds = load_dataset("cifar100", root=tmp_path, split="test")
    assert ds.num_classes == 100 and ds.labels.tolist() == [5, 99, 0]
    assert ds.inputs.shape == (3, 3, 32, 32)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "cifar10", "cifar100"])
def test_missing_torchvision_set(tmp_path, name):
    with pytest.raises(DatasetNotAvailableError) as info:
        load_dataset(name, root=tmp_path / "empty")
    message = str(info.value)
    assert name in message and "digits" in message and "download=True" in message
    assert str(tmp_path / "empty") in message
    assert isinstance(info.value, RuntimeError)


def test_failed_download_is_reported(tmp_path, tv, monkeypatch):
    def no_network(self):
        raise URLError("no network")

    monkeypatch.setattr(tv.datasets.MNIST, "download", no_network)
    with pytest.raises(DatasetNotAvailableError, match="download"):
        load_dataset("mnist", root=tmp_path, download=True)


def test_without_torchvision(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(DatasetNotAvailableError, match="torchvision"):
        load_dataset("cifar10", root=tmp_path)


# ----------------------------------------------------------------------------- CIFAR archives


def test_published_cifar_checksums_are_torchvisions():
    from stabilitylab import data

    tvd = pytest.importorskip("torchvision.datasets")
    assert data._CIFAR_ARCHIVES["cifar10"] == (tvd.CIFAR10.filename, tvd.CIFAR10.tgz_md5)
    assert data._CIFAR_ARCHIVES["cifar100"] == (tvd.CIFAR100.filename, tvd.CIFAR100.tgz_md5)
    assert data._CIFAR_ARCHIVES["cifar10"][1] == "c58f30108f718f92721af3b95e74349a"
    assert data._CIFAR_ARCHIVES["cifar100"][1] == "eb9058c3a382ffc7106e4002c42a8d85"


def test_a_cifar_archive_with_the_wrong_checksum_is_refused(tmp_path):
    import hashlib

    from stabilitylab.data import ChecksumError

    write_cifar10_archive(tmp_path)
    archive = tmp_path / "cifar-10-python.tar.gz"
    actual = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(ChecksumError, match="c58f30108f718f92721af3b95e74349a") as info:
        load_dataset("cifar10", root=tmp_path, split="test")
    message = str(info.value)
    assert actual in message and "cifar-10-python.tar.gz" in message
    assert isinstance(info.value, DatasetNotAvailableError)  # callers falling back offline still do


def test_a_cifar_archive_with_the_published_checksum_is_read(tmp_path, monkeypatch):
    import hashlib

    from stabilitylab import data

    batches = write_cifar10_archive(tmp_path, seed=3)
    archive = tmp_path / "cifar-10-python.tar.gz"
    # the fake archive plays the official one: its own sum becomes "the published one"
    monkeypatch.setitem(data._CIFAR_ARCHIVES, "cifar10",
                        ("cifar-10-python.tar.gz", hashlib.md5(archive.read_bytes()).hexdigest()))
    assert not (tmp_path / "cifar-10-batches-py").exists()
    test = load_dataset("cifar10", root=tmp_path, split="test")
    array, labels = batches["test_batch"]
    assert torch.equal(test.inputs, torch.from_numpy(array.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0))
    assert test.labels.tolist() == labels and test.classes == batches["label_names"]
    train = load_dataset("cifar10", root=tmp_path, n_samples=9)
    expected = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])[:9]
    assert torch.equal(train.inputs, torch.from_numpy(expected.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0))
    assert not (tmp_path / "cifar-10-batches-py").exists()  # read in place, nothing extracted


def test_extracted_cifar_batches_are_read_before_the_archive(tmp_path):
    write_cifar10(tmp_path, seed=4)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not an archive")  # never opened
    assert len(load_dataset("cifar10", root=tmp_path, split="test")) == 6
