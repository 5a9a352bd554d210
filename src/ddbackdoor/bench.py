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
selects; the default stays the loop there, for its accuracy at width 128 (README "Speed"). The straightforward
path is the authors' arithmetic in eager mode with the default allocator.

On a CPU a full DC iteration of the authors' network takes minutes, so the CPU
scale times the first `dc_outer` outer steps of the iteration (the JSON says so).
On a loaded CPU, `--threads 1` avoids OpenMP threads stalling each other.
FLOP/s of both paths use the loop's FLOP count (the same arithmetic): the
counter overcounts the weight gradients of the grouped convolutions that vmap
produces, and its raw count for the fast path is kept as `fast_flops_as_counted`.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .allocator import retained_heap
from .artifacts import write_json
from .attacks.doorping import DoorpingAttack
from .config import EvalConfig, build_config, dc_loops
from .data import RealData, load_dataset
from .distill.base import RealPool, SyntheticSet, init_synthetic
from .distill.dc import DCDistiller
from .errors import ConfigError, one_line_error
from .evaluate import EvalSets, evaluate
from .models import create_model
from .reproducible import kernel_state, pinned_kernels
from .triggers import select_layer


@dataclass(frozen=True)
class Scale:
    """How big each section is; `quick` is for tests, `cpu`/`cuda` for real measurements."""

    repeats: int
    width: int  # matching (a) and victims (c)
    batch_real: int
    victim_epochs: int
    victim_width: int
    dc_width: int  # (d): the authors' ConvNet is width 128
    dc_batch_real: int
    dc_outer: int | None  # None: the authors' full outer loop
    dc_inner: int | None  # None: the authors' inner loop
    dc_repeats: int
    dd_width: int
    dd_steps: int
    dd_epochs: int
    dd_batch_real: int
    trigger_steps: int
    test_images: int | None  # victims are scored on this many test images (None: all)


SCALES: dict[str, Scale] = {
    "quick": Scale(1, 8, 8, 2, 4, 8, 8, 2, 1, 1, 8, 2, 1, 32, 20, 100),
    "cpu": Scale(3, 128, 256, 20, 32, 128, 256, 2, None, 2, 128, 10, 3, 1024, 200, None),
    "cuda": Scale(5, 128, 256, 50, 128, 128, 256, None, None, 3, 128, 10, 3, 1024, 200, None),
}


# -- measuring -------------------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_pair(
    baseline: Callable[[], object],
    fast: Callable[[], object],
    repeats: int,
    device: torch.device,
    warm_up: bool = True,
) -> tuple[list[float], list[float]]:
    """Seconds per call for both, after one warm-up each, alternating so load hits both alike."""
    times: tuple[list[float], list[float]] = ([], [])
    for fn in (baseline, fast) if warm_up else ():
        fn()
    for _ in range(repeats):
        for fn, out in zip((baseline, fast), times, strict=True):
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            out.append(time.perf_counter() - start)
    return times


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """CUDA: max_memory_allocated above the start; CPU: peak RSS above the start (Linux)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - before) / 1024


def compare(
    baseline: Callable[[], object], fast: Callable[[], object], repeats: int, device: torch.device
) -> dict:
    # the memory-measuring calls are the warm-ups (on a CPU a call of the authors' scale takes
    # minutes, so no call is spent on memory alone)
    peaks = peak_memory_mib(baseline, device), peak_memory_mib(fast, device)
    base_t, fast_t = time_pair(baseline, fast, repeats, device, warm_up=False)
    base_ms, fast_ms = statistics.median(base_t) * 1e3, statistics.median(fast_t) * 1e3
    return {
        "baseline_ms": base_ms,
        "fast_ms": fast_ms,
        "ratio": base_ms / fast_ms,
        "baseline_runs_ms": [t * 1e3 for t in base_t],
        "fast_runs_ms": [t * 1e3 for t in fast_t],
        "baseline_peak_mib": peaks[0],
        "fast_peak_mib": peaks[1],
    }


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter, warnings.catch_warnings():
        # the counter's module hooks make torch.compile warn that they fire twice; they only count
        warnings.filterwarnings("ignore", message=".*global hooks on modules.*")
        fn()
    return int(counter.get_total_flops())


def matmul_flops_per_s(device: torch.device, n: int, repeats: int = 5) -> float:
    """fp32 (no TF32) throughput of one large square matmul: the machine's practical peak."""
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    with tf32(False):
        times, _ = time_pair(lambda: torch.mm(a, b), lambda: None, repeats, device)
    return 2 * n**3 / statistics.median(times)


