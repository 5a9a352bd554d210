"""Assemble report.md (pictures as files in report/) and report.html (everything embedded)."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts import atomic_write, write_text
from ..errors import UserError
from ..sweeps.results import read_results
from . import plots
from .tables import (
    POOLED,
    axes_and_lines,
    by_network_table,
    by_seed_table,
    clean_reference,
    defense_rows,
    has_source_asr,
    held_values,
    line_label,
    per_victim,
    series,
    summary_table,
    swept_keys,
)


@dataclass
class Report:
    """A title, then sections of text, tables and pictures, rendered twice (md, html)."""

    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)
    pictures: dict[str, bytes] = field(default_factory=dict)

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", text))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def picture(self, name: str, data: bytes, caption: str) -> None:
        self.pictures_side_by_side({name: data}, caption)

    def pictures_side_by_side(self, pictures: dict[str, bytes], caption: str) -> None:
        self.pictures.update(pictures)
        self.blocks.append(("pictures", (list(pictures), caption)))


def _fmt(value: object, digits: int = 3) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "" if value is None else str(value)


def _score(row: dict[str, str], score: str) -> str:
    if not row.get(f"{score}_mean"):
        return ""
    return f"{_fmt(row[f'{score}_mean'])} ± {_fmt(row[f'{score}_std'])}"


def _sweep_report(out: Path) -> Report:
    rows = read_results(out)
    if not rows:
        raise UserError(f"{out / 'results.csv'} has no runs; run the sweep first")
    report = Report(f"Sweep {out.name}")
    keys = swept_keys(rows)
    done = sum(row["status"] == "finished" for row in rows)
    report.text(f"{done} of {len(rows)} runs finished. Each score: mean ± std over the victims of a run.")
    axes, lines = axes_and_lines(rows)
    for axis in axes:
        held = held_values(rows, axis)
        note = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in held.items())
        scores = {score: series(rows, axis, score) for score in ("cta", "asr")}
        if any(scores["asr"].values()):
            name = f"against-{axis}.png"
            caption = (
                f"CTA and ASR against {axis}" + (f" ({note})" if note else "") + "; seeds pooled, "
                "error bars = std over victims, labels = victims with ASR >= 0.9"
            )
            reference = clean_reference(rows)
            report.picture(name, plots.against_axis(axis, scores, note, reference), caption)
    report.heading("Summary (seeds pooled)")
    report.text(
        "One row per cell of the sweep, its seeds' victims together: mean ± std over all of them, "
        "how many reach ASR 0.9, every victim's ASR, the stealth figures and the mean run time."
    )
    cells = [k for k in keys if k not in POOLED]
    report.table(*summary_table(rows, cells))
    seed_table = by_seed_table(rows, cells)
    if seed_table:
        report.heading("By seed")
        report.text("Each victim's ASR and the run's mean CTA, one row per seed.")
        report.table(*seed_table)
    report.heading("Runs")
    source = has_source_asr(rows)
    header = ["id", "status", *keys, "CTA", "ASR", "victims ASR>=0.9", "per-victim ASR"]
    header += [*(["ASR (source class)"] if source else []), "error"]
    table = [
        [
            row["id"],
            row["status"],
            *(row[k] for k in keys),
            _score(row, "cta"),
            _score(row, "asr"),
            f"{row['victims_asr_ge_0.9']}/{row['victims']}" if row.get("victims") else "",
            per_victim(row),
            *([_score(row, "asr_source")] if source else []),
            row["error"],
        ]
        for row in rows
    ]
    report.table(header, table)
    _pictures_and_defenses(report, out, rows, lines)
    return report


def _pictures_and_defenses(report: Report, out: Path, rows: list[dict[str, str]], lines: list[str]) -> None:
    shown = [row for row in rows if row["status"] == "finished" and row.get("seed", "0") in ("", "0")]
    shown = shown or [row for row in rows if row["status"] == "finished"][:1]
    if shown:
        report.heading("Synthetic sets and triggers (first seed of each cell)")
    for row in shown:
        report.pictures_side_by_side(_run_pictures(out / row["run_dir"], f"{row['id']}-"), row["id"])
    defense_table = [
        [row["id"], line_label(row, lines), *_defense_cells(d)]
        for row in rows
        if row["status"] == "finished"
        for d in defense_rows(out / row["run_dir"])
    ]
    if defense_table:
        report.heading("Defenses")
        report.text(
            "DER (BackdoorBench's defense effectiveness rating) = (max(0, ASR drop) - max(0, CTA drop) + 1)"
            " / 2: 0.5 = no effect, 1 = backdoor removed at no cost."
        )
        report.table(
            ["run", "attack", "defense", "detection", "CTA before→after", "ASR before→after", "DER"],
            defense_table,
        )


def _run_pictures(run_dir: Path, prefix: str = "") -> dict[str, bytes]:
    """The run's trigger and synthetic-set grid, when it wrote them."""
    paths = [run_dir / f"{kind}.png" for kind in ("trigger", "synthetic")]
    return {f"{prefix}{path.name}": path.read_bytes() for path in paths if path.exists()}


