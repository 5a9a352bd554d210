"""The command line, a thin layer over the Python API.

Every `UserError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from . import __version__, commands, reproducible
from .errors import Interrupted, UserError


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: negative values are not allowed")
    return values


def _ipc_list(text: str) -> tuple[int, ...]:
    values = tuple(_int_list(text))
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: images per class must be at least 1")
    return values


def one_line(message: str) -> str:
    """Error messages quote user input, which may hold line breaks; keep the message one line."""
    return message.replace("\r", "\\r").replace("\n", "\\n")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (like every other error), not usage + message; and
    a description that names registered parts is built by `describe` only when help is asked for
    (the registries import torch, which must wait for pin_environment)."""

    def __init__(self, *args, describe: Callable[[], str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.describe = describe

    def format_help(self) -> str:
        if self.describe is not None:
            self.description = self.describe()
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"ddbackdoor: error: {one_line(message)} (see `{self.prog} --help`)\n")


def _run_help() -> str:
    from .catalog import run_help

    return run_help()


def _defend_help() -> str:
    from .defenses import DEFENSES

    return (
        f"Defenses: {', '.join(DEFENSES)} (or all; `ddbackdoor list defenses` shows each one's options). "
        "Options: NAME.key=value for one defense, key=value for every selected defense with that key, "
        "or the runner's clean_fraction, device, threads."
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="ddbackdoor",
        description="Backdoor attacks against dataset distillation: distil, attack, evaluate, defend.",
    )
    parser.add_argument("--version", action="version", version=f"ddbackdoor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="distil a dataset under an attack and evaluate victims",
        describe=_run_help,
    )
    run.add_argument("items", nargs="*", metavar="[CONFIG.yaml] key=value", help="config file and overrides")
    run.add_argument("--out", type=Path, default=None, help="run directory (default runs/<name>)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument(
        "--restart",
        "--overwrite",
        dest="restart",
        action="store_true",
        help="start over in --out instead of resuming its last checkpoint (or reporting a finished run)",
    )
    run.set_defaults(func=commands.cmd_run)
    demo = sub.add_parser("demo", help="clean vs NAIVEATTACK vs DOORPING on the bundled data (quick profile)")
    demo.add_argument("items", nargs="*", metavar="key=value", help="overrides applied to all four runs")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--quiet", action="store_true")
    demo.add_argument("--restart", action="store_true", help="start the four runs over instead of resuming")
    demo.set_defaults(func=commands.cmd_demo)
    stack = sub.add_parser(
        "stack",
        help="DC runs that differ only in seed/attack/poison/doorping, K at a time in one process",
        description="Every combination of the --grid axes is one run (OUT/CELL); runs are distilled "
        "K at a time with their networks and synthetic sets stacked (vmap), then evaluated one by one. "
        "Each run resumes from its checkpoint and equals the same run alone up to float rounding.",
    )
    stack.add_argument("items", nargs="*", metavar="[CONFIG.yaml] key=value", help="shared config")
    stack.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="an axis of runs, e.g. seed=0,1 or attack=none,naive,doorping (repeatable)",
    )
    stack.add_argument(
        "--cell",
        action="append",
        default=[],
        metavar='"KEY=V KEY=V"',
        help='one run\'s own overrides, e.g. "attack=doorping poison.clip=false" (repeatable; '
        "crossed with every --grid axis)",
    )
    stack.add_argument("--k", type=int, default=0, help="runs per stack (default: all at once)")
    stack.add_argument("--out", type=Path, default=Path("runs/stack"))
    stack.add_argument("--quiet", action="store_true")
    stack.add_argument("--restart", action="store_true", help="start every run over instead of resuming")
    stack.set_defaults(func=commands.cmd_stack)
    sweep = sub.add_parser(
        "sweep",
        help="every run of a sweep file (grid, zip, cases, seeds), resumable, on local processes or Ray",
        description="Runs go to OUT/runs/ID (ID from the swept values and the resolved config's hash); "
        "a finished run is skipped and an interrupted one resumes, so running the same command "
        "again continues a stopped sweep. OUT/results.csv holds one row per run. key=value overrides "
        "apply to every run (not to a key the file sweeps). See docs/sweeps.md for the file format.",
    )
    sweep.add_argument("sweep_file", type=Path, metavar="SWEEP.yaml")
    sweep.add_argument(
        "items", nargs="*", metavar="key=value", help="overrides applied to every run, e.g. data.root=DIR"
    )
    sweep.add_argument("--out", type=Path, default=None, help="sweep directory (required unless --dry-run)")
    sweep.add_argument(
        "--dry-run", action="store_true", help="list the runs (with the overrides applied) and start none"
    )
    sweep.add_argument("--executor", default="local", help="local (processes here) or ray")
    sweep.add_argument("--jobs", type=int, default=1, help="runs at a time (local; a local Ray's CPUs)")
    sweep.add_argument(
        "--ray-address", default=None, help="an existing Ray cluster (e.g. auto); default: start one here"
    )
    sweep.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs each Ray task declares")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep.set_defaults(func=commands.cmd_sweep)
    listing = sub.add_parser(
        "list",
        help="every profile, dataset, network, distiller, attack and defense, with its defaults",
        description="Each name with a one-line description and its defaults (plugins included).",
    )
    listing.add_argument(
        "kinds", nargs="*", metavar="KIND", help="profiles, datasets, networks, distillers, attacks, defenses"
    )
    listing.set_defaults(func=commands.cmd_list)
    report = sub.add_parser(
        "report",
        help="report.html (plots and pictures embedded) and report.md for a sweep or a run directory",
    )
    report.add_argument("directory", type=Path, help="the --out of `ddbackdoor sweep` or `ddbackdoor run`")
    report.set_defaults(func=commands.cmd_report)
    rescore = sub.add_parser(
        "rescore",
        help="score a finished run's synthetic set against the trigger of each earlier iteration",
        description="Trains the run's victims once (same seeds and protocol as its evaluation) and "
        "reports their ASR under every trigger history.jsonl recorded (DOORPING: one per iteration), "
        "to show which trigger the synthetic set carries. Writes RUN/rescore.json and RUN/rescore.png.",
    )
    rescore.add_argument("run_dir", type=Path, help="a finished run directory")
    rescore.add_argument(
        "--iterations", type=_int_list, default=None, metavar="N[,N]", help="only these iterations' triggers"
    )
    rescore.add_argument("--device", default=None, help="override the run's device (cpu, cuda)")
    rescore.set_defaults(func=commands.cmd_rescore)
    inspect = sub.add_parser("inspect", help="verify an artifact and show what it holds (no code runs)")
    inspect.add_argument("file", type=Path)
    inspect.add_argument(
        "--trust-pickle", action="store_true", help="allow a pickle-based file (.pt/.pth/.pkl); unsafe"
    )
    inspect.set_defaults(func=commands.cmd_inspect)
    bench = sub.add_parser(
        "bench", help="time the fast paths against straightforward baselines, side by side, with checks"
    )
    bench.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    bench.add_argument("--quick", action="store_true", help="tiny sizes: finishes in under a minute")
    bench.add_argument(
        "--data", default="auto", help="fashion-mnist-mini or cifar10-shaped (auto: the latter on cuda)"
    )
    bench.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    bench.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    bench.add_argument(
        "--sections",
        default="",
        help="comma-separated section letters to run, in this order, e.g. d,a (default: a,b,c,d,e,f)",
    )
    bench.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="FILE.txt",
        help="also profile one DC iteration of each path and write the top operators here",
    )
    bench.add_argument(
        "--reproducible",
        action="store_true",
        help="time both paths with reproducible runs' pinned kernels (no oneDNN, no torch.compile)",
    )
    bench.add_argument(
        "--ipc",
        type=_ipc_list,
        default=(10, 50),
        metavar="N[,N]",
        help="images per class timed in (d) (default 10,50)",
    )
    bench.set_defaults(func=commands.cmd_bench)
    fingerprint = sub.add_parser(
        "fingerprint",
        help="SHA-256 of a few seconds-long runs: the same on every x86-64 host in reproducible mode",
    )
    fingerprint.add_argument("cases", nargs="*", metavar="CASE", help="case names (default: all)")
    fingerprint.add_argument(
        "--unpinned", action="store_true", help="let the host choose its kernels (shows what pinning removes)"
    )
    fingerprint.set_defaults(func=commands.cmd_fingerprint)
    scan = sub.add_parser(
        "scan",
        help="is a synthetic set backdoored, and which class is its target? (reads the set alone)",
        description="Scores every class of each synthetic set (a run directory, a .safetensors file with "
        "images and labels, or an image folder with one sub-folder per class) on signals that need no "
        "real data, and compares the set's score with a threshold measured on clean sets only. Writes "
        "scan.json and scan.png (RUN/scan for a run, else OUT/NAME). Options: key=value (seed, models, "
        "epochs, lr, batch, width, trigger_epochs, signals); a calibration holds the options it was "
        "measured with. See docs/scan.md.",
    )
    scan.add_argument("items", nargs="+", metavar="SET [key=value]", help="synthetic sets, then options")
    scan.add_argument("--out", type=Path, default=None, help="write OUT/NAME/scan.json (default: see above)")
    scan.add_argument(
        "--calibration", type=Path, default=None, help="a threshold file (default: the one shipped)"
    )
    scan.add_argument(
        "--calibrate",
        type=Path,
        default=None,
        metavar="OUT.json",
        help="the sets are clean: write the threshold they give to OUT.json instead of verdicts",
    )
    scan.add_argument("--budget", type=float, default=0.05, help="false-alarm budget for --calibrate")
    scan.add_argument("--quiet", action="store_true", help="no progress bar")
    scan.set_defaults(func=commands.cmd_scan)
    defend = sub.add_parser(
        "defend",
        help="apply defenses to a finished run directory",
        describe=_defend_help,
    )
    defend.add_argument("run_dir", type=Path, help="a directory written by `ddbackdoor run`")
    defend.add_argument("items", nargs="*", metavar="key=value", help="defense options")
    defend.add_argument(  # nargs="+": argparse would not give options after it to `items`
        "--defense",
        required=True,
        nargs="+",
        metavar="SPEC",
        help="NAME[,NAME...] or all, then optional key=value options",
    )
    defend.add_argument("--quiet", action="store_true", help="no progress bars")
    defend.set_defaults(func=commands.cmd_defend)
    return parser


def wants_pinned_kernels(args: argparse.Namespace) -> bool:
    """Pinned kernels where the run will be reproducible: when asked for, for the demo (its table is
    published), when resuming a run that began so; defenses and re-scoring as the run they read."""
    if args.command in ("run", "stack"):
        return reproducible.requested(args.items, default=reproducible.recorded(args.out))
    if args.command == "demo":
        return reproducible.requested(args.items, default=True)
    if args.command == "fingerprint":
        return not args.unpinned
    if args.command == "scan":  # a verdict next to a threshold must not depend on the host's kernels
        return True
    if args.command in ("defend", "rescore"):  # as reproducibly as the run they read
        return reproducible.requested([str(args.run_dir / "config.yaml")])
    return bool(getattr(args, "reproducible", False))


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed)
        return int(exit_.code or 0)
    if wants_pinned_kernels(args):
        reproducible.pin_environment()  # before anything imports torch
    try:
        return args.func(args)
    except Interrupted as err:
        print(f"ddbackdoor: {one_line(str(err))}", file=sys.stderr)
        return 130
    except UserError as err:
        print(f"ddbackdoor: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddbackdoor: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`ddbackdoor list | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
