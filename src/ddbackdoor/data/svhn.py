"""SVHN (cropped digits) from torchvision's `{train,test}_32x32.mat` files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddbackdoor.data.loaders import (
    as_labels,
    as_uint8,
    not_found,
    require_root,
    split_name,
    torchvision_download,
)
from ddbackdoor.errors import DataError


def svhn_file(train: bool) -> str:
    """File name of one split, as torchvision stores it directly under root."""
    return f"{split_name(train)}_32x32.mat"


def load_svhn(root: Path | None, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """SVHN: X is [32, 32, 3, N] uint8, y is [N, 1] with 10 standing for the digit 0."""
    name = svhn_file(train)
    root = require_root("svhn", root, name)
    if download:
        torchvision_download("svhn", root, "SVHN", split=split_name(train))
    path = root / name
    if not path.is_file():
        raise not_found("svhn", name, root)
    from scipy.io import loadmat  # deferred: scipy is slow to import and only SVHN needs it

    try:
        mat = loadmat(str(path), variable_names=["X", "y"])
    except Exception as exc:  # scipy raises many types for a bad file (incl. MATLAB v7.3/HDF5)
        raise DataError(
            f"{path}: not a readable MATLAB v5 file ({type(exc).__name__}: {exc}); re-download it"
        ) from exc
    for key in ("X", "y"):
        if key not in mat:
            raise DataError(f"{path}: missing variable {key!r}; re-download the file")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"])
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataError(f"{path}: X has shape {x.shape}, expected [32, 32, 3, N]; re-download the file")
    images = as_uint8(np.ascontiguousarray(x.transpose(3, 0, 1, 2)), str(path))
    if y.size != x.shape[3]:
        raise DataError(f"{path}: {x.shape[3]} images but {y.size} labels; re-download the file")
    labels = as_labels(y, str(path))
    labels[labels == 10] = 0
    return images, labels
