"""Time our DC + DOORPING against the authors' release, side by side on one machine.

    python tools/authors_side_by_side.py --checkout ~/src/baadd [--nets a,b] [--iterations 5]

`--checkout` is a local clone of the authors' release (github.com/liuyugeng/baadd). Their
DC/main.py runs in its own process, unchanged on disk; the few patches it needs under today's
libraries, and the timers, are applied in that process at run time (`THEIR_PATCHES` lists them).
Nothing of theirs is copied here.

Both sides distil full Fashion-MNIST (60,000 images at 32x32), IPC 10, DOORPING as the authors run
it (unclipped trigger, updated after each of the first nine of ten outer steps), with one thread
each, two processes at the same moment: theirs beside ours in default mode, then theirs beside
ours pinned (`reproducible=true`). Networks: (a) their `ConvNetW32` (width 32, instance norm),
(b) their default `ConvNet` (width 128, no normalisation). The first training iteration of each
side is left out (theirs is the one after the evaluation at iteration 0; ours compiles or warms
up there); the next `--iterations` are timed and split into:

- inner training: the network's epochs on the synthetic set (theirs: `epoch`; ours:
  `DCDistiller.train_network`),
- trigger updates: theirs `update_trigger`, ours `DoorpingAttack.update_trigger`, with the Adam
  steps each took (theirs: forward passes minus the one that stopped it; ours: the recorded
  steps, whose time also holds the up to 15 steps our windowed check computes past the stop),
- matching: the rest of the iteration (the synthetic-image updates; restamping and drawing a
  network are milliseconds).

A matching outer step is matching/10 + inner training/9 (the last outer step trains no network).
Each process writes JSON into --out; the table is printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

NETS = {  # our overrides, their --model
    "a": (["net.width=32", "net.norm=instancenorm"], "ConvNetW32"),
    "b": (["net.width=128", "net.norm=none"], "ConvNet"),
}
FASHION_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
THEIR_PATCHES = (
    "PIL.Image.fromarray: `mode` (gone in Pillow 13) is dropped; a uint8 2-D array is 'L' anyway",
    "evaluate_synset: not run (their iteration 0 evaluates 10 networks, outside the timed ones)",
    "timers around get_network (iteration boundaries), epoch, update_trigger, get_middle_output",
)
OUTER_STEPS = 10  # the authors' DC loops at IPC 10: 10 outer steps, 50 inner epochs
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Stop(Exception):
    """Raised by a timer once the last timed iteration has ended."""


class Timings:
    """Per-iteration totals of the three parts and the trigger steps."""

    def __init__(self, iterations: int) -> None:
        self.iterations = iterations
        self.rows: list[dict] = []
        self.started: float | None = None
        self.current = self.fresh()

    @staticmethod
    def fresh() -> dict:
        return {"inner_s": 0.0, "trigger_s": 0.0, "trigger_steps": 0, "trigger_updates": 0}

    def boundary(self, skip: int) -> None:
        """An iteration begins; the first `skip` iterations' rows are dropped."""
        now = time.perf_counter()
        if self.started is not None:
            self.rows.append({**self.current, "iteration_s": now - self.started})
        self.started, self.current = now, self.fresh()
        if len(self.rows) == skip + self.iterations:
            raise Stop

    def timed(self, key: str, function: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.current[key] += time.perf_counter() - start

        return wrapper

    def summary(self, skip: int, outer: int) -> dict:
        return summarise(self.rows[skip:], outer)


def summarise(rows: list[dict], outer: int) -> dict:
    """Per-part figures of the timed iterations (`outer` outer steps each)."""
    total = {key: sum(row[key] for row in rows) for key in (*Timings.fresh(), "iteration_s")}
    matching = total["iteration_s"] - total["inner_s"] - total["trigger_s"]
    n = len(rows)
    steps = total["trigger_steps"]
    return {
        "iterations": rows,
        "s_per_iteration": total["iteration_s"] / n,
        "s_per_matching_outer_step": matching / (n * outer) + total["inner_s"] / (n * (outer - 1)),
        "s_matching_per_outer_step": matching / (n * outer),
        "s_inner_training_per_outer_step": total["inner_s"] / (n * (outer - 1)),
        # None where no update took a step (every one stopped at its first loss check)
        "s_per_trigger_step": total["trigger_s"] / steps if steps else None,
        "trigger_steps": steps,
        "trigger_updates": total["trigger_updates"],
    }


def gunzipped_fashion(source: Path, into: Path) -> Path:
    """Their FashionMNIST_BADNETS reads unpacked IDX files under ROOT/FashionMNIST_BADNETS/raw."""
    raw = into / "FashionMNIST_BADNETS" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_FILES:
        packed, plain = source / f"{name}.gz", source / name
        if plain.exists():
            shutil.copyfile(plain, raw / name)
        elif packed.exists():
            with gzip.open(packed) as fin, open(raw / name, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        else:
            raise SystemExit(
                f"{name}(.gz) not in {source}: pass --fashion DIR holding Fashion-MNIST's IDX files"
            )
    return into


def run_theirs(checkout: Path, net: str, iterations: int, fashion: Path) -> dict:
    import PIL.Image
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="baadd-"))
    data = gunzipped_fashion(fashion, work / "data")
    sys.path.insert(0, str(checkout / "DC"))
    os.chdir(work)
    import main as their_main  # their DC/main.py
    import utils as their_utils

    fromarray = PIL.Image.fromarray
    PIL.Image.fromarray = lambda array, mode=None: fromarray(array)
    their_main.evaluate_synset = lambda it_eval, net, images, labels, *rest: (net, 0.0, 0.0, 0.0)
    timings, calls = Timings(iterations), {"get_network": 0}
    get_network, get_middle_output = their_main.get_network, their_utils.get_middle_output
    update_trigger = their_main.update_trigger
    forwards = {"n": 0}

    def network(*args, **kwargs):
        calls["get_network"] += 1
        if calls["get_network"] >= 2:  # the first call is the (skipped) evaluation's
            timings.boundary(skip=1)
        return get_network(*args, **kwargs)

    def middle_output(*args, **kwargs):
        forwards["n"] += 1
        return get_middle_output(*args, **kwargs)

    def trigger(*args, **kwargs):
        forwards["n"] = 0
        out = update_trigger(*args, **kwargs)
        timings.current["trigger_steps"] += forwards["n"] - (1 if forwards["n"] < 1000 else 0)
        timings.current["trigger_updates"] += 1
        return out

    their_main.get_network = network
    their_utils.get_middle_output = middle_output
    their_main.epoch = timings.timed("inner_s", their_main.epoch)
    their_main.update_trigger = timings.timed("trigger_s", trigger)
    model = NETS[net][1]
    sys.argv = ["main.py", "--dataset", "FashionMNIST", "--model", model, "--ipc", "10", "--doorping"]
    sys.argv += ["--Iteration", str(iterations + 2), "--num_eval", "1", "--data_path", str(data)]
    sys.argv += ["--save_path", str(work / "results")]
    with contextlib.suppress(Stop):
        their_main.main()
    shutil.rmtree(work, ignore_errors=True)
    return {"side": "authors", "model": model, **timings.summary(skip=1, outer=OUTER_STEPS)}


