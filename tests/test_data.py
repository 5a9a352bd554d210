"""Tests for ddbackdoor.data: every registry entry read from small generated files in its real layout."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ddbackdoor.data import (
    DATA_ENV,
    DATASETS,
    FASHION_MNIST_DEBIAN_DIR,
    OFFLINE_ENV,
    RealData,
    data_directory,
    dataset_names,
    load_dataset,
)
from ddbackdoor.data.cifar import safe_unpickle
from ddbackdoor.data.idx import encode_idx
from ddbackdoor.data.realdata import images_to_tensor
from ddbackdoor.errors import ConfigError, DataError, DataNotFound

ALL_NAMES = ["cifar10", "cifar100", "fashion-mnist", "fashion-mnist-mini", "mnist", "stl10", "svhn"]


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    """Labels covering every class at least once when n >= num_classes."""
    labels = np.arange(n) % num_classes
    return _rng(seed).permutation(labels).astype(np.uint8)


def _check_common(data: RealData, n: int, channels: int, size: int = 32) -> None:
    assert data.images.dtype == torch.float32
    assert data.labels.dtype == torch.int64
    assert tuple(data.images.shape) == (n, channels, size, size)
    assert data.channels == channels and data.image_size == size and len(data) == n
    assert float(data.images.min()) >= 0.0 and float(data.images.max()) <= 1.0
    per_class = data.indices_by_class()
    assert len(per_class) == data.num_classes
    for c, idx in enumerate(per_class):
        assert idx.dtype == torch.int64
        assert torch.all(data.labels[idx] == c)
    assert sum(len(i) for i in per_class) == n


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)


def _write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    blob = encode_idx(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        blob = gzip.compress(blob)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return path


def _make_idx_dataset(
    directory: Path, gz: bool, n_train: int = 20, n_test: int = 10
) -> dict[str, np.ndarray]:
    arrays = {}
    for prefix, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images = _rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = _labels(n, 10, seed)
        _write_idx(directory / f"{prefix}-images-idx3-ubyte", images, gz)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, gz)
        arrays[f"{prefix}_images"], arrays[f"{prefix}_labels"] = images, labels
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize(
    ("name", "subdir"),
    [("mnist", "MNIST/raw"), ("mnist", "."), ("fashion-mnist", "FashionMNIST/raw"), ("fashion-mnist", ".")],
)
def test_idx_datasets_load(tmp_path: Path, name: str, subdir: str, gz: bool) -> None:
    arrays = _make_idx_dataset(tmp_path / subdir, gz)
    train, test = load_dataset(name, root=tmp_path)
    _check_common(train, 20, 1)
    _check_common(test, 10, 1)
    assert train.name == name and train.num_classes == 10
    assert train.mean == DATASETS[name].mean
    assert torch.equal(train.labels, torch.from_numpy(arrays["train_labels"].astype(np.int64)))
    # Native size: no resize, so pixels must match exactly.
    train28, test28 = load_dataset(name, root=str(tmp_path), image_size=28)
    expected = torch.from_numpy(arrays["t10k_images"].astype(np.float32) / 255.0)
    assert torch.equal(test28.images[:, 0], expected)
    assert torch.equal(test28.labels, torch.from_numpy(arrays["t10k_labels"].astype(np.int64)))


def test_idx_matches_torchvision_reader(tmp_path: Path) -> None:
    """Our IDX parser agrees with torchvision's MNIST class on the same files."""
    import torchvision

    arrays = _make_idx_dataset(tmp_path / "MNIST" / "raw", gz=False)
    ours, _ = load_dataset("mnist", root=tmp_path, image_size=28)
    theirs = torchvision.datasets.MNIST(str(tmp_path), train=True, download=False)
    assert torch.equal((ours.images[:, 0] * 255).round().to(torch.uint8), theirs.data)
    assert torch.equal(ours.labels, theirs.targets)
    assert np.array_equal(theirs.data.numpy(), arrays["train_images"])


def test_idx_loader_returns_channels_last_uint8(tmp_path: Path) -> None:
    _make_idx_dataset(tmp_path, gz=True)
    images, labels = DATASETS["mnist"].loader(tmp_path, True, False)
    assert images.dtype == np.uint8 and images.shape == (20, 28, 28, 1)
    assert labels.shape == (20,)


def test_idx_truncated_file(tmp_path: Path) -> None:
    _make_idx_dataset(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated") as info:
        load_dataset("mnist", root=tmp_path)
    assert str(path) in str(info.value)


def test_idx_bad_magic(tmp_path: Path) -> None:
    _make_idx_dataset(tmp_path, gz=False)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    data = bytearray(path.read_bytes())
    data[2] = 0x0D  # float type code instead of ubyte
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="magic") as info:
        load_dataset("fashion-mnist", root=tmp_path)
    assert str(path) in str(info.value)


