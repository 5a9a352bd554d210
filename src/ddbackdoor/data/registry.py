"""Dataset registry: what each dataset is, where its files are looked for, and `load_dataset`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ddbackdoor.data.bundled import load_fashion_mnist_mini
from ddbackdoor.data.cifar import (
    CIFAR10_BIN_DIR,
    CIFAR10_PY_DIR,
    CIFAR100_PY_DIR,
    load_cifar10,
    load_cifar100,
)
from ddbackdoor.data.idx import make_idx_loader
from ddbackdoor.data.loaders import Loader, check_arrays, split_name
from ddbackdoor.data.realdata import RealData, images_to_tensor
from ddbackdoor.data.stl10 import STL10_DIR, load_stl10
from ddbackdoor.data.svhn import load_svhn
from ddbackdoor.errors import ConfigError, DataNotFound, DownloadFailed, unknown_name

# Where Debian's `dataset-fashion-mnist` package installs the full dataset
# (gzip'ed IDX); used for `fashion-mnist` when no root is given.
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

DEFAULT_DATASET = "fashion-mnist-mini"

# Where datasets live when `data.root` is not given: this variable, else the per-user cache.
DATA_ENV = "DDBACKDOOR_DATA"
# Set (to anything but 0/empty) to keep `data.download=auto` from using the network (the tests do).
OFFLINE_ENV = "DDBACKDOOR_OFFLINE"

Download = bool | Literal["auto"]

MNIST_SUBDIRS = ("MNIST/raw", ".")
FASHION_MNIST_SUBDIRS = ("FashionMNIST/raw", ".")

_MNIST_STATS = ((0.1307,), (0.3081,))
_FASHION_STATS = ((0.2861,), (0.3530,))
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
_CIFAR100_STATS = ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762))
_SVHN_STATS = ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970))


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of one dataset.

    `loader(root, train, download)` returns ``(images, labels)``: images a
    uint8 numpy array laid out **[N, H, W, C]** (channels last) at the native
    size, labels an integer numpy array [N] in [0, num_classes).
    `search_dirs` are the directories under a data directory that are looked
    at (relative, "." = the directory itself); `default_roots` are system
    directories also searched when `data.root` is not given; `files` tells a
    user which files to put where, when they are missing.
    """

    name: str
    channels: int
    native_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    loader: Loader
    search_dirs: tuple[str, ...] = ()
    default_roots: tuple[Path, ...] = ()
    bundled: bool = False
    files: str = ""
    description: str = ""  # one line, for `ddbackdoor list`


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="mnist",
            channels=1,
            native_size=28,
            num_classes=10,
            mean=_MNIST_STATS[0],
            std=_MNIST_STATS[1],
            loader=make_idx_loader("mnist", MNIST_SUBDIRS, "MNIST"),
            search_dirs=MNIST_SUBDIRS,
            files="MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]",
            description="MNIST digits, 60,000 + 10,000 (downloads with torchvision)",
        ),
        DatasetSpec(
            name="fashion-mnist",
            channels=1,
            native_size=28,
            num_classes=10,
            mean=_FASHION_STATS[0],
            std=_FASHION_STATS[1],
            loader=make_idx_loader("fashion-mnist", FASHION_MNIST_SUBDIRS, "FashionMNIST"),
            search_dirs=FASHION_MNIST_SUBDIRS,
            default_roots=(FASHION_MNIST_DEBIAN_DIR,),
            files="FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] "
            "(or install the Debian package dataset-fashion-mnist)",
            description="Fashion-MNIST, 60,000 + 10,000 (downloads with torchvision, or Debian's package)",
        ),
        DatasetSpec(
            name="fashion-mnist-mini",
            channels=1,
            native_size=28,
            num_classes=10,
            mean=_FASHION_STATS[0],
            std=_FASHION_STATS[1],
            loader=load_fashion_mnist_mini,
            bundled=True,
            description="600 + 100 images per class of Fashion-MNIST, shipped in the package",
        ),
        DatasetSpec(
            name="cifar10",
            channels=3,
            native_size=32,
            num_classes=10,
            mean=_CIFAR10_STATS[0],
            std=_CIFAR10_STATS[1],
            loader=load_cifar10,
            search_dirs=(CIFAR10_PY_DIR, CIFAR10_BIN_DIR),
            files=f"{CIFAR10_PY_DIR}/ or {CIFAR10_BIN_DIR}/ (data_batch_1..5 and test_batch, "
            "extracted from cifar-10-python.tar.gz)",
            description="CIFAR-10, 50,000 + 10,000 (downloads with torchvision)",
        ),
        DatasetSpec(
            name="cifar100",
            channels=3,
            native_size=32,
            num_classes=100,
            mean=_CIFAR100_STATS[0],
            std=_CIFAR100_STATS[1],
            loader=load_cifar100,
            search_dirs=(CIFAR100_PY_DIR,),
            files=f"{CIFAR100_PY_DIR}/ (train and test, extracted from cifar-100-python.tar.gz)",
            description="CIFAR-100, fine labels, 50,000 + 10,000 (downloads with torchvision)",
        ),
        DatasetSpec(
            name="svhn",
            channels=3,
            native_size=32,
            num_classes=10,
            mean=_SVHN_STATS[0],
            std=_SVHN_STATS[1],
            loader=load_svhn,
            search_dirs=(".",),
            files="train_32x32.mat and test_32x32.mat",
            description="SVHN cropped digits, 73,257 + 26,032 (downloads with torchvision)",
        ),
        DatasetSpec(
            name="stl10",
            channels=3,
            native_size=96,
            num_classes=10,
            mean=_CIFAR10_STATS[0],
            std=_CIFAR10_STATS[1],
            loader=load_stl10,
            search_dirs=(STL10_DIR,),
            files=f"{STL10_DIR}/ (train_X.bin, train_y.bin, test_X.bin, test_y.bin, "
            "extracted from stl10_binary.tar.gz)",
            description="STL-10 labelled splits, 5,000 + 8,000, at 32x32 (downloads with torchvision)",
        ),
    )
}