@contextlib.contextmanager
def tf32(enabled: bool):
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def cudnn_benchmark():
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


# -- data ----------------------------------------------------------------------------------------------
def random_cifar_shaped(seed: int, per_class: int = 500) -> tuple[RealData, RealData]:
    """3x32x32, 10 classes, uniform pixels: the shape and cost of CIFAR-10 with no download."""
    gen = torch.Generator().manual_seed(seed)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)

    def split(n: int) -> RealData:
        labels = torch.arange(10).repeat_interleave(n)
        return RealData(
            torch.rand(labels.numel(), 3, 32, 32, generator=gen), labels, 10, mean, std, "cifar10"
        )

    return split(per_class), split(per_class // 5)


DATA: dict[str, Callable[[int], tuple[RealData, RealData]]] = {
    "fashion-mnist-mini": lambda seed: load_dataset("fashion-mnist-mini", None, 32, False),
    "cifar10-shaped": random_cifar_shaped,
}


@dataclass
class Bench:
    device: torch.device
    scale: Scale
    train: RealData
    test: RealData
    seed: int
    reproducible: bool = False  # time the paths as reproducible runs run them (pinned kernels)

    @property
    def dataset(self) -> str:
        return "cifar10" if self.train.name == "cifar10" else "fashion-mnist-mini"

    def pool(self) -> RealPool:
        images = self.train.normalize(self.train.images).to(self.device)
        return RealPool(images, self.train.labels.clone().to(self.device), self.train.num_classes)

    def config(self, *overrides: str):
        pinned = f"reproducible={str(self.reproducible).lower()}"
        return build_config(
            {"profile": "paper", "dataset": self.dataset}, [f"seed={self.seed}", pinned, *overrides]
        )

    def net(self, width: int, **options) -> nn.Module:
        torch.manual_seed(self.seed)
        shape = (self.train.channels, self.train.num_classes, self.train.image_size)
        return create_model("convnet", *shape, width=width, **options).to(self.device)

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)


# -- sections ------------------------------------------------------------------------------------------
def bench_matching(b: Bench) -> dict:
    """(a) One outer step of gradient matching at IPC 10; loss and image gradient must agree."""
    s, pool = b.scale, b.pool()
    net = b.net(s.width)
    common = ["ipc=10", f"dc.batch_real={s.batch_real}"]
    loop = DCDistiller(b.config(*common, *STRAIGHTFORWARD), lambda: net, progress=False)
    fast = DCDistiller(
        b.config(*common, *fast_dc_options(b.device, b.reproducible)), lambda: net, progress=False
    )
    for dc in (loop, fast):
        dc.start(pool, b.generator())
    result = compare(
        lambda: loop.matching_step(net, pool, b.generator()),
        in_retained_heap(lambda: fast.matching_step(net, pool, b.generator())),
        s.repeats,
        b.device,
    )
    loss_loop, grad_loop = matching_loss_and_grad(loop, net, pool, loop.images, b.generator())
    loss_fast, grad_fast = matching_loss_and_grad(fast, net, pool, loop.images, b.generator())
    # float64 reference (the loop's arithmetic in double precision): on a GPU the two fp32 paths
    # run different convolution kernels, so their distance alone cannot say which one drifted
    pool64 = RealPool(pool.images.double(), pool.labels, pool.num_classes)
    net64 = copy.deepcopy(net).double()
    loss_ref, grad_ref = matching_loss_and_grad(loop, net64, pool64, loop.images.double(), b.generator())
    check = {
        "loss_relative_diff": relative(loss_fast, loss_loop),
        "grad_relative_diff": relative(grad_fast, grad_loop),
        "loop_grad_vs_float64": relative(grad_loop, grad_ref),
        "fast_grad_vs_float64": relative(grad_fast, grad_ref),
    }
    check["within_1e-4"] = check["loss_relative_diff"] < 1e-4 and check["grad_relative_diff"] < 1e-4
    # agreement in the sense that matters: the fast path is no further from float64 than the loop
    check["fast_as_accurate_as_loop"] = (
        check["fast_grad_vs_float64"] <= 2 * check["loop_grad_vs_float64"] + 1e-6
    )
    result["check"] = check
    result["setting"] = {"width": s.width, "batch_real": s.batch_real, "ipc": 10}
    return result


