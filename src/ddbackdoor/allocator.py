"""Keep freed CPU memory in the process heap instead of handing it back to the kernel.

Why: glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh
`mmap` and returns it with `munmap` on free. A width-128 ConvNet's activations for a real
batch of 256 are 128 MiB each, so on a CPU every forward and backward pass page-faults
(and the kernel zeroes) each of those tensors anew. On this project's CPU that was about a
third of a DC matching step (docs/speed.md). With mmap off and heap trimming off, freed
blocks are reused. Results are bit-identical; the cost is that the process keeps its peak
memory until the context ends.

Only glibc has these knobs; elsewhere (macOS, musl, Windows) this is a no-op. The setting is
process-wide and the context is not re-entrant: the first context to end restores glibc's
defaults (parallel runs are separate processes, so each has its own).
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from collections.abc import Iterator

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# glibc's documented defaults, restored when the context ends
DEFAULT_TRIM_THRESHOLD = 128 * 1024
DEFAULT_MMAP_MAX = 65536
NEVER_TRIM = 2**31 - 1  # mallopt takes an int


def glibc() -> ctypes.CDLL | None:
    """The running process's C library when it is glibc (the one with `mallopt`), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl has no mallopt knobs)
        libc.mallopt  # noqa: B018
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def retained_heap(enabled: bool = True) -> Iterator[bool]:
    """Within the context, large CPU tensors reuse freed heap memory; yields whether it applies."""
    libc = glibc() if enabled else None
    if libc is None:
        yield False
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)  # give the kept memory back
