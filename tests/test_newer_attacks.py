"""IDM, InkDrop, SNEAKDOOR and Poisoned Distillation (with distill=rematch): each one's defining
property, at smoke scale."""

import json

import pytest
import torch

from ddbackdoor.artifacts import load_tensors
from ddbackdoor.attacks import ATTACKS
from ddbackdoor.data import load_dataset
from ddbackdoor.distill.idm import expand, mosaic
from ddbackdoor.errors import ConfigError
from ddbackdoor.experiment import run_experiment
from ddbackdoor.finished_run import load_run
from ddbackdoor.generated_trigger import GeneratedTrigger
from ddbackdoor.resolve import build_config
from ddbackdoor.run_setup import set_up


def test_expand_cuts_each_image_into_its_tiles_and_mosaic_puts_them_back():
    image = torch.zeros(1, 1, 8, 8)
    values = {(0, 0): 1.0, (1, 0): 2.0, (0, 1): 3.0, (1, 1): 4.0}  # (row block, column block)
    for (i, j), v in values.items():
        image[..., i * 4 : (i + 1) * 4, j * 4 : (j + 1) * 4] = v
    tiles, labels = expand(image, torch.tensor([7]), 2)
    assert tiles.shape == (4, 1, 8, 8) and labels.tolist() == [7] * 4
    assert [float(t.mean()) for t in tiles] == [1.0, 2.0, 3.0, 4.0]  # tile-major order
    assert all(float(t.std()) == 0 for t in tiles)  # a constant tile stays constant when upsampled
    constant = torch.arange(1.0, 5.0).view(4, 1, 1, 1).expand(4, 1, 8, 8)
    assert torch.equal(mosaic(constant, 2), image)  # four images shrunk into one, tile order kept


def test_idm_trains_its_queue_and_refuses_a_factor_that_does_not_divide_the_image(tmp_path):
    config = build_config({"profile": "smoke"}, ["distill=idm", "attack=none", "iterations=3", "threads=1"])
    parts = set_up(config, tmp_path, progress=False)
    parts.distiller.start(parts.pool, parts.generator)
    first = list(parts.distiller.queue)
    before = [[p.clone() for p in m.net.parameters()] for m in first]
    for it in range(1, 4):
        parts.distiller.step(it, parts.pool, [], parts.generator)
    queue = parts.distiller.queue
    assert len(queue) == config.idm.initial_nets + 3  # smoke: a fresh network every iteration
    assert sum(float(m.meter[1]) for m in queue) == 3 * config.idm.train_nets * config.idm.train_steps * 16
    for member, params in zip(first, before, strict=True):  # a network moves when, and only when, it trained
        moved = any(not torch.equal(a, b) for a, b in zip(params, member.net.parameters(), strict=True))
        assert moved == (float(member.meter[1]) > 0)
    assert any(float(m.meter[1]) > 0 for m in queue)
    with pytest.raises(ConfigError, match="idm.factor=3 does not divide"):
        run_experiment(build_config({"profile": "smoke"}, ["distill=idm", "idm.factor=3"]), tmp_path / "x")