def run_ours(net: str, iterations: int, mode: str) -> dict:
    import torch

    from ddbackdoor.allocator import retained_heap
    from ddbackdoor.attacks.doorping import DoorpingAttack
    from ddbackdoor.distill.dc import DCDistiller
    from ddbackdoor.reproducible import pinned_kernels, resolved_threads
    from ddbackdoor.resolve import build_config
    from ddbackdoor.run_setup import set_up

    pinned = mode == "pinned"
    overrides = ["dataset=fashion-mnist", "distill=dc", "attack=doorping", "ipc=10", "poison.clip=false"]
    overrides += [f"iterations={iterations + 1}", f"reproducible={str(pinned).lower()}", "threads=1"]
    config = build_config({"profile": "paper", "device": "cpu"}, [*overrides, *NETS[net][0]])
    timings = Timings(iterations)
    train_network, update_trigger, step = (
        DCDistiller.train_network,
        DoorpingAttack.update_trigger,
        DCDistiller.step,
    )

    def trigger(self, *args, **kwargs):
        before = self.steps_total
        update_trigger(self, *args, **kwargs)
        timings.current["trigger_steps"] += self.steps_total - before
        timings.current["trigger_updates"] += 1

    def iteration(self, *args, **kwargs):
        timings.boundary(skip=1)
        return step(self, *args, **kwargs)

    DCDistiller.train_network = timings.timed("inner_s", train_network)
    DoorpingAttack.update_trigger = timings.timed("trigger_s", trigger)
    DCDistiller.step = iteration
    threads = resolved_threads(config.threads, config.reproducible)
    with retained_heap(config.retain_freed_memory), pinned_kernels(config.reproducible, threads):
        work = Path(tempfile.mkdtemp(prefix="ours-"))
        parts = set_up(config, work, progress=False)
        parts.attack.prepare(parts.pool)
        try:
            parts.distiller.run(parts.pool, [parts.attack], parts.generator)
            timings.boundary(skip=1)  # the end of the last iteration
        except Stop:
            pass
        shutil.rmtree(work, ignore_errors=True)
        threads = torch.get_num_threads()
    model = f"ConvNet width {config.net.width}, norm {config.net.norm}"
    return {
        "side": f"ours ({mode})",
        "model": model,
        "threads": threads,
        **timings.summary(skip=1, outer=OUTER_STEPS),
    }


