"""The finished-set ("dark distillation") attack: distil from a run's synthetic set, no real image."""

import pytest
import torch

from ddbackdoor.artifacts import load_tensors
from ddbackdoor.errors import DataError
from ddbackdoor.experiment import Experiment, run_experiment
from ddbackdoor.resolve import build_config

SMOKE = ["device=cpu", "threads=1"]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dark") / "clean"
    run_experiment(build_config({"profile": "smoke"}, ["attack=none", *SMOKE]), out, progress=False)
    return out


def test_the_training_split_is_the_synthetic_set_in_pixel_space(clean_run, tmp_path):
    config = build_config({"profile": "smoke"}, [f"data.from_run={clean_run}", "attack=naive", *SMOKE])
    run = Experiment(config, tmp_path / "dark", progress=False)
    run.setup()
    tensors, meta = load_tensors(clean_run / "synthetic.safetensors")
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    assert torch.equal(run.train.images, (tensors["images"] * std + mean).clamp(0, 1))
    assert torch.equal(run.train.labels, tensors["labels"])
    assert len(run.test) == 1000  # evaluation still uses the real test split


def test_a_dark_run_returns_a_set_of_the_same_size(clean_run, tmp_path):
    overrides = [f"data.from_run={clean_run}", "attack=naive", "poison.portion=0.1", *SMOKE]
    metrics = run_experiment(build_config({"profile": "smoke"}, overrides), tmp_path / "dark", progress=False)
    source, _ = load_tensors(clean_run / "synthetic.safetensors")
    result, _ = load_tensors(tmp_path / "dark" / "synthetic.safetensors")
    assert result["images"].shape == source["images"].shape
    assert metrics["attack"]["poisoned"] == int(0.1 * source["images"].shape[0])


def test_bad_sources_are_one_line_errors(clean_run, tmp_path):
    missing = build_config({"profile": "smoke"}, [f"data.from_run={tmp_path / 'nope'}", *SMOKE])
    with pytest.raises(DataError, match="does not exist"):
        Experiment(missing, tmp_path / "a", progress=False).setup()
    other_size = build_config(
        {"profile": "smoke"}, [f"data.from_run={clean_run}", "data.image_size=28", *SMOKE]
    )
    with pytest.raises(DataError, match="same data.image_size"):
        Experiment(other_size, tmp_path / "b", progress=False).setup()


def test_a_class_short_of_ipc_images_repeats_its_images_at_init():
    from helpers import pool_of, tiny_data

    from ddbackdoor.distill.pool import init_synthetic

    data = tiny_data(n_per_class=3, classes=2)
    images, labels = init_synthetic(pool_of(data), 5, "real", torch.Generator().manual_seed(0))
    assert images.shape[0] == 10 and labels.tolist() == [0] * 5 + [1] * 5
    pool = pool_of(data)
    for c in range(2):
        real = {tuple(x.flatten().tolist()) for x in pool.images[pool.labels == c]}
        assert {tuple(x.flatten().tolist()) for x in images[labels == c]} == real  # all 3, repeated