@pytest.mark.parametrize("clip", [False, True])
def test_boundary_change_stays_within_its_bound_and_reloads_from_the_run(tmp_path, clip):
    overrides = ["distill=dm", "attack=inkdrop", f"inkdrop.clip={clip}", "threads=1"]
    config = build_config({"profile": "smoke"}, overrides)
    metrics = run_experiment(config, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    trigger = run.trigger
    assert isinstance(trigger, GeneratedTrigger)
    _, test = load_dataset("fashion-mnist-mini")
    images = test.images[:256]
    stamped = trigger.stamp(images)
    bound = config.inkdrop.epsilon * torch.tensor(test.std).view(1, -1, 1, 1)
    change = (stamped - images).abs()
    assert bool((change <= bound + 1e-6).all())  # the L-inf bound, per channel, in pixels
    assert float(change.amax()) > 0  # it does change the images
    outside = float(((stamped < 0) | (stamped > 1)).float().mean())
    assert (outside == 0) if clip else (outside > 0)  # the release's unclipped change leaves [0, 1]
    assert metrics["stealth"]["stamped_outside_unit_share"] == pytest.approx(outside, abs=0.05)
    assert metrics["attack"]["poisoned"] == 84  # 70% of the top 20% of a 600-image source class
    assert metrics["attack"]["source"] != config.poison.target


def test_boundary_poisons_are_source_images_in_the_target_batches(tmp_path):
    config = build_config({"profile": "smoke"}, ["distill=dm", "attack=sneakdoor", "threads=1"])
    parts = set_up(config, tmp_path, progress=False)
    attack, pool, target = parts.attack, parts.pool, config.poison.target
    attack.prepare(pool)
    source = attack.summary()["source"]
    rows = attack.poison_index.cpu()
    assert set(parts.data.train.labels[rows].tolist()) == {source}  # source-class images...
    assert set(pool.labels[rows].tolist()) == {target}  # ...put in the target class
    inside, _, share = pool.mixes[target]
    assert share == config.sneakdoor.attack_rate and torch.equal(inside.sort().values, rows.sort().values)
    draw = pool.sample(target, 40, torch.Generator().manual_seed(0))
    poisoned = pool.images[rows]
    hits = sum(bool(((poisoned - img).flatten(1).abs().amax(1) == 0).any()) for img in draw)
    assert hits == round(40 * share)  # 5% of every real batch of the target class


def finished_clean_set(tmp_path):
    config = build_config({"profile": "smoke"}, ["distill=dc", "attack=none", "threads=1"])
    run_experiment(config, tmp_path / "clean", progress=False)
    return tmp_path / "clean"


def pd_overrides(clean, *extra):
    return [
        "distill=rematch",
        "attack=poisoned_distillation",
        f"data.from_run={clean}",
        "ipc=2",
        "threads=1",
        *extra,
    ]


def test_poisoned_distillation_reads_no_real_training_image(tmp_path, monkeypatch):
    """The same result whatever the real training images are: it has only the finished set."""
    clean = finished_clean_set(tmp_path)
    config = build_config({"profile": "smoke"}, pd_overrides(clean))
    run_experiment(config, tmp_path / "a", progress=False)

    import ddbackdoor.data.splits as splits

    real_load = splits.load_dataset

    def noise_instead(*args, **kwargs):
        train, test = real_load(*args, **kwargs)
        train.images = torch.rand(train.images.shape, generator=torch.Generator().manual_seed(1))
        return train, test

    monkeypatch.setattr(splits, "load_dataset", noise_instead)
    run_experiment(config, tmp_path / "b", progress=False)
    a, _ = load_tensors(tmp_path / "a" / "synthetic.safetensors")
    b, _ = load_tensors(tmp_path / "b" / "synthetic.safetensors")
    assert torch.equal(a["images"], b["images"])
    received, _ = load_tensors(clean / "synthetic.safetensors")
    assert not torch.equal(a["images"], received["images"])  # it did re-optimise the set
    assert torch.equal(a["labels"].sort().values, received["labels"].sort().values)


def test_poisoned_distillation_trigger_authors_and_valid(tmp_path):
    clean = finished_clean_set(tmp_path)
    authors = run_experiment(
        build_config({"profile": "smoke"}, pd_overrides(clean)), tmp_path / "a", progress=False
    )
    assert authors["stealth"]["trigger_outside_unit_share"] == 1.0  # value 10 in normalised units
    assert authors["stealth"]["area_pixels"] == 1
    overrides = pd_overrides(clean, "poisoned_distillation.trigger=valid", "rematch.clip=true")
    valid = run_experiment(build_config({"profile": "smoke"}, overrides), tmp_path / "v", progress=False)
    assert valid["stealth"]["trigger_outside_unit_share"] == 0.0
    assert valid["stealth"]["area_pixels"] == 4  # the poison section's 2x2 patch
    run = load_run(tmp_path / "v")
    train, _ = load_dataset("fashion-mnist-mini")
    pixels = train.denormalize(run.synthetic.images)
    assert float(pixels.min()) >= -1e-5 and float(pixels.max()) <= 1 + 1e-5


def test_poisoned_distillation_needs_a_finished_set_and_rematch(tmp_path):
    with pytest.raises(ConfigError, match="distill=rematch and data.from_run"):
        run_experiment(build_config({"profile": "smoke"}, ["attack=poisoned_distillation"]), tmp_path / "r")
    clean = finished_clean_set(tmp_path)
    with pytest.raises(ConfigError, match="set ipc=2"):
        run_experiment(
            build_config({"profile": "smoke"}, [*pd_overrides(clean)[:-2], "ipc=3"]), tmp_path / "s"
        )
    with pytest.raises(ConfigError, match="set data.from_run"):
        run_experiment(build_config({"profile": "smoke"}, ["distill=rematch", "attack=none"]), tmp_path / "t")


def test_rematch_resumes_bitwise(tmp_path, monkeypatch):
    from helpers import stop_after_first_iteration

    clean = finished_clean_set(tmp_path)
    config = build_config({"profile": "smoke"}, pd_overrides(clean, "iterations=3", "checkpoint.every=0"))
    whole = run_experiment(config, tmp_path / "whole", progress=False)
    stop_after_first_iteration(config, tmp_path / "split", monkeypatch)
    resumed = run_experiment(config, tmp_path / "split", progress=False)
    assert resumed["resumed_from"] == 1
    ours, _ = load_tensors(tmp_path / "split" / "synthetic.safetensors")
    theirs, _ = load_tensors(tmp_path / "whole" / "synthetic.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert json.dumps(resumed["attack"]) == json.dumps(whole["attack"])


def test_the_new_attacks_are_registered_with_their_sections():
    for name in ("inkdrop", "sneakdoor", "poisoned_distillation"):
        assert name in ATTACKS and name in ATTACKS[name].sections
    config = build_config({}, [])
    assert config.inkdrop.emd == 0 and config.sneakdoor.emd == 2.25  # the releases' loss weights


def test_rematch_victims_train_as_the_received_sets_own_victims(tmp_path):
    config = build_config({"profile": "smoke"}, ["distill=dm", "attack=none", "threads=1", "iterations=1"])
    run_experiment(config, tmp_path / "dm", progress=False)
    received = build_config({"profile": "smoke"}, pd_overrides(tmp_path / "dm"))
    trainer = set_up(received, tmp_path / "r", progress=False).distiller.victim_trainer()
    assert trainer is not None and trainer.keywords["augment"] is not None  # DM's augmented victims
    plain = build_config({"profile": "smoke"}, pd_overrides(tmp_path / "dm", "rematch.victims=plain"))
    assert set_up(plain, tmp_path / "p", progress=False).distiller.victim_trainer() is None


def test_the_boundary_losses_are_the_releases_formulas():
    from ddbackdoor.attacks.boundary import contrastive_loss, emd_loss

    sure = torch.full((1, 10), -30.0)
    first, last = sure.clone(), sure.clone()
    first[0, 0], last[0, 9] = 30.0, 30.0
    assert float(emd_loss(first, first)) == 0
    assert float(emd_loss(first, last)) == pytest.approx(9.0)  # the CDFs differ by 1 at 9 classes
    # positive = the poisoned embedding itself, clean ones orthogonal to it: -1/tau + log(n), the
    # positive being left out of the denominator as in the releases
    poisoned = torch.tensor([[1.0, 0.0, 0.0]])
    clean = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    value = contrastive_loss(poisoned, poisoned, clean, tau=0.2)
    assert float(value) == pytest.approx(-1 / 0.2 + torch.log(torch.tensor(2.0)).item(), abs=1e-5)


@pytest.mark.parametrize("distill", ["dm", "idm"])
def test_boundary_attacks_start_from_the_clean_runs_images(tmp_path, distill):
    """The releases start the target class from clean images: no poison starts a synthetic image,
    and with paired streams the start is the clean run's."""
    starts, metrics = {}, {}
    for attack in ("none", "inkdrop"):
        overrides = [f"distill={distill}", f"attack={attack}", "iterations=0", "threads=1", "ipc=10"]
        config = build_config({"profile": "smoke"}, overrides)
        metrics[attack] = run_experiment(config, tmp_path / attack, progress=False)
        starts[attack], _ = load_tensors(tmp_path / attack / "synthetic.safetensors")
    source = metrics["inkdrop"]["attack"]["source"]  # it gave up its poisoned rows: other starts
    kept = starts["none"]["labels"] != source
    assert torch.equal(starts["none"]["images"][kept], starts["inkdrop"]["images"][kept])
