"""`ddbackdoor bench`: every speed claim as a side-by-side run of the fast and the plain path.

One process, one seed, the same data for both paths. Each section times a
straightforward baseline and the fast path (median of a few repeats after a
warm-up, repeats interleaved so that background load hits both alike),
reports the ratio and the peak memory, and checks that the two agree:

    a  one gradient-matching outer step     per-class loop vs the device's fast path (below)
    b  one DOORPING trigger update          the authors' loop (per step: layer lookup, a hook never
                                            removed, `.item()` stop test) vs one hook and a buffered
                                            stop test
    c  one evaluation of 10 victims         one after another, with and without the retained
                                            heap, and stacked (`ddbackdoor.victims`)
    d  one DC iteration, IPC 10 and 50      the plain loop vs the fast path, with FLOPs,
                                            FLOP/s and the share of fp32 matmul speed
    e  one DD outer step                    a module rebuilt per unrolled step vs functional_call
    f  device options                       each alone on a DC iteration: channels-last,
                                            torch.compile, the retained heap, and (CUDA) cuDNN
                                            autotuning, TF32 and bf16

The fast path (`fast_dc_options`) is, on a CPU, what `ddbackdoor run` does there by default:
the per-class loop with its plain passes compiled (`dc.compile=auto`) and freed memory kept in
the heap (`retain_freed_memory`). On CUDA it is batched matching, which `dc.matching=auto`
selects; the default stays the loop there, for its accuracy at width 128 (docs/speed.md). The straightforward
path is the authors' arithmetic in eager mode with the default allocator.

On a CPU a full DC iteration of the authors' network takes minutes, so the CPU
scale times the first `dc_outer` outer steps of the iteration (the JSON says so).
On a loaded CPU, `--threads 1` avoids OpenMP threads stalling each other.
FLOP/s of both paths use the loop's FLOP count (the same arithmetic): the
counter overcounts the weight gradients of the grouped convolutions that vmap
produces, and its raw count for the fast path is kept as `fast_flops_as_counted`.
"""

from .runner import SECTIONS, main, pick_sections, run_bench

__all__ = ["SECTIONS", "main", "pick_sections", "run_bench"]
