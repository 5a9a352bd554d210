"""Run-directory I/O: atomic writes, safetensors + JSON only, pictures.

Nothing here unpickles: a distilled set is exactly what an attacker hands
out, so loading one must never run code.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import ArtifactError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temp file in the same folder, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """safetensors with JSON metadata (safetensors metadata must be str -> str)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"json": json.dumps(metadata)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        tensors = load_file(str(path))
        metadata = json.loads(meta.get("json", "{}"))
    except FileNotFoundError:
        raise ArtifactError(f"artifact {path} does not exist") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"artifact {path} is not a readable safetensors file ({err})") from None
    return tensors, metadata


def image_grid(images: torch.Tensor, rows: int, scale: int = 2) -> Image.Image:
    """Pixel-space images [N, C, H, W] in [0, 1] -> one PIL grid, `rows` rows."""
    images = images.detach().cpu().clamp(0, 1)
    n, c, h, w = images.shape
    cols = -(-n // rows)
    grid = torch.ones(c, rows * (h + 1) + 1, cols * (w + 1) + 1)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = images[i]
    array = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    picture = Image.fromarray(array.squeeze(-1) if c == 1 else array)
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def save_png(path: Path, picture: Image.Image) -> None:
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))
