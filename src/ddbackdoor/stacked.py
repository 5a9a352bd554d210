"""K runs of DC distillation in one process, trained together on one device.

On a GPU one DC iteration is bound by kernel launches (50 inner steps on 100
images, one class at a time), not by arithmetic, so K independent runs that
share their data's shape and schedule go K times as far per launch when their
networks and synthetic sets are stacked along a leading run axis and every
pass is `vmap`ped over it. Each run keeps everything that makes it itself:
its pool (an attack rewrites it), its generator (drawn in the same order as
alone), its global-RNG stream for network inits, its attack hooks (called
with its own network), its checkpoints and run directory. So a stacked run's
synthetic set equals the same run alone up to float rounding (the vmapped
kernels sum in another order), and either can resume the other's checkpoint.

Only DC with networks without BatchNorm stacks: DSA's augmentation, DM and DD
have other loops; BN would need per-run statistics passes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from .allocator import retained_heap
from .config import ExperimentConfig
from .distill.base import HookContext, SyntheticSet, call_hooks
from .distill.dc import DCDistiller, has_batchnorm
from .distill.matching import row_distances
from .errors import ConfigError, Interrupted, UserError
from .experiment import Experiment, stop_requests
from .reproducible import pinned_kernels, resolved_threads
from .run_directory import RunDirectory
from .transfer import to_device

# Config keys that may differ between the runs of one stack: they change what is distilled, not
# the shapes or the schedule every run shares.
STACKABLE_KEYS = frozenset({"seed", "attack", "poison", "doorping"})


def check_stackable(configs: Sequence[ExperimentConfig]) -> None:
    """Refuse, in one line, runs that cannot share one stacked loop."""
    if not configs:
        raise UserError("no runs to stack")
    first = configs[0].model_dump(mode="json")
    for config in configs[1:]:
        other = config.model_dump(mode="json")
        for key in sorted(set(first) | set(other)):
            if key not in STACKABLE_KEYS and first.get(key) != other.get(key):
                raise ConfigError(
                    f"stacked runs must agree on {key!r} ({first.get(key)!r} vs {other.get(key)!r}); "
                    f"only {', '.join(sorted(STACKABLE_KEYS))} may differ"
                )
    if configs[0].distill != "dc":
        raise ConfigError(f"stacking runs DC only, not distill={configs[0].distill}; run them one by one")


def stacked_distance(grads_syn: Sequence[torch.Tensor], grads_real: Sequence[torch.Tensor]) -> torch.Tensor:
    """`match_distance` of each run, for gradients with a leading run axis: shape [K]."""
    total = grads_real[0].new_zeros(grads_real[0].shape[0])
    for g_syn, g_real in zip(grads_syn, grads_real, strict=True):
        if g_real.dim() <= 2:  # a 1-D parameter per run: nothing to match (as alone)
            continue
        rows_real = g_real.reshape(g_real.shape[0], g_real.shape[1], -1)
        total = total + row_distances(g_syn.reshape(rows_real.shape), rows_real).sum(dim=-1)
    return total


class RunStack:
    """The stacked DC loop over K prepared `Experiment`s (after `setup` and `begin`)."""

    def __init__(self, runs: list[Experiment], global_rng: list[torch.Tensor]):
        self.runs = runs
        self.global_rng = global_rng  # each run's global CPU RNG state, as `begin` left it
        self.distillers: list[DCDistiller] = [run.distiller for run in runs]  # type: ignore[misc]
        iterations = {d.iteration for d in self.distillers}
        if len(iterations) > 1:
            raise UserError(
                f"the runs to stack resume from different iterations ({sorted(iterations)}); "
                "finish them one by one or pass --restart"
            )
        lead = self.distillers[0]
        self.config = lead.config
        self.outer_loop, self.inner_loop = lead.outer_loop, lead.inner_loop
        self.template: nn.Module | None = None

    # -- per-run global RNG (network inits) -----------------------------------------------
    @contextmanager
    def own_rng(self, k: int) -> Iterator[None]:
        """Run k's global CPU RNG stream: alone, its networks are drawn from it in this order."""
        torch.set_rng_state(self.global_rng[k])
        try:
            yield
        finally:
            self.global_rng[k] = torch.get_rng_state()

    # -- stacked state ----------------------------------------------------------------------
    def stack_images(self) -> tuple[torch.Tensor, torch.optim.SGD]:
        """One leaf [K, N, C, H, W] and one SGD whose momentum buffer stacks the runs' buffers;
        SGD with momentum is elementwise, so the stacked step is each run's step."""
        images = torch.stack([d.images.detach() for d in self.distillers]).requires_grad_(True)
        _, lr, momentum = self.distillers[0].image_settings()
        optimizer = torch.optim.SGD([images], lr=lr, momentum=momentum)
        buffers = [d.optimizer_img.state.get(d.images, {}).get("momentum_buffer") for d in self.distillers]
        if all(b is not None for b in buffers):
            optimizer.state[images]["momentum_buffer"] = torch.stack(buffers)
        return images, optimizer

    def unstack_images(self, images: torch.Tensor, optimizer: torch.optim.SGD) -> None:
        """Write the stacked set back into each run's distiller (what its checkpoint saves)."""
        buffer = optimizer.state.get(images, {}).get("momentum_buffer")
        for k, d in enumerate(self.distillers):
            d._make_images(images[k].detach().clone())
            if buffer is not None:
                d.optimizer_img.state[d.images]["momentum_buffer"] = buffer[k].clone()

    def fresh_networks(self) -> tuple[list[nn.Module], dict[str, torch.Tensor]]:
        nets = []
        for k, d in enumerate(self.distillers):
            with self.own_rng(k):
                nets.append(d.make_net())
        if any(has_batchnorm(net) for net in nets):
            raise ConfigError("stacking needs a network without BatchNorm; use net.norm=instancenorm or none")
        if self.template is None:
            self.template = nets[0]
        params, _ = stack_module_state(nets)
        return nets, params

    def losses(self, params: dict[str, torch.Tensor], images: torch.Tensor, labels: torch.Tensor):
        """Each run's mean cross-entropy on its own batch: [K]."""
        template = self.template

        def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(functional_call(template, p, (x,)), y)

        return vmap(loss)(params, images, labels)

    # -- one iteration ----------------------------------------------------------------------
    def matching_step(
        self, params: dict[str, torch.Tensor], images: torch.Tensor, optimizer: torch.optim.SGD
    ) -> torch.Tensor:
        """Every run's per-class matching (the loop path, class by class); returns [K] loss sums."""
        cfg = self.config
        names = list(params)
        leaves = [params[n] for n in names]
        optimizer.zero_grad(set_to_none=True)
        total = images.new_zeros(len(self.runs))
        for c in range(self.runs[0].pool.num_classes):
            real = torch.stack([run.pool.sample(c, cfg.dc.batch_real, run.generator) for run in self.runs])
            syn = images[:, c * cfg.ipc : (c + 1) * cfg.ipc]
            real_labels = torch.full(real.shape[:2], c, device=real.device)
            syn_labels = torch.full(syn.shape[:2], c, device=syn.device)
            grads_real = torch.autograd.grad(self.losses(params, real, real_labels).sum(), leaves)
            grads_real = [g.detach() for g in grads_real]
            syn_loss = self.losses(params, syn, syn_labels).sum()
            grads_syn = torch.autograd.grad(syn_loss, leaves, create_graph=True)
            distance = stacked_distance(grads_syn, grads_real)
            distance.sum().backward()
            total = total + distance.detach()
        optimizer.step()
        return total

    def train_networks(self, params: dict[str, torch.Tensor], images: torch.Tensor) -> None:
        """The inner loop: plain SGD (the authors' optimiser) of every run's network on its set."""
        cfg = self.config
        data = images.detach()
        labels = self.distillers[0].labels
        leaves = list(params.values())
        count = data.shape[1]
        for _ in range(self.inner_loop):
            perms = [
                to_device(torch.randperm(count, generator=run.generator), data.device) for run in self.runs
            ]
            for start in range(0, count, cfg.dc.batch_train):
                idx = torch.stack([perm[start : start + cfg.dc.batch_train] for perm in perms])
                batch = torch.stack([data[k, idx[k]] for k in range(len(self.runs))])
                grads = torch.autograd.grad(self.losses(params, batch, labels[idx]).sum(), leaves)
                with torch.no_grad():
                    for p, g in zip(leaves, grads, strict=True):
                        p.add_(g, alpha=-cfg.dc.lr_net)

    def step(self, iteration: int, images: torch.Tensor, optimizer: torch.optim.SGD) -> torch.Tensor:
        """One DC iteration of every run (as `DCDistiller.step`); returns each run's mean loss."""
        nets, params = self.fresh_networks()
        loss_sum = images.new_zeros(len(self.runs))
        for outer in range(self.outer_loop):
            loss_sum = loss_sum + self.matching_step(params, images, optimizer)
            last = outer == self.outer_loop - 1
            if not last:
                self.train_networks(params, images)
            self.call_network_hooks(nets, params, HookContext(iteration, outer, last))
        classes = self.runs[0].pool.num_classes
        return loss_sum / (self.outer_loop * classes)

    def call_network_hooks(
        self, nets: list[nn.Module], params: dict[str, torch.Tensor], ctx: HookContext
    ) -> None:
        """Each run's hooks see its own network, as alone (DOORPING reads it and re-stamps its pool)."""
        for k, (run, net) in enumerate(zip(self.runs, nets, strict=True)):
            with torch.no_grad():
                for name, p in net.named_parameters():
                    p.copy_(params[name][k])
            net.train()
            call_hooks([run.attack], "on_network", net, ctx)

    # -- the loop ---------------------------------------------------------------------------
    def run(self, progress: bool = True) -> list[SyntheticSet]:
        cfg = self.config
        start = self.distillers[0].iteration
        images, optimizer = self.stack_images()
        bar = tqdm(
            range(start + 1, cfg.iterations + 1),
            desc=f"distil dc x{len(self.runs)} stacked",
            disable=not progress,
            leave=False,
            initial=start,
            total=cfg.iterations,
        )
        for iteration in bar:
            losses = self.step(iteration, images, optimizer).tolist()
            self.unstack_images(images, optimizer)
            self.after_iteration(iteration, losses)
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.3f}")
        return [d.result() for d in self.distillers]

    def after_iteration(self, iteration: int, losses: list[float]) -> None:
        """Each run's bookkeeping and its own iteration hooks (evaluation, checkpoint); a stop
        request is honoured after every run has written its checkpoint."""
        stopped: Interrupted | None = None
        for k, (run, d, loss) in enumerate(zip(self.runs, self.distillers, losses, strict=True)):
            snapshot = d.record_iteration(iteration, loss, f" of {run.out}")
            try:
                with self.own_rng(k):  # a checkpoint records this run's global RNG
                    call_hooks(run.hooks(), "on_iteration", iteration, snapshot)
            except Interrupted as err:
                stopped = stopped or err
        if stopped is not None:
            raise stopped


