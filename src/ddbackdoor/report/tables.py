"""What a report shows, as data: sweep rows grouped into lines and points, defense summaries."""

from __future__ import annotations

import json
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..sweeps.results import CARRIED_ASR, RESULT_COLUMNS

POOLED = ("seed",)  # axes whose runs are pooled into one point (their victims together)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def swept_keys(rows: list[dict[str, str]]) -> list[str]:
    return [key for key in (rows[0] if rows else {}) if key not in RESULT_COLUMNS]


def axes_and_lines(rows: list[dict[str, str]]) -> tuple[list[str], list[str]]:
    """Numeric swept keys with more than one value are x-axes; text keys (attack, clip) name lines."""
    axes, lines = [], []
    for key in swept_keys(rows):
        if key in POOLED:
            continue
        values = {row[key] for row in rows}
        if all(_number(v) is not None for v in values if v != ""):
            if len(values) > 1:
                axes.append(key)
        else:
            lines.append(key)
    return axes, lines


def line_label(row: dict[str, str], lines: list[str]) -> str:
    """`key=value` for each line key, by its last part unless two keys share it (`inkdrop.clip`,
    `sneakdoor.clip`: then by the whole key)."""
    short = [key.rsplit(".", 1)[-1] for key in lines]
    names = [s if short.count(s) == 1 else key for s, key in zip(short, lines, strict=True)]
    parts = [f"{name}={row[key]}" for name, key in zip(names, lines, strict=True) if row[key] != ""]
    return ", ".join(parts) or "all"


@dataclass
class Point:
    x: float
    mean: float
    std: float
    values: list[float]
    carried: int  # victims at ASR >= CARRIED_ASR (only meaningful for ASR)


def _modal(rows: list[dict[str, str]], key: str) -> str:
    return Counter(row[key] for row in rows).most_common(1)[0][0]


def series(rows: list[dict[str, str]], axis: str, score: str) -> dict[str, list[Point]]:
    """Per line: `score` against `axis`, other axes held at their most common value, seeds pooled."""
    axes, lines = axes_and_lines(rows)
    held = {key: _modal(rows, key) for key in axes if key != axis}
    groups: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["status"] != "finished" or row[axis] == "" or any(row[k] != v for k, v in held.items()):
            continue
        values = [float(v) for v in row[f"{score}_values"].split(";") if v]
        groups[line_label(row, lines)][float(row[axis])].extend(values)
    return {
        label: [
            Point(
                x,
                statistics.fmean(vals),
                statistics.pstdev(vals),
                vals,
                sum(v >= CARRIED_ASR for v in vals),
            )
            for x, vals in sorted(points.items())
        ]
        for label, points in groups.items()
    }


def clean_reference(rows: list[dict[str, str]]) -> dict[str, float]:
    """Mean CTA and ASR over the victims of finished clean runs (attack=none), if the sweep
    directory holds any: the level an attack has to beat."""
    clean = [row for row in rows if row.get("attack") == "none" and row["status"] == "finished"]
    out = {}
    for score in ("cta", "asr"):
        values = [float(v) for row in clean for v in row[f"{score}_values"].split(";") if v]
        if values:
            out[score] = statistics.fmean(values)
    return out


def held_values(rows: list[dict[str, str]], axis: str) -> dict[str, str]:
    axes, _ = axes_and_lines(rows)
    return {key: _modal(rows, key) for key in axes if key != axis}


def _pooled(rows: list[dict[str, str]], column: str) -> list[float]:
    return [float(v) for row in rows for v in row[column].split(";") if v]


def _mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.3f} ± {statistics.pstdev(values):.3f}" if values else ""


def has_validation(rows: list[dict[str, str]]) -> bool:
    """Whether any run held out a validation set (data.val_portion) and scored its victims there."""
    return any(row.get("val_asr_values") for row in rows)


def has_source_asr(rows: list[dict[str, str]]) -> bool:
    """Whether any run scored a source-specific ASR (eval.source_class)."""
    return any(row.get("asr_source_values") for row in rows)


def per_victim(row: dict[str, str], score: str = "asr") -> str:
    return ", ".join(f"{float(v):.3f}" for v in row.get(f"{score}_values", "").split(";") if v)


def _cells(rows: list[dict[str, str]], keys: list[str]) -> dict[tuple[str, ...], list[dict[str, str]]]:
    groups: dict[tuple[str, ...], list[dict[str, str]]] = defaultdict(list)
    for row in rows:
        if row["status"] == "finished":
            groups[tuple(row[k] for k in keys)].append(row)
    return groups


def validation_cells(members: list[dict[str, str]]) -> list[str]:
    """A cell's victims on its runs' validation set: mean CTA, mean ASR, victims at 0.9."""
    asr = _pooled(members, "val_asr_values")
    cta = _mean_std(_pooled(members, "val_cta_values"))
    return [cta, _mean_std(asr), f"{sum(v >= CARRIED_ASR for v in asr)}/{len(asr)}"]


