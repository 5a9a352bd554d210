"""What each `ddbackdoor` command does, given its parsed arguments (ddbackdoor.cli parses them).
Modules are imported inside each command, so that torch waits for the kernel pins of `run`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import UserError


def _split_args(items: list[str]) -> tuple[str | None, list[str]]:
    """An optional leading CONFIG.yaml, then key=value overrides."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    return None, items


def _only_overrides(items: list[str], hint: str) -> None:
    for item in items:
        if "=" not in item:
            raise UserError(f"argument {item!r} is not key=value{hint}")


def _load(items: list[str]):
    from .config_build import read_yaml
    from .resolve import build_config

    config_file, overrides = _split_args(items)
    _only_overrides(overrides, " (only the first argument may be a config file)")
    data = read_yaml(config_file) if config_file is not None else {}
    return build_config(data, overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from .demo import format_table
    from .experiment import run_experiment

    config = _load(args.items)
    out = args.out or Path("runs") / f"{config.dataset}-{config.distill}-{config.attack}-seed{config.seed}"
    metrics = run_experiment(config, out, progress=not args.quiet, restart=args.restart)
    print(format_table({config.attack: metrics}))
    print(f"run directory: {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import format_table, run_demo

    _only_overrides(args.items, "")
    started = time.perf_counter()
    summary = run_demo(args.out, args.items, progress=not args.quiet, restart=args.restart)
    print(format_table(summary))
    print(f"summary: {Path(args.out) / 'summary.json'} (wall time {time.perf_counter() - started:.0f} s)")
    return 0


def cmd_stack(args: argparse.Namespace) -> int:
    from .artifacts import write_json
    from .config_build import read_yaml
    from .demo import format_table
    from .stacked import run_grid

    config_file, overrides = _split_args(args.items)
    base = read_yaml(config_file) if config_file is not None else {}
    started = time.perf_counter()
    summary = run_grid(base, overrides, args.grid, args.out, args.k, not args.quiet, args.restart, args.cell)
    write_json(args.out / "summary.json", summary)
    print(format_table(summary))
    print(f"summary: {args.out / 'summary.json'} (wall time {time.perf_counter() - started:.0f} s)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweeps import format_plan, plan_sweep, run_sweep

    _only_overrides(args.items, " (overrides follow the sweep file)")
    if args.dry_run:
        print(format_plan(plan_sweep(args.sweep_file, args.items, args.out), args.items))
        return 0
    if args.out is None:
        raise UserError("sweep needs --out DIR (where its runs and results.csv go), or --dry-run")
    started = time.perf_counter()
    rows = run_sweep(
        args.sweep_file,
        args.out,
        args.executor,
        args.jobs,
        args.ray_address,
        args.gpus_per_run,
        progress=not args.quiet,
        overrides=args.items,
    )
    counts = {
        status: sum(row["status"] == status for row in rows)
        for status in dict.fromkeys(row["status"] for row in rows)
    }
    print(", ".join(f"{n} {status}" for status, n in counts.items()), f"of {len(rows)} runs")
    print(f"results: {args.out / 'results.csv'} (wall time {time.perf_counter() - started:.0f} s)")
    if counts.get("pending") or counts.get("interrupted"):
        print("ddbackdoor: sweep stopped; run the same command again to continue", file=sys.stderr)
        return 130
    if counts.get("failed"):
        print(f"ddbackdoor: {counts['failed']} run(s) failed; see the error column", file=sys.stderr)
        return 1
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .catalog import KINDS, format_catalog

    for kind in args.kinds:
        if kind not in KINDS:
            raise UserError(f"unknown kind {kind!r}; accepted: {', '.join(KINDS)}")
    print(format_catalog(args.kinds or None))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    html_file, md_file = build_report(args.directory)
    print(f"report: {html_file} (self-contained) and {md_file}")
    return 0


def cmd_rescore(args: argparse.Namespace) -> int:
    from .rescore import format_rescore, rescore

    result = rescore(args.run_dir, args.iterations, args.device)
    print(format_rescore(result))
    print(f"results: {args.run_dir / 'rescore.json'}, plot: {args.run_dir / 'rescore.png'}")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .artifacts import describe

    print(describe(args.file, trust_pickle=args.trust_pickle))
    return 0


def cmd_defend(args: argparse.Namespace) -> int:
    from .defenses.runner import format_table, run_defenses

    spec, *options = args.defense
    results = run_defenses(args.run_dir, spec, [*args.items, *options], progress=not args.quiet)
    print(format_table(results))
    print(f"results: {args.run_dir / 'defenses'}")
    return 0


def _scan_out(found, out: Path | None) -> Path:
    """RUN/scan for a run; OUT/NAME (default runs/scan/NAME) for a file or an image folder."""
    source = Path(found.source)
    if out is not None:
        return out / source.stem
    return source / "scan" if found.kind == "run" else Path("runs") / "scan" / source.stem


def _scan_line(result: dict) -> str:
    score, threshold, target = result["score"], result["threshold"], result["suspected_target"]
    if result["verdict"] == "backdoored":
        return (
            f"{result['source']}: backdoored (score {score:.2f} > {threshold:.2f}), suspected target {target}"
        )
    return f"{result['source']}: clean (score {score:.2f} <= {threshold:.2f}; most suspicious class {target})"


def _scan_values(items: list[str]) -> tuple[list[Path], dict]:
    """SET paths, then key=value options (a path that exists is a set even if it holds '=')."""
    from .config_build import parse_override

    sources = [Path(item) for item in items if "=" not in item or Path(item).exists()]
    values = {}
    for item in items:
        if Path(item) not in sources:
            key, value = parse_override(item)
            values[".".join(key)] = value
    if not sources:
        raise UserError(
            "give at least one synthetic set: a run directory, a .safetensors file or an image folder"
        )
    return sources, values


def cmd_scan(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .defenses.base import parse_options
    from .reproducible import pinned_kernels
    from .scan import ScanOptions, calibrate, judge, load_calibration, read_source, scan
    from .scan.report import read_scan, write_scan

    sources, values = _scan_values(args.items)
    opts = parse_options("scan", ScanOptions, values)
    found_sets = [read_source(path) for path in sources]  # every bad input before any work
    calibration = None if args.calibrate else load_calibration(args.calibration)
    if calibration is not None:
        calibration.check(opts)
    measured = []
    for found in found_sets:
        out = _scan_out(found, args.out)
        result = read_scan(out, found, opts)  # an earlier scan of the same set and options
        if result is None:
            present = sum(1 for n in found.per_class if n)
            total = opts.models * (1 + present) + present
            with tqdm(total=total, disable=args.quiet, leave=False) as bar, pinned_kernels(True, 1):
                result = scan(found, opts, lambda m: (bar.set_postfix_str(m), bar.update(1)))
        measured.append((found, out, result))
        if calibration is None:  # calibrating: kept now, judged once every set is measured
            write_scan(out, found, result)
        else:
            judged = judge(result, calibration)
            write_scan(out, found, judged)
            print(_scan_line(judged), flush=True)
    if args.calibrate:
        made = calibrate([result for _found, _out, result in measured], args.budget)
        made.save(args.calibrate)
        for found, out, result in measured:
            write_scan(out, found, judge(result, made))
        scores = ", ".join(f"{s:.2f}" for s in made.scores)
        print(
            f"calibration: threshold {made.threshold:.3f} from {len(measured)} clean sets "
            f"(their leave-one-out scores {scores}) -> {args.calibrate}"
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    bench_main(
        args.device,
        args.quick,
        args.data,
        args.out,
        args.threads,
        args.sections,
        args.profile,
        args.reproducible,
        args.ipc,
    )
    if args.out is not None:
        print(f"results: {args.out}")
    return 0


def cmd_fingerprint(args: argparse.Namespace) -> int:
    from .errors import unknown_name
    from .fingerprint import CASES, fingerprint_case

    names = args.cases or list(CASES)
    for name in names:
        if name not in CASES:
            raise unknown_name("fingerprint case", name, list(CASES))
    for name in names:
        print(f"{name} {fingerprint_case(name, reproducible=not args.unpinned)}", flush=True)
    return 0
