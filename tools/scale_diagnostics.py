"""Diagnostics behind docs/results-quick.md's "what limits the carried trigger" (not part of the package).

python tools/scale_diagnostics.py victims RUN 200,1000   # fit and per-source-class ASR, 2 victims
python tools/scale_diagnostics.py occupancy 2,4,8         # how often the patch lands on the object
python tools/scale_diagnostics.py distance RUN RUN ...    # mean |difference| of finished sets
python tools/scale_diagnostics.py stamps 8 OUT.png          # white vs checkerboard patch on test images
python tools/scale_diagnostics.py updates RUN RUN ...     # how DOORPING-like trigger updates ended
python tools/scale_diagnostics.py carriers RUN RUN ...    # synthetic images that show the trigger
"""

import json
import sys
from collections import Counter
from pathlib import Path

import torch

from ddbackdoor.artifacts import image_grid, load_tensors, save_png
from ddbackdoor.data.registry import load_dataset
from ddbackdoor.evaluate import EvalSets, fresh_victim, predict, train_victim, victim_seeds
from ddbackdoor.finished_run import load_run
from ddbackdoor.run_setup import model_factory
from ddbackdoor.triggers import FIXED_PATCHES, patch_box


def victims(run_dir: str, epochs: str) -> None:
    """Train two of the run's victims for each epoch count; print their fit on the synthetic set,
    CTA, ASR per source class (the target class's entry is not an attack), CTA per class and
    where the target class's clean test images go."""
    run = load_run(Path(run_dir))
    cfg = run.config
    train, test = load_dataset(cfg.dataset, cfg.data.root, cfg.data.image_size, cfg.data.download)
    make_net = model_factory(cfg, train, "cpu")
    sets = EvalSets.build(test, run.trigger, "cpu")
    for count in (int(e) for e in epochs.split(",")):
        ecfg = cfg.eval.model_copy(update={"epochs": count})
        for seed in victim_seeds(cfg.seed, 2):
            net = fresh_victim(make_net, cfg.network, seed)
            train_victim(net, run.synthetic, ecfg, torch.Generator().manual_seed(seed))
            fit = (predict(net, run.synthetic.images, 256) == run.synthetic.labels).float().mean()
            clean, hit = predict(net, sets.clean, 1024), predict(net, sets.triggered, 1024) == sets.target
            per_class = [round(float(hit[sets.labels == c].float().mean()), 2) for c in range(10)]
            right = clean == sets.labels
            cta_by_class = [round(float(right[sets.labels == c].float().mean()), 2) for c in range(10)]
            target_as = Counter(clean[sets.labels == cfg.poison.target].tolist())
            print(
                f"epochs {count} victim {seed}: fit {fit:.2f} CTA {right.float().mean():.3f} "
                f"ASR by class {per_class} CTA by class {cta_by_class} "
                f"target-class test images predicted as {dict(sorted(target_as.items()))}"
            )


def occupancy(sizes: str, dataset: str = "fashion-mnist-mini", threshold: float = 0.3) -> None:
    """Share of test images (all, and per class) whose patch region has a mean above `threshold`."""
    _, test = load_dataset(dataset, None, 32, False)
    images, labels = test.images[:, 0], test.labels
    for size in (int(s) for s in sizes.split(",")):
        start, stop = patch_box(images.shape[-1], size)
        covered = images[:, start:stop, start:stop].mean((1, 2)) > threshold
        per_class = [round(float(covered[labels == c].float().mean()), 2) for c in range(10)]
        print(f"{size}x{size}: all {covered.float().mean():.3f}, by class {per_class}")


def distance(*run_dirs: str) -> None:
    """Mean absolute difference (normalised units) of each finished set from the first one's."""
    sets = [load_tensors(Path(d) / "synthetic.safetensors")[0]["images"] for d in run_dirs]
    for run_dir, images in zip(run_dirs, sets, strict=True):
        print(f"{(images - sets[0]).abs().mean():.3f}  {run_dir}")


def stamps(size: str, out: str, dataset: str = "fashion-mnist-mini", per_class: int = 2) -> None:
    """Rows: clean, white patch, checkerboard patch; columns: the first test images of every class
    (pixel space, 32x32), so one can see where a patch of `size` lands on the object."""
    _, test = load_dataset(dataset, None, 32, False)
    chosen = torch.cat([torch.nonzero(test.labels == c)[:per_class, 0] for c in range(10)])
    images = test.images[chosen]
    rows = [images] + [make(1, 32, int(size), 0).stamp(images) for make in FIXED_PATCHES.values()]
    save_png(Path(out), image_grid(torch.cat(rows), rows=len(rows), scale=4))
    print(f"rows: clean, {', '.join(FIXED_PATCHES)}; {len(chosen)} test images -> {out}")


def updates(*run_dirs: str) -> None:
    """Per run, from history.jsonl: how the trigger updates stopped, how many started on a dead
    unit, and the final patch's values."""
    for run_dir in run_dirs:
        lines = (Path(run_dir) / "history.jsonl").read_text().splitlines()
        records = [r for r in map(json.loads, lines) if r.get("kind") == "trigger_update"]
        stops = Counter(r["stopped"] for r in records)
        dead = sum(max(r["start_activation"]) <= 0 for r in records)
        final = torch.tensor(records[-1]["patch"]).flatten().tolist()
        print(f"{run_dir}: {len(records)} updates, {dict(stops)}, dead at start {dead}, final {final}")


def carriers(*run_dirs: str, tolerance: float = 0.25) -> None:
    """Per run and class, how many finished synthetic images still show the run's trigger: the
    mean |difference| from the trigger inside its box under `tolerance` (pixel units)."""
    for run_dir in run_dirs:
        run = load_run(Path(run_dir))
        cfg = run.config
        train, _ = load_dataset(cfg.dataset, cfg.data.root, cfg.data.image_size, cfg.data.download)
        start, stop = patch_box(cfg.data.image_size, cfg.poison.trigger_size)
        box = (..., slice(start, stop), slice(start, stop))
        pixels = train.denormalize(run.synthetic.images)[box]
        gap = (pixels - run.trigger.pattern[box]).abs().flatten(1).mean(1)
        shows = gap < tolerance
        labels = run.synthetic.labels
        per_class = [int(shows[labels == c].sum()) for c in range(int(labels.max()) + 1)]
        print(f"{run_dir}: per class {per_class}")


COMMANDS = {
    "victims": victims,
    "occupancy": occupancy,
    "distance": distance,
    "stamps": stamps,
    "updates": updates,
    "carriers": carriers,
}

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    COMMANDS[sys.argv[1]](*sys.argv[2:])