def test_idx_images_and_labels_swapped(tmp_path: Path) -> None:
    _make_idx_dataset(tmp_path, gz=False)
    images, labels = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    a, b = images.read_bytes(), labels.read_bytes()
    images.write_bytes(b)
    labels.write_bytes(a)
    with pytest.raises(DataError, match="magic"):
        load_dataset("mnist", root=tmp_path)


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    _make_idx_dataset(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(DataError, match="gzip") as info:
        load_dataset("mnist", root=tmp_path)
    assert str(path) in str(info.value)


def test_idx_label_out_of_range(tmp_path: Path) -> None:
    _make_idx_dataset(tmp_path, gz=False)
    bad = np.full(20, 3, dtype=np.uint8)
    bad[5] = 12
    _write_idx(tmp_path / "train-labels-idx1-ubyte", bad, gz=False)
    with pytest.raises(DataError, match=r"labels span 3\.\.12"):
        load_dataset("mnist", root=tmp_path)


def test_idx_count_mismatch(tmp_path: Path) -> None:
    _make_idx_dataset(tmp_path, gz=False)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(19, dtype=np.uint8), gz=False)
    with pytest.raises(DataError, match="20 images but 19 labels"):
        load_dataset("mnist", root=tmp_path)


# ---------------------------------------------------------------- CIFAR


def _cifar_batch(n: int, seed: int, label_key: bytes, num_classes: int, str_keys: bool = False) -> dict:
    data = _rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(x) for x in _labels(n, num_classes, seed)]
    batch = {b"batch_label": b"generated", label_key: labels, b"data": data, b"filenames": [b"x.png"] * n}
    if str_keys:  # what Python 2 (the official files) produces when read with encoding="latin1"
        batch = {k.decode(): v for k, v in batch.items()}
    return batch


