"""The command line, a thin layer over the Python API.

Every `UserError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError


def _split_args(items: list[str]) -> tuple[str | None, list[str]]:
    """An optional leading CONFIG.yaml, then key=value overrides."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def _load(items: list[str]):
    from .config import build_config, read_yaml

    config_file, overrides = _split_args(items)
    for item in overrides:
        if "=" not in item:
            raise UserError(
                f"argument {item!r} is not key=value (only the first argument may be a config file)"
            )
    data = read_yaml(config_file) if config_file else {}
    return build_config(data, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from .demo import format_table
    from .experiment import run_experiment

    config = _load(args.items)
    out = args.out or Path("runs") / f"{config.dataset}-{config.distill}-{config.attack}-seed{config.seed}"
    metrics = run_experiment(config, out, progress=not args.quiet, overwrite=args.overwrite)
    print(format_table({config.attack: metrics}))
    print(f"run directory: {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo

    for item in args.items:
        if "=" not in item:
            raise UserError(f"argument {item!r} is not key=value")
    summary = run_demo(args.out, args.items, progress=not args.quiet)
    print(format_table(summary))
    print(f"summary: {Path(args.out) / 'summary.json'}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .artifacts import describe

    print(describe(args.file, trust_pickle=args.trust_pickle))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ddbackdoor",
        description="Backdoor attacks against dataset distillation: distil, attack, evaluate.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="distil a dataset under an attack and evaluate victims",
        description="Keys: profile (paper|quick|smoke), dataset, network, distill, attack, ipc, iterations, "
        "seed, device; sections data.*, net.*, dc.*, poison.*, doorping.*, eval.* (see README).",
    )
    run.add_argument("items", nargs="*", metavar="[CONFIG.yaml] key=value", help="config file and overrides")
    run.add_argument("--out", type=Path, default=None, help="run directory (default runs/<name>)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--overwrite", action="store_true", help="replace a finished run in --out")
    run.set_defaults(func=cmd_run)
    demo = sub.add_parser("demo", help="clean vs NAIVEATTACK vs DOORPING on the bundled data (quick profile)")
    demo.add_argument("items", nargs="*", metavar="key=value", help="overrides applied to all four runs")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)
    inspect = sub.add_parser("inspect", help="verify an artifact and show what it holds (no code runs)")
    inspect.add_argument("file", type=Path)
    inspect.add_argument(
        "--trust-pickle", action="store_true", help="allow a pickle-based file (.pt/.pth/.pkl); unsafe"
    )
    inspect.set_defaults(func=cmd_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"ddbackdoor: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddbackdoor: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
