"""Dataset registry: what each dataset is, where its files are looked for, and `load_dataset`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
from ddbackdoor.data.loaders import ROOT_HINT, Loader, check_arrays, split_name
from ddbackdoor.data.realdata import RealData, images_to_tensor
from ddbackdoor.data.stl10 import STL10_DIR, load_stl10
from ddbackdoor.data.svhn import load_svhn
from ddbackdoor.errors import ConfigError, unknown_name

# Where Debian's `dataset-fashion-mnist` package installs the full dataset
# (gzip'ed IDX); used for `fashion-mnist` when no root is given.
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")

DEFAULT_DATASET = "fashion-mnist-mini"

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
    `search_dirs` are the directories under a user-given root that are looked
    at (relative, "." = root itself); `default_roots` are absolute directories
    used when no root is given (empty: a root is required).
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
            loader=make_idx_loader("mnist", MNIST_SUBDIRS, (), "MNIST"),
            search_dirs=MNIST_SUBDIRS,
        ),
        DatasetSpec(
            name="fashion-mnist",
            channels=1,
            native_size=28,
            num_classes=10,
            mean=_FASHION_STATS[0],
            std=_FASHION_STATS[1],
            loader=make_idx_loader(
                "fashion-mnist",
                FASHION_MNIST_SUBDIRS,
                (FASHION_MNIST_DEBIAN_DIR,),
                "FashionMNIST",
                default_hint=(
                    f"install the Debian package dataset-fashion-mnist, use {DEFAULT_DATASET}, or {ROOT_HINT}"
                ),
            ),
            search_dirs=FASHION_MNIST_SUBDIRS,
            default_roots=(FASHION_MNIST_DEBIAN_DIR,),
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


def _to_realdata(
    spec: DatasetSpec, root: Path | None, train: bool, download: bool, image_size: int
) -> RealData:
    source = "bundled copy" if spec.bundled else str(root) if root is not None else "default location"
    where = f"{split_name(train)} split, {source}"
    images, labels = spec.loader(root, train, download)
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
    download: bool = False,
) -> tuple[RealData, RealData]:
    """Load (train, test) as float32 [N, C, S, S] in [0, 1] with S = image_size.

    `root` points at torchvision's on-disk layout; `download=True` lets
    torchvision fetch the files into `root` first (the only network access).
    """
    spec = get_spec(name)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ConfigError(
            f"data.image_size must be a positive integer, got {image_size!r}; e.g. data.image_size=32"
        )
    root_path = Path(root).expanduser() if root is not None and str(root) != "" else None
    train = _to_realdata(spec, root_path, True, download, image_size)
    test = _to_realdata(spec, root_path, False, download, image_size)
    return train, test