def _write_cifar10_py(root: Path, protocol: int = pickle.DEFAULT_PROTOCOL, str_keys: bool = False) -> dict:
    directory = root / "cifar-10-batches-py"
    directory.mkdir(parents=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[name] = _cifar_batch(4, 10 + i, b"labels", 10, str_keys)
        with (directory / name).open("wb") as f:
            pickle.dump(batches[name], f, protocol=protocol)
    return batches


def _key(batch: dict, key: str) -> object:
    return batch[key] if key in batch else batch[key.encode()]


@pytest.mark.parametrize(("protocol", "str_keys"), [(2, True), (4, False), (5, False)])
def test_cifar10_python_batches(tmp_path: Path, protocol: int, str_keys: bool) -> None:
    batches = _write_cifar10_py(tmp_path, protocol, str_keys)
    train, test = load_dataset("cifar10", root=tmp_path)
    _check_common(train, 20, 3)
    _check_common(test, 4, 3)
    assert train.std == (0.2023, 0.1994, 0.2010)
    # Batches are concatenated in order; row layout is R plane, G plane, B plane, each row-major.
    b3 = batches["data_batch_3"]
    data3 = _key(b3, "data")
    n, c, i, j = 1, 2, 5, 7
    assert float(train.images[8 + n, c, i, j]) == pytest.approx(data3[n, c * 1024 + i * 32 + j] / 255.0)
    assert train.labels[8:12].tolist() == _key(b3, "labels")
    assert test.labels.tolist() == _key(batches["test_batch"], "labels")


def _py2_pickle(data: np.ndarray, labels: list[int], label_key: bytes) -> bytes:
    """A pickle laid out as Python 2's cPickle wrote the official CIFAR files.

    numpy.core.multiarray._reconstruct, str (not bytes) payloads: only
    readable with encoding="latin1", which is what our unpickler must handle.
    """

    def short_str(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    n, width = data.shape
    shape = b"J" + n.to_bytes(4, "little") + b"J" + width.to_bytes(4, "little") + b"\x86"
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + short_str(b"b") + b"\x87R"
        b"(K\x01" + shape + b"cnumpy\ndtype\n" + short_str(b"u1") + b"K\x00K\x01\x87R"
        b"(K\x03" + short_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        b"\x89T" + data.nbytes.to_bytes(4, "little") + data.tobytes() + b"tb"
    )
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + short_str(b"data") + array + short_str(label_key) + label_list + b"u."


def test_cifar_python2_style_pickles(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        batch = _cifar_batch(3, 60 + i, b"labels", 10)
        (directory / name).write_bytes(_py2_pickle(batch[b"data"], batch[b"labels"], b"labels"))
    train, test = load_dataset("cifar10", root=tmp_path, image_size=32)
    _check_common(train, 15, 3)
    last = _cifar_batch(3, 65, b"labels", 10)
    assert test.labels.tolist() == last[b"labels"]
    assert float(test.images[2, 0, 0, 1]) == pytest.approx(last[b"data"][2, 1] / 255.0)


def test_cifar10_binary_batches(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-bin"
    directory.mkdir()
    records = {}
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        rec = _rng(20 + i).integers(0, 256, size=(3, 3073), dtype=np.uint8)
        rec[:, 0] = _rng(20 + i).integers(0, 10, size=3)
        records[name] = rec
        (directory / name).write_bytes(rec.tobytes())
    train, test = load_dataset("cifar10", root=tmp_path)
    _check_common(train, 15, 3)
    _check_common(test, 3, 3)
    first = records["data_batch_1.bin"]
    assert train.labels[:3].tolist() == first[:, 0].tolist()
    assert float(train.images[2, 1, 31, 0]) == pytest.approx(first[2, 1 + 1024 + 31 * 32 + 0] / 255.0)
    (directory / "test_batch.bin").write_bytes(records["test_batch.bin"].tobytes()[:-1])
    with pytest.raises(DataError, match="test_batch.bin"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar10_missing_batch_file(tmp_path: Path) -> None:
    _write_cifar10_py(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match="data_batch_4"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar100_python(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    batches = {}
    for name, n, seed in (("train", 200, 30), ("test", 100, 31)):
        batches[name] = _cifar_batch(n, seed, b"fine_labels", 100)
        batches[name][b"coarse_labels"] = [0] * n
        with (directory / name).open("wb") as f:
            pickle.dump(batches[name], f)
    train, test = load_dataset("cifar100", root=tmp_path)
    _check_common(train, 200, 3)
    _check_common(test, 100, 3)
    assert train.num_classes == 100 and train.mean == (0.5071, 0.4866, 0.4409)
    assert train.labels.tolist() == batches["train"][b"fine_labels"]
    assert all(len(i) == 2 for i in train.indices_by_class())


class _Evil:
    """Pickles as a call to os.system: what a tampered dataset file would do."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    _write_cifar10_py(tmp_path)
    marker = tmp_path / "pwned"
    batch = {b"data": _Evil(f"touch {marker}"), b"labels": [0]}
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with path.open("wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(DataError, match="refusing to unpickle") as info:
        load_dataset("cifar10", root=tmp_path)
    assert "system" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(eval, id="builtins.eval"),
        pytest.param(np.array([1, "x"], dtype=object), id="object-array"),
        pytest.param(np.load, id="numpy.load"),
    ],
)
def test_restricted_unpickler_refuses_other_globals(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "blob"
    path.write_bytes(pickle.dumps({b"data": payload}))
    with pytest.raises(DataError):
        safe_unpickle(path)


def test_cifar_pickle_garbage(tmp_path: Path) -> None:
    _write_cifar10_py(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_wrong_shape(tmp_path: Path) -> None:
    _write_cifar10_py(tmp_path)
    batch = {b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match="expected uint8"):
        load_dataset("cifar10", root=tmp_path)


# ---------------------------------------------------------------- SVHN


def test_svhn_mat(tmp_path: Path) -> None:
    from scipy.io import savemat

    mats = {}
    for split, n, seed in (("train", 12, 40), ("test", 10, 41)):
        x = _rng(seed).integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 1..10, 10 = digit 0
        savemat(str(tmp_path / f"{split}_32x32.mat"), {"X": x, "y": y})
        mats[split] = (x, y)
    train, test = load_dataset("svhn", root=tmp_path)
    _check_common(train, 12, 3)
    _check_common(test, 10, 3)
    assert test.labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    x = mats["train"][0]
    n, c, h, w = 7, 2, 3, 29
    # torchvision transposes X with (3, 2, 0, 1): pixel [n, c, h, w] = X[h, w, c, n]
    assert float(train.images[n, c, h, w]) == pytest.approx(x[h, w, c, n] / 255.0)


def test_svhn_bad_file(tmp_path: Path) -> None:
    (tmp_path / "train_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file garbage")
    with pytest.raises(DataError, match="train_32x32.mat"):
        load_dataset("svhn", root=tmp_path)


# ---------------------------------------------------------------- STL-10


def _write_stl10(root: Path, n_train: int = 3, n_test: int = 2) -> dict[str, np.ndarray]:
    directory = root / "stl10_binary"
    directory.mkdir(parents=True)
    raw = {}
    for split, n, seed in (("train", n_train, 50), ("test", n_test, 51)):
        planes = _rng(seed).integers(0, 256, size=(n, 3, 96, 96), dtype=np.uint8)
        (directory / f"{split}_X.bin").write_bytes(planes.tobytes())
        (directory / f"{split}_y.bin").write_bytes((np.arange(n) % 10 + 1).astype(np.uint8).tobytes())
        raw[split] = planes
    return raw


def test_stl10_binary(tmp_path: Path) -> None:
    raw = _write_stl10(tmp_path)
    train, test = load_dataset("stl10", root=tmp_path)
    _check_common(train, 3, 3)
    _check_common(test, 2, 3)
    assert train.labels.tolist() == [0, 1, 2] and test.labels.tolist() == [0, 1]
    # torchvision reshapes to (N, 3, 96, 96) then transposes the last two axes:
    # the byte at file position [n, c, a, b] is the pixel at row b, column a.
    full, _ = load_dataset("stl10", root=tmp_path, image_size=96)
    planes = raw["train"]
    n, c, a, b = 1, 2, 10, 70
    assert float(full.images[n, c, b, a]) == pytest.approx(planes[n, c, a, b] / 255.0)
    expected = torch.from_numpy(planes.transpose(0, 1, 3, 2).astype(np.float32) / 255.0)
    assert torch.equal(full.images, expected)


def test_stl10_truncated(tmp_path: Path) -> None:
    _write_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="test_X.bin"):
        load_dataset("stl10", root=tmp_path)


def test_stl10_label_out_of_range(tmp_path: Path) -> None:
    _write_stl10(tmp_path)
    (tmp_path / "stl10_binary" / "train_y.bin").write_bytes(bytes([1, 0, 3]))
    with pytest.raises(DataError, match="expected 1..10"):
        load_dataset("stl10", root=tmp_path)


# ---------------------------------------------------------------- registry and errors


def test_registry_contents() -> None:
    assert dataset_names() == ALL_NAMES
    assert set(DATASETS) == set(ALL_NAMES)
    for name, spec in DATASETS.items():
        assert spec.name == name
        assert spec.num_classes == (100 if name == "cifar100" else 10)
        assert spec.channels == (1 if "mnist" in name else 3)
        assert len(spec.mean) == len(spec.std) == spec.channels
    assert DATASETS["fashion-mnist"].mean == (0.2861,) and DATASETS["fashion-mnist"].std == (0.3530,)
    assert DATASETS["mnist"].mean == (0.1307,) and DATASETS["mnist"].std == (0.3081,)
    assert DATASETS["stl10"].mean == DATASETS["cifar10"].mean and DATASETS["stl10"].native_size == 96
    assert DATASETS["svhn"].mean == (0.4377, 0.4438, 0.4728)
    assert DATASETS["fashion-mnist"].default_roots == (FASHION_MNIST_DEBIAN_DIR,)


def test_unknown_name() -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset("imagenet")
    message = str(info.value)
    assert "imagenet" in message
    for name in ALL_NAMES:
        assert name in message


@pytest.mark.parametrize("name", [n for n in ALL_NAMES if n != "fashion-mnist-mini"])
def test_missing_directory(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(DataError) as info:
        load_dataset(name, root=missing)
    message = str(info.value)
    assert str(missing) in message and "not found" in message and "data.root" in message
    assert "\n" not in message


def test_cifar_missing_message_names_layout(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py/ or cifar-10-batches-bin/"):
        load_dataset("cifar10", root=tmp_path)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100", "svhn", "stl10"])
def test_no_root_looks_in_the_data_directory(name: str) -> None:
    """conftest points $DDBACKDOOR_DATA at an empty directory and sets $DDBACKDOOR_OFFLINE."""
    with pytest.raises(DataNotFound) as info:
        load_dataset(name)
    message = str(info.value)
    assert os.environ[DATA_ENV] in message and DATASETS[name].files in message
    assert "data.root" in message and OFFLINE_ENV in message and "\n" not in message


def test_data_directory_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    assert data_directory(tmp_path / "given") == tmp_path / "given"
    assert data_directory() == tmp_path / "env"
    monkeypatch.delenv(DATA_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_directory() == tmp_path / "cache" / "ddbackdoor" / "data"


class _FakeCIFAR10:
    """Stands in for torchvision's CIFAR10 downloader: writes generated batches, counts calls."""

    calls: list[tuple[str, bool]] = []

    def __init__(self, root: str, download: bool = False, train: bool = True) -> None:
        self.calls.append((root, train))
        if not (Path(root) / "cifar-10-batches-py").is_dir():
            _write_cifar10_py(Path(root))


def test_auto_download_fetches_a_missing_dataset_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torchvision.datasets

    monkeypatch.delenv(OFFLINE_ENV)
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", _FakeCIFAR10)
    _FakeCIFAR10.calls = []
    train, test = load_dataset("cifar10")  # download="auto" is the default
    assert len(train) == 20 and len(test) == 4
    # one archive holds both splits: the test split is found on disk once the train split fetched it
    assert _FakeCIFAR10.calls == [(str(tmp_path / "data"), True)]
    load_dataset("cifar10")
    assert len(_FakeCIFAR10.calls) == 1
    with pytest.raises(DataNotFound):  # download=false never fetches
        load_dataset("cifar10", root=tmp_path / "elsewhere", download=False)
    assert len(_FakeCIFAR10.calls) == 1


def test_failed_download_says_which_files_to_put_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.error

    import torchvision.datasets

    def no_network(root: str, download: bool = False, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.delenv(OFFLINE_ENV)
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", no_network)
    with pytest.raises(DataNotFound) as info:
        load_dataset("cifar100", root=tmp_path)
    message = str(info.value)
    assert "download failed (URLError: [Errno -2] Name or service not known)" in message
    assert str(tmp_path) in message and "cifar-100-python/ (train and test" in message
    assert "\n" not in message


def test_offline_refuses_an_explicit_download() -> None:
    with pytest.raises(ConfigError, match=OFFLINE_ENV):
        load_dataset("cifar10", download=True)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_image_size(size: object) -> None:
    with pytest.raises(ConfigError, match="image_size"):
        load_dataset("fashion-mnist-mini", image_size=size)  # type: ignore[arg-type]


# ---------------------------------------------------------------- bundled default


def test_bundled_mini_offline() -> None:
    train, test = load_dataset("fashion-mnist-mini", root="/nonexistent/ignored")
    _check_common(train, 6000, 1)
    _check_common(test, 1000, 1)
    assert [len(i) for i in train.indices_by_class()] == [600] * 10
    assert [len(i) for i in test.indices_by_class()] == [100] * 10
    assert train.mean == (0.2861,) and train.std == (0.3530,)
    assert train.images.std() > 0.1  # real images, not blanks


@pytest.mark.skipif(not FASHION_MNIST_DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_default() -> None:
    train, test = load_dataset("fashion-mnist", image_size=28)
    assert len(train) == 60000 and len(test) == 10000
    assert [len(i) for i in test.indices_by_class()] == [1000] * 10


# ---------------------------------------------------------------- RealData and resizing


def _toy(channels: int = 3) -> RealData:
    images = torch.rand(6, channels, 8, 8, generator=torch.Generator().manual_seed(0))
    spec = DATASETS["cifar10" if channels == 3 else "mnist"]
    return RealData(images, torch.tensor([0, 1, 2, 0, 1, 2]), 3, spec.mean, spec.std, "toy")


def test_normalize_roundtrip() -> None:
    data = _toy()
    z = data.normalize(data.images)
    assert torch.allclose(data.denormalize(z), data.images, atol=1e-6)
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    assert torch.allclose(z, (data.images - mean) / std)
    single = data.normalize(data.images[0])  # [C, H, W] works too
    assert torch.allclose(single, z[0])
    assert data.normalize(data.images.double()).dtype == torch.float64
    with pytest.raises(ValueError):
        data.normalize(torch.zeros(2, 1, 8, 8))


def test_to_and_clone_are_independent() -> None:
    data = _toy(channels=1)
    copy = data.clone()
    copy.images[0].fill_(0.5)
    copy.labels[0] = 2
    assert not torch.equal(copy.images, data.images) and data.labels[0] == 0
    moved = data.to("cpu")
    assert moved.images.device.type == "cpu" and moved.name == "toy" and moved.mean == data.mean
    assert [i.tolist() for i in data.indices_by_class()] == [[0, 3], [1, 4], [2, 5]]


def test_resize_28_to_32_keeps_range() -> None:
    images = np.zeros((5, 28, 28, 1), dtype=np.uint8)
    images[0] = 255
    images[1, ::2] = 255  # stripes: bilinear overshoot would show here if not clamped
    images[2] = _rng(3).integers(0, 256, size=(28, 28, 1), dtype=np.uint8)
    out = images_to_tensor(images, 32)
    assert tuple(out.shape) == (5, 1, 32, 32) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.allclose(out[0], torch.ones(1, 32, 32)) and torch.all(out[3] == 0)
    same = images_to_tensor(images, 28)
    assert torch.equal(same[:, 0], torch.from_numpy(images[..., 0].astype(np.float32) / 255.0))