def _defense_cells(d: dict) -> list[str]:
    moved = "der" in d
    return [
        d["defense"],
        d.get("detection", ""),
        f"{_fmt(d['cta_before'])}→{_fmt(d['cta_after'])}" if moved else "",
        f"{_fmt(d['asr_before'])}→{_fmt(d['asr_after'])}" if moved else "",
        _fmt(d["der"]) if moved else "",
    ]


def _run_report(run_dir: Path) -> Report:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    report = Report(f"Run {run_dir.name}")
    report.text(
        f"CTA {_fmt(metrics['cta']['mean'])} ± {_fmt(metrics['cta']['std'])}, "
        f"ASR {_fmt(metrics['asr']['mean'])} ± {_fmt(metrics['asr']['std'])} at iteration "
        f"{metrics.get('iteration')}; {metrics.get('seconds', 0):.0f} s."
    )
    report.table(
        ["victim", "seed", "CTA", "ASR", "ASR (all classes)"],
        [
            [v["network"], str(v["seed"]), _fmt(v["cta"]), _fmt(v["asr"]), _fmt(v["asr_all"])]
            for v in metrics.get("per_victim", [])
        ],
    )
    networks = by_network_table(metrics.get("per_victim", []))
    if networks:
        report.heading("By victim architecture")
        report.table(*networks)
    if len(metrics.get("history", [])) > 1:
        report.picture("history.png", plots.history(metrics["history"]), "CTA and ASR during distillation")
    stealth = metrics.get("stealth", {})
    if stealth:
        report.heading("Stealth")
        report.table(["figure", "value"], [[k, _fmt(v, 4)] for k, v in stealth.items()])
    pictures = _run_pictures(run_dir)
    if pictures:
        report.pictures_side_by_side(pictures, "trigger (left) and synthetic set, one row per class")
    defenses = defense_rows(run_dir)
    if defenses:
        report.heading("Defenses")
        report.table(
            ["defense", "detection", "CTA before→after", "ASR before→after", "DER"],
            [_defense_cells(d) for d in defenses],
        )
    return report


def _markdown(report: Report) -> str:
    lines = [f"# {report.title}", ""]
    for kind, content in report.blocks:
        if kind == "heading":
            lines += [f"## {content}", ""]
        elif kind == "text":
            lines += [str(content), ""]
        elif kind == "table":
            header, rows = content
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
            lines.append("")
        else:
            names, caption = content
            lines += [" ".join(f"![{name}](report/{name})" for name in names), "", f"*{caption}*", ""]
    return "\n".join(lines)


STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
    "figure{display:inline-block;margin:6px;vertical-align:top}figcaption{font-size:11px;max-width:560px}"
    "img{image-rendering:pixelated;max-width:560px}"
)


def _html(report: Report) -> str:
    esc = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>{esc(report.title)}</title><style>{STYLE}</style>"]
    parts.append(f"<h1>{esc(report.title)}</h1>")
    for kind, content in report.blocks:
        if kind == "heading":
            parts.append(f"<h2>{esc(str(content))}</h2>")
        elif kind == "text":
            parts.append(f"<p>{esc(str(content))}</p>")
        elif kind == "table":
            header, rows = content
            parts.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
            parts.append("</table>")
        else:
            names, caption = content
            images = "".join(
                f"<img alt='{esc(name)}' src='data:image/png;base64,"
                f"{base64.b64encode(report.pictures[name]).decode()}'> "
                for name in names
            )
            parts.append(f"<figure>{images}<figcaption>{esc(caption)}</figcaption></figure>")
    return "\n".join(parts) + "\n"


def build_report(directory: str | Path) -> tuple[Path, Path]:
    """Write DIR/report.html and DIR/report.md (+ DIR/report/*.png); returns their paths."""
    directory = Path(directory)
    if (directory / "results.csv").exists():
        report = _sweep_report(directory)
    elif (directory / "metrics.json").exists():
        report = _run_report(directory)
    else:
        raise UserError(
            f"{directory} holds neither results.csv (a sweep) nor metrics.json (a finished run); "
            "pass the --out of `ddbackdoor sweep` or `ddbackdoor run`"
        )
    for name, data in report.pictures.items():
        atomic_write(directory / "report" / name, lambda tmp, data=data: tmp.write_bytes(data))
    write_text(directory / "report.md", _markdown(report))
    write_text(directory / "report.html", _html(report))
    return directory / "report.html", directory / "report.md"
