"""results.csv (and results.parquet when pyarrow is installed): one row per run of a sweep."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..artifacts import atomic_write, write_text

# a victim "carries" the backdoor at this ASR (the bar of the valid-pixel target, docs/seeded.md)
CARRIED_ASR = 0.9
SCORES = ("cta", "asr", "asr_all", "asr_source")  # asr_source: only with eval.source_class
# the same victims scored on the run's validation set (only with data.val_portion > 0)
VALIDATION_SCORES = ("val_cta", "val_asr", "val_asr_all")
STEALTH_KEYS = (
    "area_pixels",
    "linf",
    "l2",
    "psnr_db",
    "ssim",
    "trigger_outside_unit_share",
    "stamped_outside_unit_share",
)
RESULT_COLUMNS = (
    "id",
    "status",
    *(f"{score}_{part}" for score in SCORES for part in ("mean", "std", "values")),
    "victims",
    "victims_asr_ge_0.9",
    *(f"{score}_{part}" for score in VALIDATION_SCORES for part in ("mean", "std", "values")),
    "val_victims_asr_ge_0.9",
    *(f"stealth_{key}" for key in STEALTH_KEYS),
    "iteration",
    "seconds",
    "distill_seconds",
    "eval_seconds",
    "device",
    "error",
    "run_dir",
)
# columns that differ between two executions of the same runs (the rest must not)
TIMING_COLUMNS = ("seconds", "distill_seconds", "eval_seconds")


def _values(values: Sequence[float]) -> str:
    return ";".join(f"{v:.6f}" for v in values)


def _metrics_columns(metrics: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for score in SCORES:
        part = metrics.get(score, {})
        row[f"{score}_mean"] = part.get("mean")
        row[f"{score}_std"] = part.get("std")
        row[f"{score}_values"] = _values(part.get("values", []))
    validation = metrics.get("validation", {})
    for score in VALIDATION_SCORES:
        part = validation.get(score.removeprefix("val_"), {})
        row[f"{score}_mean"] = part.get("mean")
        row[f"{score}_std"] = part.get("std")
        row[f"{score}_values"] = _values(part.get("values", []))
    victims = metrics.get("per_victim", [])
    row["victims"] = len(victims)
    row["victims_asr_ge_0.9"] = sum(v["asr"] >= CARRIED_ASR for v in victims)
    if validation:
        row["val_victims_asr_ge_0.9"] = sum(v["val_asr"] >= CARRIED_ASR for v in victims)
    stealth = metrics.get("stealth", {})
    for key in STEALTH_KEYS:
        row[f"stealth_{key}"] = stealth.get(key)
    for key in ("iteration", *TIMING_COLUMNS):
        row[key] = metrics.get(key)
    return row


def run_device(run_dir: Path) -> str | None:
    """The device the run recorded in its config.yaml (provenance), if it got that far."""
    try:
        data = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    return (data.get("provenance") or {}).get("device")


def result_row(
    run_id: str, overrides: dict[str, Any], run_dir: Path, status: str, error: str = ""
) -> dict[str, Any]:
    """The row of one run: swept keys, then its metrics.json (if it finished)."""
    row: dict[str, Any] = {"id": run_id, "status": status, **overrides}
    metrics_file = run_dir / "metrics.json"
    if status == "finished" and metrics_file.exists():
        row.update(_metrics_columns(json.loads(metrics_file.read_text())))
    row["device"] = run_device(run_dir)
    row["error"] = error
    row["run_dir"] = f"{run_dir.parent.name}/{run_dir.name}"  # relative to the sweep directory
    return row


def columns(swept: Sequence[str]) -> list[str]:
    fixed = list(RESULT_COLUMNS)
    return [*fixed[:2], *swept, *fixed[2:]]


def _csv_text(rows: Sequence[dict[str, Any]], names: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in names})
    return buffer.getvalue()


def write_results(out: Path, rows: Sequence[dict[str, Any]], swept: Sequence[str]) -> list[Path]:
    """DIR/results.csv, and DIR/results.parquet when pyarrow is importable; written atomically."""
    names = columns(swept)
    write_text(out / "results.csv", _csv_text(rows, names))
    written = [out / "results.csv"]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    table = pa.table({name: _parquet_column([row.get(name) for row in rows]) for name in names})
    atomic_write(out / "results.parquet", lambda tmp: pq.write_table(table, tmp))
    written.append(out / "results.parquet")
    return written


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _parquet_column(values: list[Any]) -> list[Any]:
    """One type per column: numbers where every value is a number (rows read back from an older
    results.csv hold text), text otherwise; missing values stay null."""
    present = [v for v in values if v is not None and v != ""]
    if present and all(_number(v) is not None for v in present):
        return [None if v is None or v == "" else _number(v) for v in values]
    return [None if v is None else str(v) for v in values]


def read_results(out: Path) -> list[dict[str, str]]:
    """DIR/results.csv as a list of rows (all values as text)."""
    with (out / "results.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))