def matching_loss_and_grad(
    dc: DCDistiller, net: nn.Module, pool: RealPool, images: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed matching loss over classes and its gradient w.r.t. the images, by `dc`'s path."""
    images = images.detach().clone().requires_grad_(True)
    if dc.config.dc.matching == "batched":
        loss = dc.matching_loss_batched(net, pool, images, generator)
    else:
        loss = sum(dc.class_matching_loss(net, pool, images, c, generator) for c in range(pool.num_classes))
    (grad,) = torch.autograd.grad(loss, images)
    return loss.detach(), grad


class AuthorsDoorping(DoorpingAttack):
    """The authors' update loop: at every Adam step, find the layer by walking the network, add a
    forward hook that is never removed (so step i runs i hooks) and read the loss back to the host.

    The bench removes the piled-up hooks when the update ends, so that repeats start alike; the
    authors' hooks stayed on the network for the rest of the DC iteration, slowing later updates
    further, which this baseline leaves out.
    """

    @contextlib.contextmanager
    def unit_reader(self, net, read, units):
        handles: list[torch.utils.hooks.RemovableHandle] = []
        cfg = self.config.doorping

        def read_units(image: torch.Tensor) -> torch.Tensor:
            layer, module = select_layer(net, cfg.layer)  # looked up again at every step
            store: dict[str, torch.Tensor] = {}
            handles.append(
                (layer if cfg.dead_neuron_floor > 0 else module).register_forward_hook(
                    lambda _m, _i, output: store.__setitem__("out", output)
                )
            )
            net(image)
            return store["out"][:, units]

        try:
            yield read_units
        finally:
            for handle in handles:
                handle.remove()

    def optimise(self, patch, activations, target, bounds):
        cfg = self.config.doorping
        optimizer = torch.optim.Adam([patch], lr=cfg.lr, betas=(0.9, 0.99))
        for step in range(cfg.max_steps):
            loss = F.mse_loss(activations(patch), target)
            if loss.item() < cfg.stop_loss:
                self.steps_total += step
                return patch.detach()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if bounds is not None:
                with torch.no_grad():
                    patch.copy_(torch.maximum(torch.minimum(patch, bounds[1]), bounds[0]))
        self.steps_total += cfg.max_steps
        return patch.detach()


def bench_trigger(b: Bench) -> dict:
    """(b) One DOORPING update on a trained-looking net; both must return the same patch."""
    s = b.scale
    # stop_loss 0: every update runs max_steps, so both paths do the same number of Adam steps
    cfg = b.config(f"doorping.max_steps={s.trigger_steps}", "doorping.stop_loss=0", "poison.clip=false")
    net = b.net(s.width)
    attacks = [cls(cfg, b.train, b.generator()) for cls in (AuthorsDoorping, DoorpingAttack)]
    start = attacks[0].trigger.clone()

    def update(attack: DoorpingAttack) -> Callable[[], None]:
        def run() -> None:
            attack.trigger = start.clone()
            net.eval()
            attack.update_trigger(net)

        return run

    result = compare(update(attacks[0]), in_retained_heap(update(attacks[1])), s.repeats, b.device)
    update(attacks[0])()
    update(attacks[1])()
    result["check"] = {
        "pattern_max_abs_diff": float((attacks[0].trigger.pattern - attacks[1].trigger.pattern).abs().max()),
        "steps_per_update": attacks[1].steps_total / max(attacks[1].updates, 1),
    }
    result["setting"] = {"width": s.width, "max_steps": s.trigger_steps}
    if b.device.type == "cuda":  # the fast path's steps run as CUDA graphs: against its own eager steps
        eager = DoorpingAttack(cfg, b.train, b.generator())
        eager.graphs_usable = False
        result["graphs_vs_eager"] = compare(update(eager), update(attacks[1]), s.repeats, b.device)
        update(eager)()
        update(attacks[1])()
        result["graphs_vs_eager"]["check"] = {
            "graphs_used": attacks[1].graphs_usable,
            "pattern_max_abs_diff": float((eager.trigger.pattern - attacks[1].trigger.pattern).abs().max()),
        }
    return result


def bench_victims(b: Bench) -> dict:
    """(c) Ten victims trained and scored: one after another (baseline), the same with the retained
    heap (the default path of `ddbackdoor run`), and stacked; all must give the same accuracies."""
    s, pool = b.scale, b.pool()
    images, labels = init_synthetic(pool, 10, "real", b.generator())
    synthetic = SyntheticSet(images, labels)
    attack = DoorpingAttack(b.config(), b.train, b.generator())
    test = b.test
    if s.test_images is not None:
        keep = torch.randperm(len(test.labels), generator=b.generator())[: s.test_images]
        test = RealData(
            test.images[keep], test.labels[keep], test.num_classes, test.mean, test.std, test.name
        )
    tests = EvalSets.build(test, attack.trigger, b.device)
    sequential = EvalConfig(num_victims=10, epochs=s.victim_epochs, batched=False)
    stacked = sequential.model_copy(update={"batched": True})

    def make(name: str) -> nn.Module:
        shape = (b.train.channels, b.train.num_classes, b.train.image_size)
        return create_model(name, *shape, width=s.victim_width).to(b.device)

    outputs: dict[str, dict] = {}

    def run(name: str, c: EvalConfig) -> Callable[[], None]:
        def go() -> None:
            outputs[name] = evaluate(synthetic, tests, make, ["convnet"], c, b.seed)

        return go

    result = compare(
        run("sequential", sequential), in_retained_heap(run("fast", sequential)), s.repeats, b.device
    )
    result["stacked"] = compare(run("sequential", sequential), run("stacked", stacked), s.repeats, b.device)
    base = outputs["sequential"]
    result["check"] = {
        "cta_sequential": base["cta"]["values"],
        "cta_stacked": outputs["stacked"]["cta"]["values"],
        "max_abs_diff": max_victim_diff(base, outputs["fast"]),
        "stacked_max_abs_diff": max_victim_diff(base, outputs["stacked"]),
        "stacked_mean_diff": outputs["stacked"]["cta"]["mean"] - base["cta"]["mean"],
    }
    result["setting"] = {"victims": 10, "epochs": s.victim_epochs, "width": s.victim_width, "ipc": 10}
    return result


def max_victim_diff(a: dict, b: dict) -> float:
    """Largest per-victim difference in CTA or ASR between two evaluations."""
    pairs = [zip(a[k]["values"], b[k]["values"], strict=True) for k in ("cta", "asr")]
    return max(abs(x - y) for pair in pairs for x, y in pair)


def dc_schedule(s: Scale, ipc: int) -> tuple[int, int]:
    """(outer steps timed, inner loop): the authors' loops at this IPC, capped by the scale."""
    outer, inner = dc_loops(ipc)
    return (min(outer, s.dc_outer) if s.dc_outer else outer), (inner if s.dc_inner is None else s.dc_inner)


def dc_config(b: Bench, ipc: int, overrides: list[str]):
    """The authors' DC at this IPC (their no-norm ConvNet), capped by the bench scale."""
    s = b.scale
    outer, inner = dc_schedule(s, ipc)
    return b.config(
        f"ipc={ipc}",
        f"net.width={s.dc_width}",
        f"dc.batch_real={s.dc_batch_real}",
        f"dc.outer_loop={outer}",
        f"dc.inner_loop={inner}",
        *overrides,
    )


def dc_with_doorping(
    b: Bench, cfg, seed: int
) -> tuple[DCDistiller, RealPool, DoorpingAttack, torch.Generator]:
    """A started DC distiller on its own pool, poisoned by DOORPING (whose updates are part of
    every iteration, as in an attacked run)."""
    pool = b.pool()
    generator = torch.Generator().manual_seed(seed)
    attack = DoorpingAttack(cfg, b.train, generator)
    attack.prepare(pool)
    dc = DCDistiller(cfg, lambda: b.net(cfg.net.width, norm=cfg.net.norm), progress=False)
    dc.start(pool, generator)
    return dc, pool, attack, generator


def dc_iteration(b: Bench, ipc: int, overrides: list[str]) -> Callable[[], object]:
    cfg = dc_config(b, ipc, overrides)
    dc, pool, attack, _ = dc_with_doorping(b, cfg, b.seed)
    return lambda: dc.step(1, pool, [attack], b.generator())


# the authors' arithmetic, eager, one class after another (run without the retained heap)
STRAIGHTFORWARD = ["dc.matching=loop", "dc.compile=false"]


def fast_dc_options(device: torch.device, reproducible: bool = False) -> list[str]:
    """The fastest measured path on this device (README "Speed"): batched matching on CUDA,
    compiled plain passes on a CPU, where batching loses (not in reproducible mode, which
    compiles nothing)."""
    if device.type == "cuda":
        return ["dc.matching=batched", "dc.compile=false"]
    return ["dc.matching=loop", f"dc.compile={str(not reproducible).lower()}"]


def in_retained_heap(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` as the fast path runs it: with freed CPU memory kept in the heap (`retain_freed_memory`)."""

    def call() -> object:
        with retained_heap():
            return fn()

    return call


def bench_dc(b: Bench, peak: float, ipcs: tuple[int, ...] = (10, 50)) -> dict:
    """(d) One DC iteration with DOORPING (the authors' network and loops) per IPC, with FLOP/s;
    on CUDA also the fast path with TF32 allowed, and how far one iteration of it drifts."""
    s = b.scale
    out: dict = {}
    for ipc in ipcs:
        plain = dc_iteration(b, ipc, STRAIGHTFORWARD)
        fast = in_retained_heap(dc_iteration(b, ipc, fast_dc_options(b.device, b.reproducible)))
        result = compare(plain, fast, s.dc_repeats, b.device)
        # Both paths do the same arithmetic; FlopCounterMode overcounts grouped convolutions' weight
        # gradients (it ignores `groups`, x classes here), so FLOP/s use the loop's count for both.
        result["flops"] = count_flops(plain)
        result["fast_flops_as_counted"] = count_flops(fast)
        for name in ("baseline", "fast"):
            result[f"{name}_flop_per_s"] = result["flops"] / (result[f"{name}_ms"] / 1e3)
            result[f"{name}_fraction_of_matmul"] = result[f"{name}_flop_per_s"] / peak
        if b.device.type == "cuda":
            result["tf32"] = tf32_variant(b, ipc, plain, result["baseline_ms"])
        authors_outer = dc_loops(ipc)[0]
        outer, inner = dc_schedule(s, ipc)
        result["setting"] = {
            "ipc": ipc,
            "width": s.dc_width,
            "norm": dc_config(b, ipc, []).net.norm,
            "attack": "doorping",
            "batch_real": s.dc_batch_real,
            "outer_steps_timed": outer,
            "authors_outer_loop": authors_outer,
            "inner_loop": inner,
            "full_iteration": outer == authors_outer,
            "fast_options": fast_dc_options(b.device, b.reproducible),
        }
        out[f"ipc{ipc}"] = result
    return out


def tf32_variant(b: Bench, ipc: int, plain: Callable[[], object], baseline_ms: float) -> dict:
    """The fast path with TF32 allowed, against the fp32 straightforward time measured just
    before; drift = relative change of the synthetic set after one iteration from the same start."""
    fast = dc_iteration(b, ipc, fast_dc_options(b.device, b.reproducible))

    def with_tf32() -> None:
        with tf32(True):
            fast()

    times, _ = time_pair(with_tf32, lambda: None, b.scale.dc_repeats, b.device)
    after = {}
    for allowed in (False, True):
        cfg = dc_config(b, ipc, fast_dc_options(b.device, b.reproducible))
        dc, pool, attack, _ = dc_with_doorping(b, cfg, b.seed)
        with tf32(allowed):
            dc.step(1, pool, [attack], b.generator())
        after[allowed] = dc.images.detach()
    fast_ms = statistics.median(times) * 1e3
    return {
        "fast_ms": fast_ms,
        "ratio_to_fp32_baseline": baseline_ms / fast_ms,
        "synthetic_drift_relative": relative(after[True], after[False]),
    }


def bench_stacking(b: Bench, k: int = 4) -> dict:
    """(g) K DC runs with DOORPING (seeds 0..K-1, IPC 10): one after another vs stacked in one
    process (`ddbackdoor stack`); ratio = runs per hour stacked / one after another."""
    from .stacked import RunStack

    cfg = dc_config(b, 10, STRAIGHTFORWARD)

    def members() -> list[StackMember]:
        return [StackMember(*dc_with_doorping(b, cfg, seed)) for seed in range(k)]

    alone, together = members(), members()
    stack = RunStack(together, [torch.get_rng_state() for _ in together])  # type: ignore[arg-type]
    images, optimizer = stack.stack_images()

    def one_after_another() -> None:
        for m in alone:
            m.distiller.step(1, m.pool, [m.attack], m.generator)

    def stacked() -> None:
        stack.step(1, images, optimizer)

    check_alone, check_stacked = members(), members()
    for m in check_alone:
        m.distiller.step(1, m.pool, [m.attack], m.generator)
    check = RunStack(check_stacked, [torch.get_rng_state() for _ in check_stacked])  # type: ignore[arg-type]
    check_images, check_optimizer = check.stack_images()
    check.step(1, check_images, check_optimizer)
    expected = torch.stack([m.distiller.images.detach() for m in check_alone])
    result = compare(one_after_another, stacked, max(1, b.scale.dc_repeats - 1), b.device)
    result["check"] = {
        "images_max_abs_diff": float((check_images.detach() - expected).abs().max()),
        "images_relative": relative(check_images.detach(), expected),
    }
    result["setting"] = {"runs": k, "ipc": 10, "width": cfg.net.width, "norm": cfg.net.norm}
    result["note"] = "ratio = runs per hour stacked / one after another (same K iterations timed)"
    return result


@dataclass
class StackMember:
    """What `RunStack` needs of a run, without a run directory (no hooks but the attack)."""

    distiller: DCDistiller
    pool: RealPool
    attack: DoorpingAttack
    generator: torch.Generator
    out: str = "bench"

    def hooks(self) -> list:
        return []


def load_into(module: nn.Module, weights: dict[str, torch.Tensor]) -> nn.Module:
    """Replace every parameter by a (non-leaf) tensor, as the original DD code rebuilt its module."""
    for name, tensor in weights.items():
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        del owner._parameters[attr]
        setattr(owner, attr, tensor)
    return module


def bench_dd(b: Bench) -> dict:
    """(e) One DD outer step: unroll, outer loss on a real batch, backward to images and lrs."""
    try:
        from .distill import dd
    except ImportError:
        return {"missing": "ddbackdoor.distill.dd does not exist yet"}
    s, pool = b.scale, b.pool()
    cfg = b.config(
        "distill=dd", "ipc=10", f"dd.distill_steps={s.dd_steps}", f"dd.distill_epochs={s.dd_epochs}"
    )
    distiller = dd.DDDistiller(cfg, lambda: b.net(s.dd_width, norm="none"), progress=False)
    distiller.start(pool, b.generator())
    template = b.net(s.dd_width, norm="none")
    real_index = torch.randperm(pool.labels.numel(), generator=b.generator())[: s.dd_batch_real]
    real_x, real_y = pool.images[real_index.to(b.device)], pool.labels[real_index.to(b.device)]
    buffers = dict(template.named_buffers())

    def outer_step(rebuild: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images = distiller.images.detach().clone().requires_grad_(True)
        batches = distiller.layout.batches(images, distiller.labels)
        lrs = distiller.lrs().detach()
        weights = {k: v.detach().clone().requires_grad_(True) for k, v in template.named_parameters()}
        if rebuild:
            end = dict(weights)
            for t in range(lrs.numel()):
                x, y = batches[t % len(batches)]
                module = load_into(copy.deepcopy(template), end)
                grads = torch.autograd.grad(
                    F.cross_entropy(module(x), y), list(end.values()), create_graph=True
                )
                end = {k: w - lrs[t] * g for (k, w), g in zip(end.items(), grads, strict=True)}
            logits = load_into(copy.deepcopy(template), end)(real_x)
        else:
            end = dd.unroll(template, weights, buffers, batches, lrs)
            logits = torch.func.functional_call(template, (end, buffers), (real_x,))
        loss = F.cross_entropy(logits, real_y)
        (grad,) = torch.autograd.grad(loss, images)
        return loss.detach(), grad

    result = compare(lambda: outer_step(True), lambda: outer_step(False), s.repeats, b.device)
    (loss_a, grad_a), (loss_b, grad_b) = outer_step(True), outer_step(False)
    result["check"] = {
        "loss_relative_diff": relative(loss_b, loss_a),
        "grad_relative_diff": relative(grad_b, grad_a),
    }
    result["setting"] = {"width": s.dd_width, "unrolled_steps": s.dd_steps * s.dd_epochs, "ipc": 10}
    return result


def option_base(device: torch.device) -> list[str]:
    """What (f) adds each option to: batched matching on CUDA, the plain loop on a CPU."""
    return fast_dc_options(device) if device.type == "cuda" else STRAIGHTFORWARD


def bench_options(b: Bench) -> dict:
    """(f) Device options at IPC 10, each alone against `option_base`."""
    s = b.scale
    base_options = option_base(b.device)
    base = dc_iteration(b, 10, base_options)
    # name -> (config overrides, context around the call)
    options: dict[str, tuple[list[str], Callable[[], contextlib.AbstractContextManager]]] = {
        "channels_last": (["dc.channels_last=true"], contextlib.nullcontext),
        # the first call (the untimed warm-up) compiles
        "torch_compile": (["dc.compile=true"], contextlib.nullcontext),
        "retained_heap": ([], retained_heap),
    }
    if b.reproducible:  # reproducible runs compile nothing
        del options["torch_compile"]
    if b.device.type == "cuda":
        options["cudnn_benchmark"] = ([], cudnn_benchmark)  # per-shape kernel search; DC's shapes are fixed
        options["tf32"] = ([], lambda: tf32(True))
        options["bf16_autocast"] = ([], lambda: torch.autocast("cuda", dtype=torch.bfloat16))
    out: dict = {}
    for name, (overrides, context) in options.items():
        fn = dc_iteration(b, 10, [*base_options, *overrides])

        def with_option(fn=fn, context=context) -> None:
            with context():
                fn()

        try:
            out[name] = compare(base, with_option, s.dc_repeats, b.device)
        except RuntimeError as err:  # e.g. an op without a bf16 double-backward kernel
            out[name] = {"missing": f"failed: {one_line_error(err)}"}
    out["base"] = base_options
    out["note"] = (
        "ratio > 1: the option is faster; tf32/bf16 change results beyond 1e-4 and stay off by default"
    )
    return out


def _self_time_us(event, device: torch.device) -> float:
    if device.type == "cuda":  # renamed across torch versions
        return float(getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0)))
    return float(event.self_cpu_time_total)


def profile_dc(b: Bench, rows: int = 20) -> str:
    """Where one DC iteration (IPC 10) spends its time, per path: the top operators by self time
    on the device, the summed CPU and device time and the wall time (launch-bound when the CPU sum
    is near the wall time and the device sum far below it)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if b.device.type == "cuda" else [])
    sort = "self_cuda_time_total" if b.device.type == "cuda" else "self_cpu_time_total"
    parts = []
    for name, options in (
        ("straightforward", STRAIGHTFORWARD),
        ("fast", fast_dc_options(b.device, b.reproducible)),
    ):
        fn = dc_iteration(b, 10, options)
        if name == "fast":
            fn = in_retained_heap(fn)
        fn()  # warm-up
        sync(b.device)
        start = time.perf_counter()
        with profile(activities=activities) as prof:
            fn()
            sync(b.device)
        wall = time.perf_counter() - start
        averages = prof.key_averages()
        cpu = sum(float(e.self_cpu_time_total) for e in averages) / 1e3
        device = sum(_self_time_us(e, b.device) for e in averages) / 1e3 if b.device.type == "cuda" else 0
        calls = sum(int(e.count) for e in averages)
        parts.append(
            f"== {name} ({', '.join(options)}): wall {wall * 1e3:.1f} ms under the profiler, "
            f"CPU self time {cpu:.1f} ms, device self time {device:.1f} ms, {calls} operator calls"
        )
        try:
            parts.append(averages.table(sort_by=sort, row_limit=rows))
        except (AttributeError, KeyError, ValueError):  # an older/newer torch without this sort key
            parts.append(averages.table(row_limit=rows))
    return "\n".join(parts)


SECTIONS: dict[str, str] = {
    "a_matching": "one gradient-matching outer step",
    "b_trigger": "one DOORPING trigger update",
    "c_victims": "one evaluation of 10 victims",
    "d_dc_iteration": "one DC iteration",
    "e_dd": "one DD outer step",
    "f_options": "device options, each alone on a DC iteration",
    "g_stacking": "4 DC runs stacked in one process vs one after another",
}


def pick_sections(letters: str) -> list[str]:
    """'d,a' -> ['d_dc_iteration', 'a_matching']; '' -> every section in order."""
    if not letters.strip():
        return list(SECTIONS)
    by_letter = {key[0]: key for key in SECTIONS}
    chosen = []
    for letter in (part.strip() for part in letters.split(",")):
        if letter not in by_letter:
            raise ConfigError(f"unknown bench section {letter!r}; accepted: {', '.join(by_letter)}")
        if by_letter[letter] not in chosen:
            chosen.append(by_letter[letter])
    return chosen


def run_bench(
    device: str = "cpu",
    quick: bool = False,
    data: str = "auto",
    seed: int = 0,
    out: Path | None = None,
    progress: Callable[[str], object] = print,
    sections: str = "",
    profile_to: Path | None = None,
    reproducible: bool = False,
    ipcs: tuple[int, ...] = (10, 50),
) -> dict:
    """The chosen sections (letters, in that order; all by default); returns the JSON-ready result,
    also written to `out` after every section, so a run cut short keeps what it measured."""
    chosen = pick_sections(sections)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu")
    dev = torch.device(device)
    if data == "auto":
        data = "cifar10-shaped" if dev.type == "cuda" else "fashion-mnist-mini"
    if data not in DATA:
        raise ConfigError(f"unknown bench data {data!r}; accepted: {', '.join(DATA)}")
    scale = SCALES["quick" if quick else dev.type]
    train, test = DATA[data](seed)
    b = Bench(dev, scale, train, test, seed, reproducible)
    # the same thread count either way, so pinned and unpinned timings compare
    with tf32(False), pinned_kernels(reproducible, torch.get_num_threads()):
        peak = matmul_flops_per_s(dev, 512 if quick else 4096 if dev.type == "cuda" else 2048)
        progress(f"fp32 matmul: {peak / 1e9:.1f} GFLOP/s")
        result: dict = {
            "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(),
            "torch": str(torch.__version__),
            "reproducible": reproducible,
            "kernels": kernel_state(),
            "data": data,
            "quick": quick,
            "scale": asdict(scale),
            "matmul_flop_per_s": peak,
        }
        runs: dict[str, Callable[[], dict]] = {
            "a_matching": lambda: bench_matching(b),
            "b_trigger": lambda: bench_trigger(b),
            "c_victims": lambda: bench_victims(b),
            "d_dc_iteration": lambda: bench_dc(b, peak, ipcs),
            "e_dd": lambda: bench_dd(b),
            "f_options": lambda: bench_options(b),
            "g_stacking": lambda: bench_stacking(b),
        }
        for key in chosen:
            fn = runs[key]
            try:
                result[key] = fn()
            except (RuntimeError, torch.cuda.OutOfMemoryError) as err:  # keep the other sections
                result[key] = {"missing": f"failed: {one_line_error(err)}"}
            progress(format_section(key, result[key]))
            if out is not None:
                write_json(out, result)
        if profile_to is not None:
            profile_to.write_text(profile_dc(b) + "\n")
            progress(f"profile of one DC iteration (IPC 10), both paths: {profile_to}")
    return result


def _line(label: str, r: dict) -> str:
    if "missing" in r:
        return f"{label}: MISSING ({r['missing']})"
    text = f"{label}: baseline {r['baseline_ms']:.1f} ms, fast {r['fast_ms']:.1f} ms, ratio {r['ratio']:.2f}x"
    peaks = r.get("baseline_peak_mib"), r.get("fast_peak_mib")
    if None not in peaks:
        text += f", peak mem {peaks[0]:.0f} / {peaks[1]:.0f} MiB"
    if "fast_fraction_of_matmul" in r:
        text += (
            f", {r['baseline_flop_per_s'] / 1e9:.1f} / {r['fast_flop_per_s'] / 1e9:.1f} GFLOP/s"
            f" = {r['baseline_fraction_of_matmul']:.0%} / {r['fast_fraction_of_matmul']:.0%} of matmul"
        )
    if "check" in r:
        shown = {k: v for k, v in r["check"].items() if not isinstance(v, list)}
        text += "\n    check: " + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
    return text


def _fmt(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def format_section(key: str, r: dict) -> str:
    title = SECTIONS[key]
    nested = {k: v for k, v in r.items() if isinstance(v, dict) and ("baseline_ms" in v or "missing" in v)}
    lines = [_line(f"{key} {title}", r)] if "baseline_ms" in r or "missing" in r or not nested else []
    lines += [_line(f"{key} {title} [{name}]", v) for name, v in nested.items()]
    return "\n".join(lines)


def main(
    device: str,
    quick: bool,
    data: str,
    out: Path | None,
    threads: int = 0,
    sections: str = "",
    profile_to: Path | None = None,
    reproducible: bool = False,
    ipcs: tuple[int, ...] = (10, 50),
) -> dict:
    """The CLI entry; `threads` > 0 pins torch's intra-op threads (on a loaded CPU, 1 avoids
    OpenMP barrier stalls that make 2 threads many times slower than 1)."""
    if threads:
        torch.set_num_threads(threads)
    return run_bench(
        device,
        quick,
        data,
        out=out,
        sections=sections,
        profile_to=profile_to,
        reproducible=reproducible,
        ipcs=ipcs,
    )