def _set_phase(runs: list[Experiment], phase: str) -> None:
    for run in runs:
        run.phase = phase


def run_stacked(
    configs: Sequence[ExperimentConfig],
    out_dirs: Sequence[str | Path],
    progress: bool = True,
    restart: bool = False,
) -> list[dict]:
    """The Python API behind `ddbackdoor stack`: K runs distilled together, then each evaluated.

    Finished runs are reported, unfinished ones resumed (all from the same iteration) or started.
    """
    # each run in the mode it began in, where the command leaves the mode to the default
    configs = [RunDirectory(out).with_recorded_mode(c) for c, out in zip(configs, out_dirs, strict=True)]
    check_stackable(configs)
    lead = configs[0]
    results: list[dict | None] = [None] * len(configs)
    with (
        retained_heap(lead.retain_freed_memory),
        pinned_kernels(lead.reproducible, resolved_threads(lead.threads, lead.reproducible)),
    ):
        runs: list[Experiment] = []
        for index, (config, out) in enumerate(zip(configs, out_dirs, strict=True)):
            run = Experiment(config, out, progress=False)
            results[index] = run.check_existing(restart)
            if results[index] is None:
                runs.append(run)
        if not runs:
            return [r for r in results if r is not None]
        started = time.perf_counter()
        with ExitStack() as stack:
            global_rng = []
            for run in runs:
                run.setup()
                stack.enter_context(run.logging())
                if not run.begin():  # as `Distiller.run` does for a fresh run
                    run.distiller.start(run.pool, run.generator)
                    run.distiller.iteration, run.distiller.losses = 0, []
                global_rng.append(torch.get_rng_state())
            group = RunStack(runs, global_rng)
            distill_started = time.perf_counter()
            with stop_requests(runs):
                _set_phase(runs, "distill")
                synthetic = group.run(progress)
                _set_phase(runs, "evaluate")
            distill_seconds = time.perf_counter() - distill_started
            finished = iter(
                run.finish(s, started, distill_seconds) for run, s in zip(runs, synthetic, strict=True)
            )
            return [r if r is not None else next(finished) for r in results]


