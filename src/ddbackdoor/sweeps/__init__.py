"""Sweeps: a grid of runs from one YAML file, run by an existing engine (local processes or Ray),
skipped when finished and resumed when interrupted, summarised in results.csv.

The layer sits above `experiment`: each run is an ordinary `ddbackdoor run` in its own process,
so a sweep's run equals the same run typed by hand, bit for bit.
"""

from .results import RESULT_COLUMNS, read_results, result_row
from .runner import format_plan, plan_sweep, run_sweep
from .spec import SweepRun, SweepSpec, expand, load_sweep

__all__ = [
    "RESULT_COLUMNS",
    "SweepRun",
    "SweepSpec",
    "expand",
    "format_plan",
    "load_sweep",
    "plan_sweep",
    "read_results",
    "result_row",
    "run_sweep",
]
