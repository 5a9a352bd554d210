"""Real (undistilled) datasets as tensors: registry, loaders and the bundled default.

    train, test = load_dataset("cifar10", root="~/data")

Images come back as float32 [N, C, S, S] in [0, 1]; normalise with
`RealData.normalize`. Files are read in torchvision's on-disk layout by our
own parsers (no untrusted unpickling); see `DatasetSpec` for the loader contract.
"""

from ddbackdoor.data.realdata import RealData
from ddbackdoor.data.registry import (
    DATA_ENV,
    DATASETS,
    DEFAULT_DATASET,
    FASHION_MNIST_DEBIAN_DIR,
    OFFLINE_ENV,
    DatasetSpec,
    data_directory,
    dataset_names,
    get_spec,
    load_dataset,
)

__all__ = [
    "DATA_ENV",
    "DATASETS",
    "DEFAULT_DATASET",
    "FASHION_MNIST_DEBIAN_DIR",
    "OFFLINE_ENV",
    "DatasetSpec",
    "RealData",
    "data_directory",
    "dataset_names",
    "get_spec",
    "load_dataset",
]
