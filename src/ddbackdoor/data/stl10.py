"""STL-10 (labelled splits) from torchvision's `stl10_binary/` directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddbackdoor.data.loaders import (
    not_found,
    read_bytes,
    require_root,
    split_name,
    torchvision_download,
)
from ddbackdoor.errors import DataError

STL10_DIR = "stl10_binary"
STL10_SIZE = 96
_IMAGE_BYTES = 3 * STL10_SIZE * STL10_SIZE


def stl10_files(train: bool) -> tuple[str, str]:
    """(images, labels) file names of one labelled split."""
    split = split_name(train)
    return f"{split}_X.bin", f"{split}_y.bin"


def load_stl10(root: Path | None, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """STL-10: images are N x 3 x 96 x 96 uint8 stored column-major per plane; labels are 1..10."""
    x_name, y_name = stl10_files(train)
    root = require_root("stl10", root, f"{STL10_DIR}/{x_name}")
    if download:
        torchvision_download("stl10", root, "STL10", split=split_name(train))
    directory = root / STL10_DIR
    x_path, y_path = directory / x_name, directory / y_name
    if not x_path.is_file() or not y_path.is_file():
        raise not_found("stl10", f"{STL10_DIR}/{x_name} and {STL10_DIR}/{y_name}", root)
    raw_x, raw_y = read_bytes(x_path), read_bytes(y_path)
    if not raw_x or len(raw_x) % _IMAGE_BYTES:
        raise DataError(
            f"{x_path}: size {len(raw_x)} bytes is not a positive multiple of {_IMAGE_BYTES} (3x96x96); "
            "the file is truncated or corrupt, re-download it"
        )
    n = len(raw_x) // _IMAGE_BYTES
    if len(raw_y) != n:
        raise DataError(f"{y_path}: {len(raw_y)} labels for {n} images in {x_name}; re-download the dataset")
    labels = np.frombuffer(raw_y, dtype=np.uint8).astype(np.int64)
    if labels.min() < 1 or labels.max() > 10:
        raise DataError(
            f"{y_path}: labels span {labels.min()}..{labels.max()}, expected 1..10; re-download the dataset"
        )
    # Same as torchvision: reshape to [N, C, 96, 96] then swap the last two
    # axes (each plane is stored column by column); then go channels-last.
    planes = np.frombuffer(raw_x, dtype=np.uint8).reshape(n, 3, STL10_SIZE, STL10_SIZE)
    images = np.ascontiguousarray(planes.transpose(0, 3, 2, 1))  # [N, C, a, b] -> [N, H=b, W=a, C]
    return images, labels - 1
