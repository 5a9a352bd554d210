"""`ddbackdoor report DIR`: one self-contained report.html (plots and pictures embedded) and a
report.md, for a sweep directory (results.csv) or a single run directory (metrics.json)."""

from .build import build_report

__all__ = ["build_report"]
