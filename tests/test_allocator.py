import json
import subprocess
import sys

import pytest
import torch

from ddbackdoor.allocator import glibc, retained_heap

needs_glibc = pytest.mark.skipif(glibc() is None, reason="the heap knobs exist only in glibc")


# Runs in a fresh interpreter: the property is about a process's heap, and a heap that grew inside
# `retained_heap` earlier in the same process (another test) can serve the next 256 MiB tensor from
# one of its free chunks instead of a fresh mmap, so freeing it gives nothing back.
MEASURE = """
import json, torch
from ddbackdoor.allocator import retained_heap
from ddbackdoor.bench.measure import _rss_kib

def alive_and_freed():
    big = torch.ones(64 * 2**20)  # 256 MiB, far above glibc's 32 MiB mmap threshold
    alive = _rss_kib("VmRSS")
    del big
    return alive, _rss_kib("VmRSS")

outside = alive_and_freed()
with retained_heap() as applied:
    inside = alive_and_freed()
print(json.dumps({"outside": outside, "applied": applied, "inside": inside, "after": _rss_kib("VmRSS")}))
"""


def heap_in_a_fresh_process() -> dict:
    """RSS (KiB) with a touched 256 MiB tensor alive and after it is freed, outside and inside the
    context, and once the context has ended."""
    done = subprocess.run([sys.executable, "-c", MEASURE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@needs_glibc
def test_freed_large_tensors_stay_in_the_heap_only_inside_the_context():
    heap = heap_in_a_fresh_process()
    alive, freed = heap["outside"]
    assert alive - freed > 200 * 1024, heap  # default glibc: munmap hands the 256 MiB straight back
    assert heap["applied"]
    alive, freed = heap["inside"]
    assert alive - freed < 16 * 1024, heap  # kept for the next tensor of that size
    assert heap["after"] < freed - 200 * 1024, heap  # the context's end gives it back


def test_results_are_bit_identical_with_and_without_the_retained_heap():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, 3)
    x = torch.randn(64, 3, 32, 32)

    def grads() -> list[torch.Tensor]:
        return list(torch.autograd.grad(conv(x).relu().sum(), list(conv.parameters())))

    outside = grads()
    with retained_heap():
        inside = grads()
    assert all(torch.equal(a, b) for a, b in zip(outside, inside, strict=True))


def test_disabled_context_changes_nothing():
    with retained_heap(enabled=False) as applied:
        assert not applied
