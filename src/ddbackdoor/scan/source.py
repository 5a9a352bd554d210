"""What `ddbackdoor scan` reads: a synthetic set alone, as a receiver gets it.

Three forms, one result: a finished run directory (only its synthetic.safetensors and the
distiller's image layout are read, never its trigger, metrics or real data), a bare safetensors
file (`images` and `labels`; normalised images carry `mean`/`std` in their metadata, anything else
is taken as pixels in [0, 1]), or an image folder with one sub-folder per class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..artifacts import load_tensors, tensor_digest
from ..config_build import read_yaml
from ..distill.idm import expand
from ..errors import ArtifactError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class ScanInput:
    """A synthetic set in pixel space (values may leave [0, 1]: that is evidence, not an error)."""

    pixels: torch.Tensor  # [N, C, H, W] float32
    labels: torch.Tensor  # [N] int64
    num_classes: int
    source: str
    kind: str  # "run", "file" or "folder"
    metadata: dict = field(default_factory=dict)  # what the file says about itself (attack included)

    def digest(self) -> str:
        """SHA-256 of the pixels and labels: a cached scan.json is reused only for the same set."""
        return tensor_digest({"pixels": self.pixels.contiguous(), "labels": self.labels.contiguous()}, "")

    @property
    def per_class(self) -> list[int]:
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()


def read_source(path: Path) -> ScanInput:
    """The synthetic set at `path`; anything unreadable is one ArtifactError line."""
    path = Path(path)
    if not path.exists():
        raise ArtifactError(
            f"{path} does not exist; give a run directory, a .safetensors file or an image folder"
        )
    reader = _reader_for(path)
    return _checked(reader(path))


def _reader_for(path: Path) -> Callable[[Path], ScanInput]:
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ArtifactError(
                f"{path} is not a .safetensors file; scan reads safetensors, a run or a folder"
            )
        return read_file
    if (path / "synthetic.safetensors").is_file():
        return read_run
    return read_folder


def read_file(path: Path) -> ScanInput:
    tensors, meta = load_tensors(path, require_digest=False)
    return _from_tensors(tensors, meta, str(path), "file")


def read_run(run_dir: Path) -> ScanInput:
    """The run's synthetic set as its victims see it (IDM's partitioned images expanded)."""
    tensors, meta = load_tensors(run_dir / "synthetic.safetensors")
    found = _from_tensors(tensors, meta, str(run_dir), "run")
    factor = _idm_factor(run_dir)
    if factor > 1:
        found.pixels, found.labels = expand(found.pixels, found.labels, factor)
    return found


def _idm_factor(run_dir: Path) -> int:
    config_file = run_dir / "config.yaml"
    config = read_yaml(config_file) if config_file.is_file() else {}
    if config.get("distill") != "idm":
        return 1
    return int((config.get("idm") or {}).get("factor", 2))


def _from_tensors(tensors: dict, meta: dict, source: str, kind: str) -> ScanInput:
    for key in ("images", "labels"):
        if key not in tensors:
            raise ArtifactError(f"{source} holds no tensor {key!r}; a synthetic set needs images and labels")
    images, labels = tensors["images"].float(), tensors["labels"]
    if labels.is_floating_point():  # soft labels: the class each image was made for
        labels = labels.argmax(1) if labels.dim() == 2 else labels.round()
    if images.dim() != 4 or labels.dim() != 1 or images.shape[0] != labels.shape[0]:
        raise ArtifactError(
            f"{source}: images {tuple(images.shape)} and labels {tuple(labels.shape)} do not form a set "
            "(images [N, C, H, W], labels [N])"
        )
    if meta.get("space") == "normalised":
        channels = images.shape[1]
        mean = torch.tensor(meta.get("mean", [0.0] * channels)).view(1, -1, 1, 1)
        std = torch.tensor(meta.get("std", [1.0] * channels)).view(1, -1, 1, 1)
        images = images * std + mean
    labels = labels.long()
    if labels.numel() and int(labels.min()) < 0:
        raise ArtifactError(f"{source} holds negative labels; labels are class indices 0, 1, ...")
    return ScanInput(images, labels, int(labels.max()) + 1 if labels.numel() else 0, source, kind, dict(meta))


def read_folder(folder: Path) -> ScanInput:
    """One sub-folder per class: named 0, 1, ... (those are the labels) or anything else (sorted)."""
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise ArtifactError(
            f"{folder} is neither a run directory (no synthetic.safetensors) nor an image folder "
            "(no class sub-folders)"
        )
    names = [p.name for p in classes]
    numbered = all(name.isdigit() for name in names)
    label_of = {p: int(p.name) if numbered else i for i, p in enumerate(classes)}
    images, labels = [], []
    for directory in classes:
        for file in sorted(directory.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES:
                images.append(_read_image(file))
                labels.append(label_of[directory])
    if not images:
        raise ArtifactError(f"{folder}'s class folders hold no images ({', '.join(IMAGE_SUFFIXES)})")
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise ArtifactError(
            f"{folder}: the images differ in size or channels ({sorted(shapes)[:3]}); resize them alike"
        )
    pixels = torch.from_numpy(np.stack(images)).float()
    tensor_labels = torch.tensor(labels)
    meta = {"classes": names}
    return ScanInput(pixels, tensor_labels, int(tensor_labels.max()) + 1, str(folder), "folder", meta)


def _read_image(file: Path) -> np.ndarray:
    try:
        with Image.open(file) as picture:
            grey = picture.mode in ("L", "1", "I", "I;16", "F")
            array = np.asarray(picture.convert("L" if grey else "RGB"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError):
        raise ArtifactError(f"{file} is not a readable image") from None
    return array[None] if grey else array.transpose(2, 0, 1)


def _checked(found: ScanInput) -> ScanInput:
    if not torch.isfinite(found.pixels).all():
        raise ArtifactError(f"{found.source} holds non-finite pixels (NaN or inf); the set is damaged")
    counts = found.per_class
    present = [c for c, n in enumerate(counts) if n]
    if len(present) < 3:
        raise ArtifactError(f"{found.source} has images of {len(present)} classes; scanning needs at least 3")
    return found
