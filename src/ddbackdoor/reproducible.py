"""Reproducible mode: the same config and seed give the same bits on any x86-64 host with AVX2.

Why: PyTorch lets the host choose its CPU kernels, so one seed rounds differently on an
AVX2-only and an AVX-512 machine, and at quick scale the attack's dynamics turn a rounding
difference into a different outcome (unclipped DOORPING, seed 0: ASR 0.94 on one host, 0.09 on
another). Reproducible mode takes each of those choices away from the host:

* ATen's vectorised kernels (reductions, norms, pooling, exp/log): 256-bit AVX2 code on every
  host, via ``ATEN_CPU_CAPABILITY=avx2``, read once at torch's first dispatch.
* MKL, the BLAS behind every linear layer and convolution: ``MKL_CBWR=COMPATIBLE,STRICT``.
  MKL ignores its ISA-specific reproducibility branches on AMD processors (``MKL_CBWR=AVX2``
  reads back as AUTO there, which lets the host choose again); COMPATIBLE is the branch it
  honours on every x86-64 vendor, and STRICT makes GEMM independent of threads and alignment.
* One-row products: MKL computes them on a matrix-vector branch that the pins above do not
  hold (DOORPING's one-image trigger update gave other bits on Intel Sapphire Rapids than on AMD
  EPYC), so the models' linear layers compute a one-image batch as two rows
  (`ddbackdoor.models.layers.Linear`); a test checks with ``MKL_VERBOSE`` that no model hands
  MKL a one-row product.
* oneDNN and NNPACK convolutions are switched off: both pick their blocking (so the order of
  summation) by the host's cache sizes as well as its ISA. Convolutions then run as ATen's
  im2col + MKL GEMM (``slow_conv2d``), whose order depends on the shapes only.
* Threads: one, whatever ``threads`` says, since ATen splits reductions by thread.
* ``torch.compile`` is off: inductor compiles C++ for the host's vector ISA.
* CUDA: deterministic algorithms where torch has them, cuDNN without autotuning, a fixed cuBLAS
  workspace. Scatter-style atomics without a deterministic kernel only warn, and results still
  differ between GPU models, drivers and CUDA versions.

The environment pins must be in place before torch computes anything, so the ``ddbackdoor``
command sets them before importing torch (`pin_environment`), and a run that asks for
reproducible mode in a process where they did not take effect stops with one line
(`check_pinned`). This module imports torch only inside functions for that reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

# Environment pins, read by the libraries themselves when torch first uses them.
PINNED_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "COMPATIBLE,STRICT",
    # cuBLAS needs a fixed workspace for deterministic GEMM (harmless without a GPU)
    "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
}
EXPECTED_ATEN_CAPABILITY = "AVX2"
# mkl_cbwr_get(MKL_CBWR_ALL) for MKL_CBWR=COMPATIBLE,STRICT: MKL_CBWR_COMPATIBLE (3) | MKL_CBWR_STRICT
EXPECTED_MKL_CBWR = 3 | 0x10000
DEFAULT_THREADS = 1  # the thread count of reproducible mode


class ReproducibilityError(UserError):
    """Reproducible mode was asked for, but the process cannot honour it."""


def pin_environment(environ: MutableMapping[str, str] | None = None) -> None:
    """Set the kernel pins; call before torch is imported (the CLI and the tests do)."""
    (os.environ if environ is None else environ).update(PINNED_ENV)


def recorded(directory: Path | None) -> bool:
    """Whether a run directory's config.yaml, or one of a stack directory's runs', records
    reproducible mode (False where none does): a rerun that does not say `reproducible` resumes in
    the mode its runs began in."""
    if directory is None:
        return False
    for config_file in (Path(directory) / "config.yaml", *Path(directory).glob("*/config.yaml")):
        with contextlib.suppress(OSError, ValueError, yaml.YAMLError):
            data = yaml.safe_load(config_file.read_text())
            if isinstance(data, dict) and data.get("reproducible") is True:
                return True
    return False


def requested(items: list[str], default: bool = False) -> bool:
    """Whether `[CONFIG.yaml] key=value ...` asks for reproducible mode (`reproducible=true`;
    `default` where neither says).

    Read before torch is imported, so the CLI knows whether to pin. An unreadable file or
    value counts as the default; the config's own validation reports it later.
    """
    value: Any = default
    if items and "=" not in items[0]:
        with contextlib.suppress(OSError, ValueError, yaml.YAMLError):
            data = yaml.safe_load(Path(items[0]).read_text())
            if isinstance(data, dict) and "reproducible" in data:
                value = data["reproducible"]
    for item in items:
        key, _, raw = item.partition("=")
        if key == "reproducible":
            with contextlib.suppress(yaml.YAMLError):
                value = yaml.safe_load(raw)
    return value is True


def mkl_cbwr() -> int | None:
    """MKL's conditional-numerical-reproducibility setting as MKL reads it back; None without MKL."""
    import torch

    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        get = lib.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    get.argtypes, get.restype = [ctypes.c_int], ctypes.c_int
    return int(get(-1))  # MKL_CBWR_ALL


