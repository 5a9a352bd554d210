"""Time one IPC-10 DC iteration (CPU bench scale) call by call, with page faults, in one process.

Why: bench baselines timed late in a process can run faster than in a fresh one (docs/speed.md,
CPU). This shows whether the `mallopt` calls alone (an empty `retained_heap` context)
or a fast-path call change how often the eager loop page-faults and how long it takes.
Usage: python tools/allocator_state_probe.py
"""

import time
from pathlib import Path

import torch

from ddbackdoor.allocator import retained_heap
from ddbackdoor.bench.dc import dc_iteration
from ddbackdoor.bench.setup import DATA, SCALES, STRAIGHTFORWARD, Bench, fast_dc_options, in_retained_heap


def page_faults() -> int:
    fields = dict(line.split() for line in Path("/proc/vmstat").read_text().splitlines())
    return int(fields["pgfault"])


def main() -> None:
    train, test = DATA["fashion-mnist-mini"](0)
    b = Bench(torch.device("cpu"), SCALES["cpu"], train, test, 0)
    plain = dc_iteration(b, 10, STRAIGHTFORWARD)
    fast = in_retained_heap(dc_iteration(b, 10, fast_dc_options(b.device)))

    def empty_context() -> None:
        with retained_heap():
            pass

    calls = [("eager", plain), ("eager", plain), ("empty retained_heap context", empty_context)]
    calls += [("eager", plain), ("eager", plain), ("fast", fast), ("eager", plain), ("eager", plain)]
    for name, fn in calls:
        faults, start = page_faults(), time.perf_counter()
        fn()
        print(
            f"{name}: {time.perf_counter() - start:.1f} s, {page_faults() - faults} page faults", flush=True
        )


if __name__ == "__main__":
    main()
