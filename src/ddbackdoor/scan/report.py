"""A scan's files: scan.json (the result, judged), scan.png, and scan_masks.safetensors (the
reversed triggers, so that a cached scan judged against another calibration draws its picture)."""

from __future__ import annotations

from pathlib import Path

from ..artifacts import load_tensors, save_png, save_tensors, write_json
from ..errors import ArtifactError
from .picture import scan_picture
from .scanner import cached, public
from .signals import ScanOptions
from .source import ScanInput

MASKS = "scan_masks.safetensors"


def write_scan(out: Path, found: ScanInput, result: dict) -> None:
    masks = result.get("_masks", {})
    if masks:
        tensors = {f"{kind}.{c}": m[kind] for c, m in masks.items() for kind in ("mask", "pattern")}
        save_tensors(out / MASKS, tensors, {"set_sha256": result["set_sha256"]})
    write_json(out / "scan.json", public(result))
    if "class_scores" in result:  # judged: a measurement alone (before calibrating) has no picture
        save_png(out / "scan.png", scan_picture(found, result))


def read_scan(out: Path, found: ScanInput, opts: ScanOptions) -> dict | None:
    """The earlier scan of this set with these options, its reversed triggers included, or None."""
    result = cached(out / "scan.json", found, opts)
    if result is None:
        return None
    try:
        tensors, meta = load_tensors(out / MASKS)
    except ArtifactError:
        return result
    if meta.get("set_sha256") == result["set_sha256"]:
        classes = {int(key.split(".")[1]) for key in tensors}
        result["_masks"] = {c: {k: tensors[f"{k}.{c}"] for k in ("mask", "pattern")} for c in classes}
    return result
