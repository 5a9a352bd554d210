"""The bundled `fashion-mnist-mini` subset: works offline with no data directory.

Files live in `ddbackdoor/data/bundled/fashion-mnist-mini/` (gzip'ed IDX,
same names as the original) and are read through importlib.resources so they
are found in a wheel, a zip or a source checkout alike. tools/make_bundled_subset.py
rebuilds them; the README next to them states provenance and licence.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from ddbackdoor.data.idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    decompress_if_gzip,
    idx_names,
    images_and_labels,
    parse_idx,
)
from ddbackdoor.errors import DataError

BUNDLED_PACKAGE = "ddbackdoor.data"
BUNDLED_DIR = ("bundled", "fashion-mnist-mini")


def _read_resource(name: str) -> tuple[bytes, str]:
    node = resources.files(BUNDLED_PACKAGE).joinpath(*BUNDLED_DIR, name)
    where = f"bundled {'/'.join(BUNDLED_DIR)}/{name}"
    try:
        return node.read_bytes(), where
    except OSError as exc:
        raise DataError(
            f"{where} is missing from the installed package ({exc}); "
            "reinstall ddbackdoor with its package data, or rebuild it with tools/make_bundled_subset.py"
        ) from exc


def load_fashion_mnist_mini(root: Path | None, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Stratified 6,000/1,000 Fashion-MNIST subset shipped with the package; `root`/`download` are ignored."""
    del root, download  # bundled: nothing to locate or fetch
    images_name, labels_name = (f"{n}.gz" for n in idx_names(train))
    blob, where = _read_resource(images_name)
    images = parse_idx(decompress_if_gzip(blob, where), where, IMAGES_MAGIC)
    blob, where = _read_resource(labels_name)
    labels = parse_idx(decompress_if_gzip(blob, where), where, LABELS_MAGIC)
    return images_and_labels(images, labels, f"bundled {'/'.join(BUNDLED_DIR)}")
