"""Paired runs (`paired`, the default): an attacked run draws what the clean run of its seed draws.

Before, the attack drew its poison set from the run's one generator, so the distiller's draws,
and with `init=real` every starting image, differed from the clean run's of the same seed: at
`medium` an attacked run shared no starting image with its clean run, and attacks that carried
no backdoor cost 2 points of CTA there (docs/reproducibility.md, "Paired runs").
"""

import json

import pytest
import torch
import yaml

from ddbackdoor.artifacts import load_tensors
from ddbackdoor.data import load_dataset
from ddbackdoor.defenses.runner import poisoned_pool
from ddbackdoor.distill import DCDistiller
from ddbackdoor.distill.pool import RealPool, init_synthetic, paired_start
from ddbackdoor.experiment import Experiment, run_experiment
from ddbackdoor.finished_run import load_run
from ddbackdoor.identity import config_differences, with_new_defaults
from ddbackdoor.mappings import with_overrides
from ddbackdoor.resolve import build_config
from ddbackdoor.sweeps import spec

MEDIUM = {"profile": "medium", "poison": {"pattern": "checkerboard", "trigger_size": 4}}


def start(tmp_path, seed: int, **overrides):
    """The run's synthetic start (after the attack prepared the pool), its rows in the pool, the
    distiller's generator state after it, and the rows the attack poisoned."""
    config = build_config(with_overrides(MEDIUM, {"seed": seed, **overrides}))
    run = Experiment(config, tmp_path / "unused", progress=False)
    run.setup()
    run.attack.prepare(run.pool)
    images, _ = init_synthetic(run.pool, config.ipc, config.dc.init, run.generator)
    flat = run.pool.images.flatten(1)
    rows = torch.cdist(images.flatten(1), flat).argmin(1)  # each start image's row in the pool
    assert torch.equal(flat[rows], images.flatten(1))
    return rows.view(10, config.ipc), run.generator.get_state(), set(run.attack.poison_index.tolist())


@pytest.mark.parametrize("seed", [0, 4])
def test_an_attacked_run_starts_from_the_clean_runs_images(tmp_path, seed):
    clean, clean_state, _ = start(tmp_path, seed, attack="none")
    naive, naive_state, poisoned = start(tmp_path, seed, attack="naive")
    for c in range(1, 10):  # the target class may gain poisoned rows at random
        kept = set(clean[c].tolist()) - poisoned
        assert kept <= set(naive[c].tolist()), c
        assert len(kept) >= 9, c  # at 1% an attack takes at most a start image or two
    assert torch.equal(clean_state, naive_state)  # the distiller's stream goes on as the clean run's
    seeded, seeded_state, _ = start(tmp_path, seed, attack="seeded")
    assert torch.equal(seeded[1:], naive[1:]) and torch.equal(seeded_state, clean_state)
    # what it was before: the attack drew first and the classes start elsewhere
    unpaired, unpaired_state, _ = start(tmp_path, seed, attack="naive", paired=False)
    shared = sum(len(set(clean[c].tolist()) & set(unpaired[c].tolist())) for c in range(10))
    assert shared < 5 and not torch.equal(unpaired_state, clean_state)


def test_a_clean_start_is_drawn_as_before():
    """A pool no attack relabelled: `paired_start` picks `real_init`'s rows, in its order."""
    labels = torch.arange(3).repeat_interleave(40)
    pool = RealPool(torch.arange(120.0).view(-1, 1, 1, 1), labels, 3, paired=True)
    old, _ = init_synthetic(RealPool(pool.images, labels, 3), 7, "real", torch.Generator().manual_seed(5))
    new = paired_start(pool, 7, torch.Generator().manual_seed(5))
    assert torch.equal(old, new)


@pytest.mark.parametrize("ipc", [1, 5])
def test_rows_an_attack_moved_compete_for_a_start_as_the_class_own_do(ipc):
    """Rows relabelled into a class start as often as its own rows (ipc of its 35), rows taken
    away never, and the other rows of their class as often as before (ipc of 28). With one slot
    a moved row ranked by its place alone, against rows that fill one place each, would start at
    half the rate (0.5/30 instead of 1/35)."""
    labels = torch.arange(3).repeat_interleave(30)
    moved = torch.tensor([35, 40, 65, 70, 75])  # of classes 1 and 2, relabelled to class 0
    counts = torch.zeros(3, 90)  # how often each row starts class c
    draws = 2000
    for seed in range(draws):
        pool = RealPool(torch.arange(90.0).view(-1, 1, 1, 1), labels.clone(), 3, paired=True)
        pool.labels[moved] = 0
        pool.reindex()
        rows = paired_start(pool, ipc, torch.Generator().manual_seed(seed)).view(3, ipc).long()
        for c in range(3):
            counts[c, rows[c]] += 1
    share = counts / draws
    tolerance = 0.15 * ipc / 35  # about 4 standard errors of the moved rows' mean share
    assert share[0, moved].mean() == pytest.approx(ipc / 35, abs=tolerance)
    assert share[0, :30].mean() == pytest.approx(ipc / 35, abs=tolerance / 2)
    assert share[1:, moved].sum() == 0  # taken away from their classes
    rest = [r for r in range(30, 60) if r not in (35, 40)]
    assert share[1, rest].mean() == pytest.approx(ipc / 28, abs=tolerance / 2)


