import pytest
import torch

from ddbackdoor.allocator import glibc, retained_heap
from ddbackdoor.bench.measure import _rss_kib

needs_glibc = pytest.mark.skipif(glibc() is None, reason="the heap knobs exist only in glibc")


def rss_after_freeing_a_large_tensor() -> tuple[int, int]:
    """RSS (KiB) with a touched 256 MiB tensor alive, and after it is freed."""
    big = torch.ones(64 * 2**20)  # 256 MiB, far above glibc's 32 MiB mmap threshold
    alive = _rss_kib("VmRSS")
    del big
    return alive, _rss_kib("VmRSS")


@needs_glibc
def test_freed_large_tensors_stay_in_the_heap_only_inside_the_context():
    alive, freed = rss_after_freeing_a_large_tensor()
    assert alive - freed > 200 * 1024  # default glibc: munmap hands the 256 MiB straight back
    with retained_heap() as applied:
        assert applied
        alive, freed = rss_after_freeing_a_large_tensor()
        assert alive - freed < 16 * 1024  # kept for the next tensor of that size
    assert _rss_kib("VmRSS") < freed - 200 * 1024  # the context's end gives it back


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