def dataset_names() -> list[str]:
    """Registered dataset names, sorted (for CLI help and error messages)."""
    return sorted(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    """The spec for `name`, or the standard unknown-name ConfigError."""
    try:
        return DATASETS[name]
    except KeyError:
        raise unknown_name("dataset", name, dataset_names()) from None


def data_directory(root: str | Path | None = None) -> Path:
    """Where datasets are read from and downloaded to: `root` (data.root) when given, else
    $DDBACKDOOR_DATA, else the per-user cache: $XDG_CACHE_HOME/ddbackdoor/data or
    ~/.cache/ddbackdoor/data."""
    for choice in (root, os.environ.get(DATA_ENV)):
        if choice is not None and str(choice) != "":
            return Path(choice).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "ddbackdoor" / "data"


def offline() -> bool:
    """Whether $DDBACKDOOR_OFFLINE forbids `data.download=auto` to use the network."""
    return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


def _read_split(spec: DatasetSpec, root: str | Path | None, train: bool, download: Download):
    """(images, labels) of one split: from the data directory, else (no `data.root` given) a
    system copy, else, with download=auto, fetched into the data directory once."""
    if spec.bundled:
        return spec.loader(None, train, False)
    directory = data_directory(root)
    if download is True and offline():
        raise ConfigError(f"data.download=true, but ${OFFLINE_ENV} forbids downloads; unset it or pass false")
    if download is True:
        return spec.loader(directory, train, True)
    places = [directory, *(spec.default_roots if root is None or str(root) == "" else ())]
    for place in places:
        try:
            return spec.loader(place, train, False)
        except DataNotFound:
            continue
    where = ", ".join(str(p) for p in places)
    if download is False or offline():
        why = "data.download=false" if download is False else f"${OFFLINE_ENV} is set"
        raise DataNotFound(
            f"dataset {spec.name!r} not found in {where} ({why}): put {spec.files} in {directory}, or "
            f"point data.root=DIR (or ${DATA_ENV}) at a directory that holds them"
        )
    try:
        return spec.loader(directory, train, True)
    except DownloadFailed as failed:
        raise DataNotFound(
            f"dataset {spec.name!r} not found in {where} and the download failed ({failed.reason}): put "
            f"{spec.files} in {directory}, or point data.root=DIR (or ${DATA_ENV}) at a directory "
            "that holds them"
        ) from None


def _to_realdata(
    spec: DatasetSpec, root: str | Path | None, train: bool, download: Download, image_size: int
) -> RealData:
    source = "bundled copy" if spec.bundled else str(data_directory(root))
    where = f"{split_name(train)} split, {source}"
    images, labels = _read_split(spec, root, train, download)
    images, labels = check_arrays(
        spec.name,
        images,
        labels,
        channels=spec.channels,
        size=spec.native_size,
        num_classes=spec.num_classes,
        where=where,
    )
    return RealData(
        images=images_to_tensor(images, image_size),
        labels=torch.from_numpy(labels),
        num_classes=spec.num_classes,
        mean=spec.mean,
        std=spec.std,
        name=spec.name,
    )


def load_dataset(
    name: str,
    root: str | Path | None = None,
    image_size: int = 32,
    download: Download = "auto",
) -> tuple[RealData, RealData]:
    """Load (train, test) as float32 [N, C, S, S] in [0, 1] with S = image_size.

    `root` holds torchvision's on-disk layout (default: `data_directory()`). `download="auto"`
    fetches a dataset that is not there with torchvision (the only network access), `True`
    always lets torchvision check and fetch it, `False` never; a dataset that cannot be found
    or fetched is one line saying which files to put where.
    """
    spec = get_spec(name)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(
            f"data.image_size must be a positive integer, got {image_size!r}; e.g. data.image_size=32"
        )
    if download not in (True, False, "auto"):
        raise ConfigError(f"data.download must be true, false or auto, got {download!r}")
    train = _to_realdata(spec, root, True, download, image_size)
    test = _to_realdata(spec, root, False, download, image_size)
    return train, test