def cell_name(overrides: Sequence[str]) -> str:
    """`["attack=doorping", "seed=0"]` -> "attack-doorping_seed-0" (a directory name)."""
    return "_".join(item.replace("=", "-", 1) for item in overrides) or "run"


def grid_cells(grid: Sequence[str], cells: Sequence[str] = ()) -> list[tuple[str, list[str]]]:
    """Runs from explicit cells ("k=v k2=v2", one run each) crossed with `key=v1,v2` axes:
    (directory name, overrides) per run, in row-major order."""
    runs: list[list[str]] = [cell.split() for cell in cells] or [[]]
    for run in runs:
        for item in run:
            if "=" not in item:
                raise UserError(f"--cell item {item!r} is not key=value")
    for axis in grid:
        key, sep, values = axis.partition("=")
        if not sep or not key or not values:
            raise UserError(f"--grid {axis!r} is not key=value[,value...]")
        runs = [[*run, f"{key}={value}"] for run in runs for value in values.split(",")]
    named = [(cell_name(run), run) for run in runs]
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise UserError(f"the runs' directory names repeat ({', '.join(names)}); make every cell differ")
    return named


def run_grid(
    base: dict,
    overrides: Sequence[str],
    grid: Sequence[str],
    out: Path,
    k: int = 0,
    progress: bool = True,
    restart: bool = False,
    cells: Sequence[str] = (),
) -> dict[str, dict]:
    """Every run (cells x grid) under OUT/NAME, distilled K at a time (0: all at once)."""
    from .resolve import build_config

    runs = grid_cells(grid, cells)
    configs = [build_config(base, [*overrides, *cell]) for _, cell in runs]
    size = k or len(runs)
    summary: dict[str, dict] = {}
    for first in range(0, len(runs), size):
        chunk = slice(first, first + size)
        names = [name for name, _ in runs[chunk]]
        metrics = run_stacked(configs[chunk], [out / name for name in names], progress, restart)
        summary.update(zip(names, metrics, strict=True))
    return summary
