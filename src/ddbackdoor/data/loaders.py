"""Helpers shared by the per-format loaders: locating files, errors, downloads, validation.

Loader contract (see `DatasetSpec.loader`): ``loader(root, train, download)``
returns ``(images, labels)`` where ``images`` is a uint8 numpy array laid out
[N, H, W, C] (channels last, as the files mostly store them) and ``labels`` is
an int64 numpy array [N] with values in [0, num_classes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from ddbackdoor.errors import DataError, DataNotFound, DownloadFailed

Loader = Callable[[Path | None, bool, bool], tuple[np.ndarray, np.ndarray]]

ROOT_HINT = "pass data.root=DIR pointing at torchvision's layout, or data.download=auto to fetch it"


def split_name(train: bool) -> str:
    """'train' or 'test', for messages and torchvision's `split=` argument."""
    return "train" if train else "test"


def not_found(dataset: str, what: str, where: Sequence[Path] | Path, hint: str = ROOT_HINT) -> DataNotFound:
    """The standard one-line 'dataset not found' error naming what and where we looked."""
    places = [where] if isinstance(where, Path) else list(where)
    joined = ", ".join(str(p) for p in places) if places else "(no directory given)"
    return DataNotFound(f"dataset {dataset!r} not found: looked for {what} under {joined}; {hint}")


def require_root(dataset: str, root: Path | None, what: str) -> Path:
    """A loader reads one data directory (`load_dataset` always gives one)."""
    if root is None:
        raise DataNotFound(f"dataset {dataset!r} needs a data directory holding {what}; {ROOT_HINT}")
    return root


def candidate_dirs(root: Path, subdirs: Iterable[str]) -> list[Path]:
    """root/sub for each sub ('.' meaning root itself), in search order."""
    return [root if sub in ("", ".") else root / sub for sub in subdirs]


def read_bytes(path: Path) -> bytes:
    """Read a whole file, turning OS errors into a DataError that names it."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; check the file's permissions") from exc


def torchvision_download(dataset: str, root: Path | None, class_name: str, **kwargs: object) -> None:
    """Fetch a dataset into `root` with torchvision (checksummed); we then read the files ourselves."""
    if root is None:
        raise DataNotFound(f"dataset {dataset!r}: data.download=true needs a directory to download into")
    import torchvision.datasets as tv_datasets

    try:
        root.mkdir(parents=True, exist_ok=True)
        getattr(tv_datasets, class_name)(str(root), download=True, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:  # urllib's URLError is an OSError
        reason = str(getattr(exc, "reason", "") or exc).strip().splitlines()
        msg = f"{type(exc).__name__}: {reason[0][:120]}" if reason else type(exc).__name__
        raise DownloadFailed(
            f"dataset {dataset!r}: download into {root} failed ({msg}); "
            "check the network, or fetch the files by hand into torchvision's layout under data.root",
            msg,
        ) from exc


def as_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """Accept float/int pixel arrays holding whole numbers in [0, 255]; reject anything else."""
    if array.dtype == np.uint8:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise DataError(
            f"{where}: pixel data has dtype {array.dtype}, expected uint8; re-download the dataset"
        )
    if array.size and np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise DataError(f"{where}: pixel data contains NaN or infinity; re-download the dataset")
    if array.size and (array.min() < 0 or array.max() > 255 or not np.array_equal(array, np.round(array))):
        raise DataError(f"{where}: pixel values are not whole numbers in 0..255; re-download the dataset")
    return array.astype(np.uint8)


def as_labels(array: np.ndarray, where: str) -> np.ndarray:
    """Labels as int64 [N]; floats are accepted only when finite and whole."""
    array = np.asarray(array).reshape(-1)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or not np.array_equal(array, np.round(array)):
            raise DataError(f"{where}: labels contain NaN, infinity or fractions; re-download the dataset")
    elif not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"{where}: labels have dtype {array.dtype}, expected integers; re-download the dataset"
        )
    return array.astype(np.int64)


def check_arrays(
    dataset: str,
    images: object,
    labels: object,
    *,
    channels: int,
    size: int,
    num_classes: int,
    where: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a loader's output against the spec (layout, dtype, sizes, label range)."""
    if not isinstance(images, np.ndarray) or not isinstance(labels, np.ndarray):
        raise DataError(f"dataset {dataset!r} ({where}): loader did not return numpy arrays")
    images = as_uint8(images, f"dataset {dataset!r} ({where})")
    labels = as_labels(labels, f"dataset {dataset!r} ({where})")
    expected = (size, size, channels)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise DataError(
            f"dataset {dataset!r} ({where}): images have shape {images.shape}, expected [N, {size}, {size}, "
            f"{channels}]; re-download the dataset"
        )
    if images.shape[0] == 0:
        raise DataError(f"dataset {dataset!r} ({where}): no images; re-download the dataset")
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"dataset {dataset!r} ({where}): {images.shape[0]} images but {labels.shape[0]} labels; "
            "re-download the dataset"
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"dataset {dataset!r} ({where}): labels span {low}..{high}, expected 0..{num_classes - 1}; "
            "re-download the dataset"
        )
    return images, labels
