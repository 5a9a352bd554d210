"""IDX files (MNIST, Fashion-MNIST), parsed by hand so that nothing but bytes is trusted.

Format: two zero bytes, a type code (0x08 = unsigned byte, the only one these
datasets use), the number of dimensions, then one big-endian uint32 per
dimension, then the data in C order.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ddbackdoor.data.loaders import (
    Loader,
    candidate_dirs,
    not_found,
    read_bytes,
    require_root,
    torchvision_download,
)
from ddbackdoor.errors import DataError

UBYTE = 0x08
IMAGES_MAGIC = 0x00000803  # uint8, 3 dims: [N, rows, cols]
LABELS_MAGIC = 0x00000801  # uint8, 1 dim: [N]


def idx_names(train: bool) -> tuple[str, str]:
    """Base file names (without .gz) of the images and labels of one split."""
    prefix = "train" if train else "t10k"
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def decompress_if_gzip(data: bytes, where: str) -> bytes:
    """Gunzip when the gzip magic is present, so plain and .gz files are both accepted."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{where}: corrupt or truncated gzip data ({exc}); re-download the file") from exc


def parse_idx(data: bytes, where: str, magic: int) -> np.ndarray:
    """Decode an (already decompressed) IDX blob, checking magic and that sizes add up."""
    if len(data) < 4:
        raise DataError(f"{where}: file is {len(data)} bytes, too short for an IDX header; re-download it")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise DataError(
            f"{where}: bad IDX magic number 0x{found:08x}, expected 0x{magic:08x}; "
            "is this the right file (images vs labels, not HTML)? re-download it"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where}: IDX header truncated ({len(data)} bytes); re-download the file")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != expected:
        raise DataError(
            f"{where}: IDX header promises {'x'.join(map(str, dims))} = {expected} bytes of data "
            f"but the file has {len(data) - header}; the file is truncated or corrupt, re-download it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read a plain or gzip'ed IDX file from disk."""
    return parse_idx(decompress_if_gzip(read_bytes(path), str(path)), str(path), magic)


def encode_idx(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX bytes (used by tools/ and tests to write fixtures)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def images_and_labels(images: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Pair an IDX image array [N, H, W] with labels [N]: add the channel axis, check N matches."""
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{where}: {images.shape[0]} images but {labels.shape[0]} labels; "
            "the files do not belong together, re-download them"
        )
    return images[..., None], labels.astype(np.int64)


def _find_pair(dirs: Sequence[Path], names: tuple[str, str]) -> tuple[Path, Path] | None:
    """First directory holding both files (plain preferred over .gz)."""
    for directory in dirs:
        found = []
        for name in names:
            for candidate in (directory / name, directory / f"{name}.gz"):
                if candidate.is_file():
                    found.append(candidate)
                    break
        if len(found) == 2:
            return found[0], found[1]
    return None


def make_idx_loader(dataset: str, subdirs: tuple[str, ...], torchvision_class: str) -> Loader:
    """Loader for an MNIST-style dataset stored as IDX files in torchvision's raw/ layout under
    `root` (or directly in it)."""

    def load(root: Path | None, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
        names = idx_names(train)
        what = f"{names[0]}[.gz] and {names[1]}[.gz]"
        root = require_root(dataset, root, what)
        if download:
            torchvision_download(dataset, root, torchvision_class, train=train)
        dirs = candidate_dirs(root, subdirs)
        pair = _find_pair(dirs, names)
        if pair is None:
            raise not_found(dataset, what, dirs)
        images = read_idx(pair[0], IMAGES_MAGIC)
        labels = read_idx(pair[1], LABELS_MAGIC)
        return images_and_labels(images, labels, f"{pair[0]} / {pair[1].name}")

    return load