def test_a_clean_run_draws_the_same_either_way(tmp_path):
    """`paired` changes nothing for attack=none (a start from real images included), so clean
    runs keep their results, their run ids and their resume."""
    runs = {}
    for paired in (True, False):
        config = build_config({"profile": "smoke"}, ["attack=none", "dc.init=real", f"paired={paired}"])
        out = tmp_path / str(paired)
        run_experiment(config, out, progress=False)
        runs[paired] = config, load_tensors(out / "synthetic.safetensors")[0]
    assert all(torch.equal(runs[True][1][k], runs[False][1][k]) for k in runs[True][1])
    assert spec.config_hash(runs[True][0]) == spec.config_hash(runs[False][0])
    old = runs[False][0].model_dump(mode="json")
    old.pop("paired")
    assert not config_differences(with_new_defaults(old), runs[True][0].model_dump(mode="json"))


def test_an_attacked_run_from_before_reads_as_unpaired(monkeypatch):
    """A config.yaml written before `paired` existed is an unpaired run: it keeps its run id and
    resumes as such, and refuses to resume as a paired one."""
    paired = build_config({"profile": "smoke", "attack": "naive"})
    unpaired = build_config({"profile": "smoke", "attack": "naive", "paired": False})
    old = unpaired.model_dump(mode="json")
    old.pop("paired")
    assert with_new_defaults(old)["paired"] is False
    assert config_differences(with_new_defaults(old), paired.model_dump(mode="json")) == [
        "paired (False there, True now)"
    ]
    assert spec.config_hash(paired) != spec.config_hash(unpaired)
    now = spec.config_hash(unpaired)
    real_dump = spec.ExperimentConfig.model_dump

    def before_the_key(self, **kwargs):
        return {k: v for k, v in real_dump(self, **kwargs).items() if k != "paired"}

    monkeypatch.setattr(spec.ExperimentConfig, "model_dump", before_the_key)
    assert spec.config_hash(unpaired) == now  # the id it had before the key existed


def test_an_attacks_own_stream_resumes_where_it_stopped(tmp_path, monkeypatch):
    """TARGETPATCH draws from its stream at every update; a run stopped after iteration 2 and
    resumed ends bit for bit as the uninterrupted one, so the stream's state is checkpointed."""
    args = ["attack=target_patch", "iterations=4", "checkpoint.every=1", "threads=1"]
    config = build_config({"profile": "smoke"}, args)
    whole = tmp_path / "whole"
    run_experiment(config, whole, progress=False)
    step = DCDistiller.step

    def stop_at_three(self, iteration, *rest):
        if iteration == 3:
            raise KeyboardInterrupt
        return step(self, iteration, *rest)

    monkeypatch.setattr(DCDistiller, "step", stop_at_three)
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, out, progress=False)
    monkeypatch.setattr(DCDistiller, "step", step)
    metrics = run_experiment(config, out, progress=False)
    assert metrics["resumed_from"] == 2
    ours, theirs = (load_tensors(d / "synthetic.safetensors")[0] for d in (out, whole))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    expected = json.loads((whole / "metrics.json").read_text())
    assert metrics["asr"]["values"] == expected["asr"]["values"]


def test_defenses_redraw_the_poison_set_an_earlier_run_used(tmp_path):
    """A finished run from before `paired` (its config.yaml lacks the key) is read as unpaired, so
    the data-level defenses inspect the rows it poisoned, not those a paired run would."""
    config = build_config({"profile": "smoke"}, ["attack=naive", "iterations=1", "paired=false"])
    out = tmp_path / "old"
    run_experiment(config, out, progress=False)
    written = yaml.safe_load((out / "config.yaml").read_text())
    written.pop("paired")
    (out / "config.yaml").write_text(yaml.safe_dump(written))
    run = load_run(out)
    assert run.config.paired is False
    original = Experiment(config, tmp_path / "unused", progress=False)
    original.setup()
    original.attack.prepare(original.pool)
    train, _ = load_dataset(config.dataset, None, config.data.image_size, False)
    _, poisoned = poisoned_pool(run, train, torch.device("cpu"))
    assert torch.equal(torch.nonzero(poisoned).flatten(), original.attack.poison_index.sort().values)
