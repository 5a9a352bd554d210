"""What RDM-DC's filter drops from the target class's real batches: poison, or clean images?

    python tools/rdm_dc_filter_share.py RUN_DIR [RUN_DIR ...] [--draws 100] [--epsilon 0.1]

For each finished run (DM or RDM-DC, any attack that poisons real rows), rebuilds the poisoned
real data exactly as `ddbackdoor defend` does (the run's seed, its final trigger, which rows were
poisoned) and replays what the distiller does to the target class at each iteration: a fresh
random network of the run's architecture, a real batch of `dm.batch_real` drawn as the pool draws
it, one augmentation, the embeddings, then RDM-DC's `kept_rows`. It counts, over `draws` such
iterations, the poisoned share of the batch, of the rows the filter drops, and of the rows it
keeps, and how far each mean lies from the mean of the batch's clean rows (the "poisoned
deviation" the method exists to shrink). A run that was not distilled by RDM-DC is asked what
the filter *would* drop (at `--epsilon`, default 0.1, or the run's own `rdm_dc.epsilon`).

The draws come from a generator seeded by the run's seed, not from the run's own stream: the
replay estimates the filter's behaviour over the same distribution of networks and batches,
not the run's exact iterations. It computes with the run's kernels (reproducible mode: pinned,
one thread), so it prints the same figures on every host.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ddbackdoor import reproducible

reproducible.pin_environment()  # before anything imports torch, as the ddbackdoor command does

import torch  # noqa: E402

from ddbackdoor.data.splits import load_run_data  # noqa: E402
from ddbackdoor.defenses.runner import poisoned_pool  # noqa: E402
from ddbackdoor.distill.augment import DiffAugment  # noqa: E402
from ddbackdoor.distill.dm import embed  # noqa: E402
from ddbackdoor.distill.pool import RealPool, pick  # noqa: E402
from ddbackdoor.distill.rdm_dc import kept_rows  # noqa: E402
from ddbackdoor.errors import UserError  # noqa: E402
from ddbackdoor.finished_run import load_run  # noqa: E402
from ddbackdoor.run_setup import model_factory  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from newer_attacks_table import print_table  # noqa: E402


def batch_rows(pool: RealPool, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """The row indices `RealPool.sample` would return for class c (a mix's share included)."""
    if c in pool.mixes:
        inside, outside = pool.mixed_draw(c, n, generator)
        return torch.cat([outside, inside])
    return pick(pool.by_class[c], n, generator)


def replay(run_dir: Path, draws: int, epsilon: float | None) -> dict:
    """The filter's choices on `draws` replayed iterations of the run's target class."""
    run = load_run(run_dir, device="cpu")
    cfg = run.config
    train = load_run_data(cfg).train
    pool, poison = poisoned_pool(run, train, torch.device("cpu"))
    target = run.trigger.target
    eps = epsilon if epsilon is not None else getattr(getattr(cfg, "rdm_dc", None), "epsilon", 0.1)
    iterations = getattr(getattr(cfg, "rdm_dc", None), "power_iterations", 10)
    make_net = model_factory(cfg, train, torch.device("cpu"))
    augment = DiffAugment(cfg.dsa.strategy)
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the networks' initialisation draws from torch's global stream
    totals = {"batch": 0, "poison": 0, "dropped": 0, "dropped_poison": 0}  # kept = batch - dropped
    plain_shift, calibrated_shift = [], []
    threads = reproducible.resolved_threads(cfg.threads, cfg.reproducible)
    with torch.no_grad(), reproducible.pinned_kernels(cfg.reproducible, threads):
        for _ in range(draws):
            net = make_net(cfg.network).train()
            rows = batch_rows(pool, target, cfg.dm.batch_real, generator)
            images = augment.sample(generator, pool.images.shape[-2:])(pool.images[rows])
            emb = embed(net, images)
            keep = torch.zeros(len(rows), dtype=torch.bool)
            keep[kept_rows(emb, eps, iterations)] = True
            bad = poison[rows]
            totals["batch"] += len(rows)
            totals["poison"] += int(bad.sum())
            totals["dropped"] += int((~keep).sum())
            totals["dropped_poison"] += int((~keep & bad).sum())
            if bad.any() and (~bad).any():
                clean_mean = emb[~bad].mean(0)
                plain_shift.append(float((emb.mean(0) - clean_mean).norm()))
                calibrated_shift.append(float((emb[keep].mean(0) - clean_mean).norm()))
    totals["kept"] = totals["batch"] - totals["dropped"]
    totals["kept_poison"] = totals["poison"] - totals["dropped_poison"]
    share = lambda a, b: totals[a] / totals[b] if totals[b] else float("nan")  # noqa: E731
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    return {
        "run": run_dir.name,
        "distill": cfg.distill,
        "attack": cfg.attack,
        "seed": cfg.seed,
        "epsilon": eps,
        "draws": draws,
        "poison_share_of_batch": share("poison", "batch"),
        "poison_share_of_dropped": share("dropped_poison", "dropped"),
        "poison_share_of_kept": share("kept_poison", "kept"),
        "poison_dropped": share("dropped_poison", "poison"),
        "deviation_plain_mean": mean(plain_shift),
        "deviation_calibrated_mean": mean(calibrated_shift),
    }


HEADER = [
    "run",
    "epsilon",
    "poison in batch",
    "in dropped",
    "in kept",
    "poison dropped",
    "deviation: plain mean",
    "calibrated mean",
]


def table_row(row: dict) -> list[str]:
    keys = ("poison_share_of_batch", "poison_share_of_dropped", "poison_share_of_kept", "poison_dropped")
    deviations = (row["deviation_plain_mean"], row["deviation_calibrated_mean"])
    return [
        row["run"],
        f"{row['epsilon']:.2f}",
        *(f"{row[k]:.3f}" for k in keys),
        *(f"{d:.3f}" for d in deviations),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--epsilon", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write every row here")
    args = parser.parse_args(argv)
    rows = []
    for run_dir in args.runs:
        try:
            rows.append(replay(run_dir, args.draws, args.epsilon))
        except UserError as error:
            print(f"{run_dir}: {error}", file=sys.stderr)
            return 2
    print_table(HEADER, [table_row(row) for row in rows])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
