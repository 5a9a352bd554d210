"""Run-directory I/O: atomic writes, safetensors + JSON only, pictures.

Nothing here unpickles: a distilled set is exactly what an attacker hands
out, so loading one must never run code.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle  # only for its error type: nothing here unpickles
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import ArtifactError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temp file in the same folder, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; artifacts are meant to be shared and read
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


def tensor_digest(tensors: dict[str, torch.Tensor], metadata_json: str) -> str:
    """SHA-256 over the metadata and every tensor (name, dtype, shape, bytes), in name order."""
    digest = hashlib.sha256(metadata_json.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """safetensors with JSON metadata and a SHA-256 of the content that `load_tensors` checks."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta_json = json.dumps(metadata)
    meta = {"json": meta_json, "sha256": tensor_digest(tensors, meta_json)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_tensors(path: Path, require_digest: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load and verify an artifact; any damage is one `ArtifactError` naming the file.

    `require_digest=False` accepts a safetensors file written elsewhere (no SHA-256 to check: a
    set someone else distilled); a digest that is present is still checked."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        tensors = load_file(str(path))
        metadata = json.loads(meta.get("json", "{}"))
    except FileNotFoundError:
        raise ArtifactError(f"artifact {path} does not exist") from None
    except (SafetensorError, OSError, ValueError, UnicodeDecodeError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ArtifactError(f"artifact {path} is not a readable safetensors file ({reason})") from None
    expected = meta.get("sha256")
    if expected is None and not require_digest:
        return tensors, metadata
    if expected is None:
        raise ArtifactError(f"artifact {path} carries no SHA-256; it was not written by ddbackdoor")
    if tensor_digest(tensors, meta.get("json", "{}")) != expected:
        raise ArtifactError(f"artifact {path} fails its SHA-256 check: it was modified or damaged")
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


PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _tensor_lines(tensors: dict[str, Any]) -> list[str]:
    lines = []
    for name, value in sorted(tensors.items()):
        if isinstance(value, torch.Tensor):
            stats = ""
            if value.numel() and value.is_floating_point():
                low, high, mean = (float(f(value)) for f in (torch.min, torch.max, torch.mean))
                stats = f" min {low:.4g} max {high:.4g} mean {mean:.4g}"
            lines.append(f"  {name}: {str(value.dtype).removeprefix('torch.')} {list(value.shape)}{stats}")
        else:
            lines.append(f"  {name}: {type(value).__name__}")
    return lines


def describe(path: Path, trust_pickle: bool = False) -> str:
    """What an artifact holds, after verifying it; pickles only with explicit trust."""
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        if not trust_pickle:
            raise ArtifactError(
                f"{path} is a pickle-based file and loading one can run arbitrary code; "
                "pass --trust-pickle only if you trust where it came from"
            )
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
            raise ArtifactError(
                f"cannot load {path} even with --trust-pickle ({type(err).__name__})"
            ) from None
        content = loaded if isinstance(loaded, dict) else {"value": loaded}
        return "\n".join([f"{path}: pickle (loaded with torch weights_only=True)", *_tensor_lines(content)])
    if path.suffix != ".safetensors":
        raise ArtifactError(
            f"cannot inspect {path}: expected a .safetensors file (or a pickle with --trust-pickle)"
        )
    tensors, metadata = load_tensors(path)
    lines = [f"{path}: safetensors, SHA-256 verified", f"metadata: {json.dumps(metadata, sort_keys=True)}"]
    return "\n".join([*lines, "tensors:", *_tensor_lines(tensors)])
