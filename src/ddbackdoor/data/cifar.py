"""CIFAR-10 / CIFAR-100 in torchvision's layout, read without trusting pickle.

The "python version" of CIFAR ships as pickles. A plain `pickle.load` would run
whatever code a tampered file names, so `RestrictedUnpickler` resolves only
the handful of numpy constructors those files use and refuses everything else.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ddbackdoor.data.loaders import (
    not_found,
    read_bytes,
    require_root,
    torchvision_download,
)
from ddbackdoor.errors import DataError

CIFAR10_PY_DIR = "cifar-10-batches-py"
CIFAR10_BIN_DIR = "cifar-10-batches-bin"
CIFAR100_PY_DIR = "cifar-100-python"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCHES = ("test_batch",)
_PIXELS = 3 * 32 * 32
_BIN_RECORD = 1 + _PIXELS  # CIFAR-10 binary: one label byte, then 3072 pixel bytes

# Resolve numpy's own pickle helpers through public objects rather than
# importing private modules (numpy.core vs numpy._core moved in numpy 2).
_SAMPLE = np.zeros(1, dtype=np.uint8)
_RECONSTRUCT = _SAMPLE.__reduce__()[0]
_FROMBUFFER = _SAMPLE.__reduce_ex__(5)[0]


def _safe_dtype(*args: Any) -> np.dtype:
    """np.dtype, but never an object dtype (which could smuggle arbitrary Python objects)."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"object dtype {dtype!r} is not allowed")
    return dtype


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What protocol-2 pickles use to rebuild `bytes`; only the latin-1 codec is allowed."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    if not isinstance(text, str):
        raise pickle.UnpicklingError("_codecs.encode expects a str")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can build dicts, lists, str/bytes, numbers and plain numpy arrays, nothing else."""

    def __init__(self, data: bytes, where: str) -> None:
        # latin1 is what numpy needs for arrays pickled by Python 2 (the
        # official CIFAR files); their str keys then arrive as str.
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        """Resolve only allow-listed globals; everything else is refused before it is imported."""
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.where}: refusing to unpickle {module}.{name}; CIFAR files hold only numpy arrays, "
                "lists and dicts, so this file is not a genuine CIFAR batch, re-download it"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.where}: refusing a pickle persistent id; re-download the file")


def safe_unpickle(path: Path) -> Any:
    """Load a CIFAR python-version pickle with `RestrictedUnpickler`."""
    data = read_bytes(path)
    try:
        return RestrictedUnpickler(data, str(path)).load()
    except DataError:
        raise
    except Exception as exc:  # any parse failure of an untrusted file is a data error
        raise DataError(
            f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: {exc}); re-download it"
        ) from exc


def _batch_arrays(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, 32, 32, 3], int64 [N]) from one CIFAR pickle batch."""
    obj = safe_unpickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict, found {type(obj).__name__}; re-download the file")
    entries = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    for key in ("data", label_key):
        if key not in entries:
            raise DataError(f"{path}: missing key {key!r}; re-download the file")
    data, labels = entries["data"], entries[label_key]
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != _PIXELS
    ):
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' is {desc}, expected uint8 [N, {_PIXELS}]; re-download the file")
    if not isinstance(labels, (list, np.ndarray)):
        raise DataError(
            f"{path}: {label_key!r} is {type(labels).__name__}, expected a list; re-download the file"
        )
    try:
        label_array = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: {label_key!r} is not a list of integers; re-download the file") from exc
    if label_array.ndim != 1 or label_array.shape[0] != data.shape[0]:
        raise DataError(
            f"{path}: {data.shape[0]} images but {label_key!r} has shape {label_array.shape}; "
            "re-download the file"
        )
    if label_array.size and not np.issubdtype(label_array.dtype, np.integer):
        raise DataError(
            f"{path}: {label_key!r} holds {label_array.dtype}, expected integers; re-download the file"
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, label_array.astype(np.int64)


def _read_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 binary batch: records of 1 label byte + 3072 pixel bytes (R, G, B planes)."""
    raw = read_bytes(path)
    if not raw or len(raw) % _BIN_RECORD:
        raise DataError(
            f"{path}: size {len(raw)} bytes is not a positive multiple of the "
            f"{_BIN_RECORD}-byte CIFAR-10 record; the file is truncated or corrupt, re-download it"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _BIN_RECORD)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, records[:, 0].astype(np.int64)


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    return images, np.concatenate([p[1] for p in parts])


def _require_files(directory: Path, names: tuple[str, ...]) -> list[Path]:
    paths = [directory / n for n in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(
            f"{directory}: missing {', '.join(missing)}; "
            "the extraction is incomplete, re-download the dataset"
        )
    return paths


def load_cifar10(root: Path | None, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from cifar-10-batches-py/ (pickles) or, failing that, cifar-10-batches-bin/."""
    what = f"{CIFAR10_PY_DIR}/ or {CIFAR10_BIN_DIR}/"
    root = require_root("cifar10", root, what)
    if download:
        torchvision_download("cifar10", root, "CIFAR10", train=train)
    names = CIFAR10_TRAIN_BATCHES if train else CIFAR10_TEST_BATCHES
    if (root / CIFAR10_PY_DIR).is_dir():
        paths = _require_files(root / CIFAR10_PY_DIR, names)
        return _concat([_batch_arrays(p, "labels") for p in paths])
    if (root / CIFAR10_BIN_DIR).is_dir():
        paths = _require_files(root / CIFAR10_BIN_DIR, tuple(f"{n}.bin" for n in names))
        return _concat([_read_bin_batch(p) for p in paths])
    raise not_found("cifar10", what, root)


def load_cifar100(root: Path | None, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-100 (fine labels) from cifar-100-python/{train,test}."""
    what = f"{CIFAR100_PY_DIR}/"
    root = require_root("cifar100", root, what)
    if download:
        torchvision_download("cifar100", root, "CIFAR100", train=train)
    if not (root / CIFAR100_PY_DIR).is_dir():
        raise not_found("cifar100", what, root)
    (path,) = _require_files(root / CIFAR100_PY_DIR, ("train" if train else "test",))
    return _batch_arrays(path, "fine_labels")