def summary_table(rows: list[dict[str, str]], keys: list[str]) -> tuple[list[str], list[list[str]]]:
    """Finished runs grouped by `keys` (every swept key but the seed), victims pooled."""
    groups = _cells(rows, keys)
    source, validation = has_source_asr(rows), has_validation(rows)
    header = [
        *keys,
        "runs",
        "CTA",
        "ASR",
        "victims ASR>=0.9",
        "per-victim ASR",
        *(["validation CTA", "validation ASR", "validation victims >=0.9"] if validation else []),
        *(["ASR (source class)"] if source else []),
        "L-inf",
        "PSNR dB",
        "SSIM",
        "s/run",
    ]
    table = []
    for cell, members in groups.items():
        asr = _pooled(members, "asr_values")

        def mean_of(column: str, digits: int = 3, members=members) -> str:
            values = [float(m[column]) for m in members if m.get(column)]
            return f"{statistics.fmean(values):.{digits}f}" if values else ""

        table.append(
            [
                *cell,
                str(len(members)),
                _mean_std(_pooled(members, "cta_values")),
                _mean_std(asr),
                f"{sum(v >= CARRIED_ASR for v in asr)}/{len(asr)}",
                ", ".join(f"{v:.2f}" for v in asr),
                *(validation_cells(members) if validation else []),
                *([_mean_std(_pooled(members, "asr_source_values"))] if source else []),
                mean_of("stealth_linf"),
                mean_of("stealth_psnr_db", 1),
                mean_of("stealth_ssim"),
                mean_of("seconds", 0),
            ]
        )
    return header, table


MAX_SEED_COLUMNS = 6  # a wider by-seed table is not readable; the runs table has every run


def by_seed_table(rows: list[dict[str, str]], keys: list[str]) -> tuple[list[str], list[list[str]]] | None:
    """One row per seed, one column per cell (`keys`: every swept key but the seed): each victim's
    ASR and the run's mean CTA, so a reader sees whether a result holds in every seed. None when
    there is one seed or too many cells."""
    if "seed" not in (rows[0] if rows else {}):
        return None
    groups = _cells(rows, keys)
    seeds = sorted({row["seed"] for members in groups.values() for row in members}, key=float)
    if len(seeds) < 2 or len(groups) > MAX_SEED_COLUMNS:
        return None
    labels = [line_label(members[0], keys) for members in groups.values()]
    table = []
    for seed in seeds:
        entries = []
        for members in groups.values():
            run = next((row for row in members if row["seed"] == seed), None)
            entries.append(f"{per_victim(run)} (CTA {float(run['cta_mean']):.3f})" if run else "")
        table.append([seed, *entries])
    return ["seed", *labels], table


def by_network_table(victims: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]] | None:
    """A run evaluated on several architectures: CTA and ASR per victim architecture (does the
    backdoor transfer?). None when every victim has the distillation's architecture."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for victim in victims:
        groups[victim["network"]].append(victim)
    if len(groups) < 2:
        return None
    header = ["victim", "CTA", "ASR", "per-victim ASR"]
    table = [
        [
            network,
            _mean_std([v["cta"] for v in members]),
            _mean_std([v["asr"] for v in members]),
            ", ".join(f"{v['asr']:.3f}" for v in members),
        ]
        for network, members in groups.items()
    ]
    return header, table


def defense_effectiveness(before: dict[str, float], after: dict[str, float]) -> float:
    """BackdoorBench's DER: (max(0, ASR drop) - max(0, CTA drop) + 1) / 2, in [0, 1]; 0.5 = no
    effect, 1 = ASR removed at no cost in clean accuracy."""
    asr_drop = max(0.0, before["asr"] - after["asr"])
    cta_drop = max(0.0, before["cta"] - after["cta"])
    return (asr_drop - cta_drop + 1) / 2


def defense_rows(run_dir: Path) -> list[dict[str, Any]]:
    """One row per defense a run went through: detection quality, and CTA/ASR/DER after mitigation."""
    out = []
    for path in sorted((run_dir / "defenses").glob("*.json")):
        result = json.loads(path.read_text())
        row: dict[str, Any] = {"defense": result.get("defense", path.stem), "kind": result.get("kind")}
        if "after" in result:
            before, after = result["before"], result["after"]
            row.update(
                cta_before=before["cta"],
                cta_after=after["cta"],
                asr_before=before["asr"],
                asr_after=after["asr"],
                der=defense_effectiveness(before, after),
            )
        if "auroc" in result:
            row["detection"] = f"AUROC {result['auroc']:.3f}"
        if "flagged_classes" in result:
            row["detection"] = (
                f"flagged {result['flagged_classes'] or 'none'} (target {result['true_target']})"
            )
        if "sets" in result:
            row["detection"] = "; ".join(
                f"{name}: {r['flagged']}/{r['size']} flagged" for name, r in result["sets"].items()
            )
        out.append(row)
    return out