def child(args: argparse.Namespace) -> None:
    if args.side == "authors":
        result = run_theirs(Path(args.checkout), args.net, args.iterations, Path(args.fashion))
    else:
        result = run_ours(args.net, args.iterations, args.side)
    result["net"] = args.net
    Path(args.result).write_text(json.dumps(result, indent=2))


def spawn(side: str, args: argparse.Namespace, result: Path) -> subprocess.Popen:
    env = {**os.environ, **ONE_THREAD}
    if side == "pinned":
        from ddbackdoor.reproducible import PINNED_ENV

        env.update(PINNED_ENV)
    else:
        for key in ("ATEN_CPU_CAPABILITY", "MKL_CBWR"):
            env.pop(key, None)
    command = [sys.executable, __file__, "--child", side, "--net", args.net_now]
    command += ["--result", str(result.resolve()), "--iterations", str(args.iterations)]
    command += ["--checkout", str(args.checkout.resolve()), "--fashion", str(args.fashion.resolve())]
    log = open(result.with_suffix(".log"), "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def per_step(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1000:.1f} ms"


def ratio(theirs: float | None, ours: float | None) -> str:
    return "n/a" if theirs is None or ours is None else f"{theirs / ours:.2f}x"


def table(results: list[dict]) -> str:
    lines = [
        "| net | side | s/iteration | s/matching outer step (matching + inner) | s/trigger step "
        "(steps) | ours vs authors: outer step / trigger step |",
        "|---|---|---|---|---|---|",
    ]
    for row in results:
        theirs = row["authors"]
        versus = (
            f"{ratio(theirs['s_per_matching_outer_step'], row['s_per_matching_outer_step'])} / "
            f"{ratio(theirs['s_per_trigger_step'], row['s_per_trigger_step'])}"
        )
        lines.append(
            f"| {row['net']} | {row['side']} | {row['s_per_iteration']:.1f} | "
            f"{row['s_per_matching_outer_step']:.2f} ({row['s_matching_per_outer_step']:.2f} + "
            f"{row['s_inner_training_per_outer_step']:.2f}) | {per_step(row['s_per_trigger_step'])} "
            f"({row['trigger_steps']}) | {'—' if row['side'].startswith('authors') else versus} |"
        )
    return "\n".join(lines)


def pair(out: Path, net: str, mode: str) -> list[dict]:
    """The two rows of one side-by-side pair, from its JSON files."""
    theirs, ours = (
        {**data, **summarise(data["iterations"], OUTER_STEPS)}
        for data in (
            json.loads((out / f"{net}-{mode}-{side}.json").read_text()) for side in ("authors", mode)
        )
    )
    theirs["side"] = f"authors (beside ours {mode})"
    return [{**theirs, "authors": theirs}, {**ours, "authors": theirs}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkout", type=Path, default=Path("baadd"), help="a clone of github.com/liuyugeng/baadd"
    )
    parser.add_argument("--fashion", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument(
        "--nets", default="a,b", help="a: ConvNetW32 (instance norm); b: ConvNet (w128, no norm)"
    )
    parser.add_argument("--modes", default="default,pinned", help="our modes, each run beside the authors'")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/side-by-side"))
    parser.add_argument("--report", action="store_true", help="only print the table of the pairs in --out")
    parser.add_argument("--child", choices=["authors", "default", "pinned"], help=argparse.SUPPRESS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--net", choices=sorted(NETS), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.side = args.child
        child(args)
        return 0
    if args.report:
        found = [(net, mode) for net in args.nets.split(",") for mode in args.modes.split(",")]
        rows = [
            row
            for net, mode in found
            if (args.out / f"{net}-{mode}-{mode}.json").exists()
            for row in pair(args.out, net, mode)
        ]
        print(table(rows))
        return 0
    if not (args.checkout / "DC" / "main.py").exists():
        raise SystemExit(f"{args.checkout} holds no DC/main.py: pass a clone of github.com/liuyugeng/baadd")
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for net in args.nets.split(","):
        args.net_now = net
        for mode in args.modes.split(","):
            paths = {side: args.out / f"{net}-{mode}-{side}.json" for side in ("authors", mode)}
            procs = {side: spawn(side, args, path) for side, path in paths.items()}
            for side, proc in procs.items():
                if proc.wait() != 0:
                    raise SystemExit(f"the {side} side failed: see {paths[side].with_suffix('.log')}")
            results += pair(args.out, net, mode)
            print(table(results[-2:]), flush=True)
    print(f"\n{time.strftime('%Y-%m-%d')}, one thread per process, two processes at a time\n")
    print(table(results))
    (args.out / "table.md").write_text(table(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