def kernel_state() -> dict[str, Any]:
    """What this process's kernels are pinned to, for config.yaml's provenance."""
    import torch

    return {
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkl_cbwr": mkl_cbwr(),
        "mkldnn": bool(torch.backends.mkldnn.enabled),
        "nnpack": bool(torch._C._get_nnpack_enabled()),
        "threads": torch.get_num_threads(),
        "env": {key: os.environ.get(key) for key in PINNED_ENV},
    }


def check_pinned() -> None:
    """Stop with one line if the environment pins did not take effect in this process."""
    import torch

    how = (
        "run through the `ddbackdoor` command, or call ddbackdoor.reproducible.pin_environment() "
        "before importing torch, or pass reproducible=false"
    )
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != EXPECTED_ATEN_CAPABILITY:
        raise ReproducibilityError(
            f"reproducible=true needs ATen's CPU kernels pinned to {EXPECTED_ATEN_CAPABILITY}, but this "
            f"process runs {capability} (an x86-64 CPU with AVX2 is required, and the pin must be set "
            f"before torch is imported); {how}"
        )
    cbwr = mkl_cbwr()
    if cbwr is not None and cbwr != EXPECTED_MKL_CBWR:
        raise ReproducibilityError(
            f"reproducible=true needs MKL_CBWR={PINNED_ENV['MKL_CBWR']}, but MKL reads back mode {cbwr} "
            f"(the variable must be set before torch first calls MKL); {how}"
        )


def resolved_threads(threads: int, reproducible: bool) -> int:
    """The thread count a run computes with: one in reproducible mode, whatever `threads` says
    (ATen splits reductions by thread, so another count gives other bits; `threads` is a runtime
    option that counts in no run id), else `threads` (0: torch's choice)."""
    return DEFAULT_THREADS if reproducible else threads


@contextlib.contextmanager
def _attributes(owner: object, **values: object) -> Iterator[None]:
    """Set attributes of `owner` inside, put the old values back after (torch's own `flags`
    contexts also reset precision settings the caller may have chosen)."""
    previous = {name: getattr(owner, name) for name in values}
    for name, value in values.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for name, value in previous.items():
            setattr(owner, name, value)


@contextlib.contextmanager
def pinned_kernels(enabled: bool, threads: int) -> Iterator[None]:
    """Inside: host-independent kernels (oneDNN/NNPACK off, deterministic CUDA, fixed threads).

    Restores the process's previous settings on exit, so a reproducible run leaves other work in
    the same process (tests, a notebook) as it found it.
    """
    import torch

    threads = threads or (DEFAULT_THREADS if enabled else 0)
    previous_threads = torch.get_num_threads()
    previous_deterministic = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    with contextlib.ExitStack() as stack:
        if enabled:
            check_pinned()
            stack.enter_context(_attributes(torch.backends.mkldnn, enabled=False))
            stack.enter_context(torch.backends.nnpack.flags(enabled=False))
            stack.enter_context(_attributes(torch.backends.cudnn, benchmark=False, deterministic=True))
            torch.use_deterministic_algorithms(True, warn_only=True)
        if threads:
            torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous_threads)
            torch.use_deterministic_algorithms(previous_deterministic[0], warn_only=previous_deterministic[1])
