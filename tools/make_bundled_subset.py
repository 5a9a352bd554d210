#!/usr/bin/env python3
"""Build the bundled `fashion-mnist-mini` subset from the full Fashion-MNIST.

Why: the package must run offline with no data directory, yet shipping all of
Fashion-MNIST (30 MB) is too heavy. This picks a stratified, reproducible
subset (numpy Generator, seed 0) and writes it as gzip'ed IDX files with the
original names, plus a README stating provenance and licence.

    python tools/make_bundled_subset.py            # Debian's copy -> src/ddbackdoor/data/bundled/
    python tools/make_bundled_subset.py --source DIR --out DIR

Self-contained (numpy + stdlib) so it runs without installing the package.
Output is byte-for-byte reproducible (gzip mtime fixed to 0).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import struct
import sys
from pathlib import Path

import numpy as np

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = (
    Path(__file__).resolve().parents[1] / "src" / "ddbackdoor" / "data" / "bundled" / "fashion-mnist-mini"
)
SEED = 0
NUM_CLASSES = 10
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801

LICENSE_TEXT = """\
The MIT License (MIT)

Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read a (gzip'ed) IDX file, checking magic and size."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise SystemExit(f"{path}: bad IDX magic 0x{found:08x}, expected 0x{magic:08x}")
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = data[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)):
        raise SystemExit(f"{path}: header says {dims} but the file holds {len(body)} data bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    """Write uint8 `array` as a gzip'ed IDX file with a fixed mtime (reproducible bytes)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz,
    ):
        gz.write(header + array.tobytes())


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """`per_class` indices of each class, drawn without replacement, returned in original order."""
    chosen = []
    for c in range(NUM_CLASSES):
        pool = np.flatnonzero(labels == c)
        if pool.size < per_class:
            raise SystemExit(f"class {c} has only {pool.size} examples, need {per_class}")
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_source(source: Path, base: str) -> Path:
    for candidate in (source / f"{base}.gz", source / base):
        if candidate.is_file():
            return candidate
    raise SystemExit(
        f"{source}: no {base}[.gz]; install the Debian package dataset-fashion-mnist or pass --source"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=DEFAULT_SOURCE, help="directory with the full Fashion-MNIST"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=100)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(SEED)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    source_hashes = []
    for prefix, per_class in (("train", args.train_per_class), ("t10k", args.test_per_class)):
        img_src = find_source(args.source, f"{prefix}-images-idx3-ubyte")
        lab_src = find_source(args.source, f"{prefix}-labels-idx1-ubyte")
        images, labels = read_idx(img_src, IMAGES_MAGIC), read_idx(lab_src, LABELS_MAGIC)
        if images.shape[0] != labels.shape[0]:
            raise SystemExit(f"{img_src}: {images.shape[0]} images but {labels.shape[0]} labels")
        keep = stratified(labels, per_class, rng)
        for src, arr in ((img_src, images[keep]), (lab_src, labels[keep])):
            dest = args.out / (src.name if src.name.endswith(".gz") else f"{src.name}.gz")
            write_idx_gz(dest, arr)
            source_hashes.append((src.name, images.shape[0], sha256(src)))
            rows.append((dest.name, arr.shape[0], dest.stat().st_size, sha256(dest)))
        counts = np.bincount(labels[keep], minlength=NUM_CLASSES)
        print(f"{prefix}: {keep.size} of {labels.size} examples, per class {counts.tolist()}")

    train_n, test_n = NUM_CLASSES * args.train_per_class, NUM_CLASSES * args.test_per_class
    total = sum(r[2] for r in rows)
    readme = [
        "# fashion-mnist-mini",
        "",
        "A stratified subset of Fashion-MNIST bundled with ddbackdoor so that it runs offline",
        "with no data directory (the default dataset, `fashion-mnist-mini`).",
        "",
        "## Source",
        "",
        "Fashion-MNIST by Zalando Research (https://github.com/zalandoresearch/fashion-mnist),",
        f"taken from the Debian package `dataset-fashion-mnist` ({DEFAULT_SOURCE}).",
        "",
        "| source file | examples | sha256 |",
        "|---|---|---|",
        *(f"| {name} | {n} | `{digest}` |" for name, n, digest in source_hashes),
        "",
        "## Contents",
        "",
        f"- training: {train_n} images, {args.train_per_class} per class (from the 60,000 training images)",
        f"- test: {test_n} images, {args.test_per_class} per class (from the 10,000 test images)",
        "- 28x28 grayscale, uint8, labels 0..9: " + ", ".join(f"{i} {n}" for i, n in enumerate(CLASS_NAMES)),
        "",
        "| file | examples | bytes | sha256 |",
        "|---|---|---|---|",
        *(f"| {name} | {n} | {size} | `{digest}` |" for name, n, size, digest in rows),
        "",
        f"Total size: {total} bytes.",
        "",
        "## How it was made",
        "",
        "`python tools/make_bundled_subset.py` (in the ddbackdoor repository): with",
        f"`numpy.random.default_rng({SEED})`, for the training split and then the test split, and for",
        "each class 0..9 in turn, draw the required number of that class's indices without",
        "replacement (`Generator.choice`); the chosen indices are sorted, so the subset keeps",
        "the original file order. Files are gzip'ed IDX with the original names (gzip mtime 0,",
        "so rerunning the script reproduces them byte for byte).",
        "",
        "## Licence",
        "",
        "Fashion-MNIST is released under the MIT licence; this subset is redistributed under it:",
        "",
        "```",
        LICENSE_TEXT.rstrip(),
        "```",
        "",
    ]
    (args.out / "README.md").write_text("\n".join(readme), encoding="utf-8")
    print(f"wrote {len(rows)} files ({total} bytes) and README.md to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
