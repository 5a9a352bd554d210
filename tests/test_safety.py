"""Property tests (hypothesis): bad input of any shape gives exit status 2 and one line, never a
traceback, and never touches earlier results.

Case counts are fixed by `settings(max_examples=...)` below; docs/safety.md quotes their sum.
"""

import hashlib
import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ddbackdoor.artifacts import load_tensors, save_tensors
from ddbackdoor.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ddbackdoor.cli import main
from ddbackdoor.config import ExperimentConfig
from ddbackdoor.config_build import read_yaml
from ddbackdoor.data import RealData
from ddbackdoor.data.loaders import check_arrays
from ddbackdoor.data.realdata import check_data
from ddbackdoor.errors import UserError
from ddbackdoor.resolve import build_config

CASES = {"overrides": 150, "yaml": 100, "artifact": 120, "checkpoint": 80, "arrays": 150, "realdata": 150}
FAST = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}

KEYS = [
    "profile",
    "seed",
    "dataset",
    "network",
    "distill",
    "attack",
    "ipc",
    "iterations",
    "device",
    "threads",
    "victims",
    "data.image_size",
    "data.root",
    "net.width",
    "net.depth",
    "net.norm",
    "net.act",
    "net.pooling",
    "net.hidden",
    "dc.init",
    "dc.lr_img",
    "dc.batch_real",
    "dc.outer_loop",
    "dc.matching",
    "poison.portion",
    "poison.trigger_size",
    "poison.target",
    "poison.clip",
    "doorping.layer",
    "doorping.topk",
    "doorping.alpha",
    "doorping.schedule",
    "eval.num_victims",
    "eval.epochs",
    "checkpoint.every",
    "nonsense",
    "dc.nonsense",
    "poison",
    "eval.victims.x",
]
VALUES = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(max_size=12),
    st.sampled_from(
        ["[]", "[1, 2", "{a: 1}", "null", "true", "~", "-1", "1e999", "!!python/object:os.system", "''"]
    ),
)
OVERRIDE = st.one_of(
    st.tuples(st.sampled_from(KEYS), VALUES).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(max_size=20),
)


def cli(args: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = main(args)
    return code, err.getvalue()


def refuse_to_run(*args, **kwargs):
    raise AssertionError("the CLI started a run that build_config rejected")


def assert_one_line_exit_2(args: list[str]) -> None:
    code, err = cli(args)
    assert code == 2, err
    assert err.startswith("ddbackdoor: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@settings(max_examples=CASES["overrides"], **FAST)
@given(st.lists(OVERRIDE, min_size=1, max_size=4))
def test_random_overrides_give_a_config_or_one_line_exit_2(tmp_path, monkeypatch, overrides):
    monkeypatch.setattr("ddbackdoor.experiment.run_experiment", refuse_to_run)
    try:
        config = build_config({}, overrides)
    except UserError as err:
        assert "\n" not in str(err)
        out = tmp_path / "never"
        assert_one_line_exit_2(["run", *overrides, "--out", str(out)])
        assert not out.exists()  # nothing is created before the config is valid
    else:
        assert isinstance(config, ExperimentConfig)


@settings(max_examples=CASES["yaml"], **FAST)
@given(
    st.one_of(
        st.text(max_size=80),
        st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4).map(yaml.safe_dump),
    )
)
def test_random_config_files_give_a_config_or_one_line_exit_2(tmp_path, monkeypatch, text):
    monkeypatch.setattr("ddbackdoor.experiment.run_experiment", refuse_to_run)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    try:
        build_config(read_yaml(path))
    except UserError:
        assert_one_line_exit_2(["run", str(path), "--out", str(tmp_path / "never")])


MUTATION = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True)),
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(0, 7)),
)


def mutate(data: bytes, mutation: tuple) -> bytes:
    position = int(mutation[1] * len(data))
    if mutation[0] == "truncate":
        return data[:position]
    damaged = bytearray(data)
    damaged[position] ^= 1 << mutation[2]
    return bytes(damaged)


@pytest.fixture(scope="module")
def result_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("results")
    gen = torch.Generator().manual_seed(0)
    save_tensors(
        folder / "synthetic.safetensors",
        {"images": torch.randn(4, 1, 8, 8, generator=gen), "labels": torch.arange(4)},
        {"space": "normalised", "ipc": 1},
    )
    checkpoint = Checkpoint(
        3,
        {"images": torch.randn(4, 1, 8, 8, generator=gen), "optimizer_img.0.momentum_buffer": torch.ones(3)},
        {"trigger_pattern": torch.rand(1, 8, 8, generator=gen)},
        {"generator": gen.get_state(), "torch": torch.get_rng_state()},
        {"history": [{"iteration": 2, "cta": 0.5}], "distiller": {"iteration": 3, "losses": [1.0, 0.5, 0.2]}},
    )
    save_checkpoint(folder, checkpoint)
    (folder / "metrics.json").write_text(json.dumps({"cta": {"mean": 0.5}}))
    return folder


@settings(max_examples=CASES["artifact"], **FAST)
@given(MUTATION)
def test_damaged_artifacts_are_refused_in_one_line(tmp_path, result_folder, mutation):
    before = folder_digest(result_folder)
    original = result_folder / "synthetic.safetensors"
    damaged = tmp_path / "synthetic.safetensors"
    damaged.write_bytes(mutate(original.read_bytes(), mutation))
    code, err = cli(["inspect", str(damaged)])
    if code == 0:  # only acceptable if what loads is exactly the original content
        ours, theirs = load_tensors(damaged), load_tensors(original)
        assert ours[1] == theirs[1] and all(torch.equal(ours[0][k], theirs[0][k]) for k in theirs[0])
    else:
        assert code == 2 and err.count("\n") == 1 and str(damaged) in err, err
    assert folder_digest(result_folder) == before


@settings(max_examples=CASES["checkpoint"], **FAST)
@given(MUTATION)
def test_damaged_checkpoints_are_refused(tmp_path, result_folder, mutation):
    original = next((result_folder / "checkpoints").iterdir())
    damaged = tmp_path / original.name
    damaged.write_bytes(mutate(original.read_bytes(), mutation))
    try:
        loaded = load_checkpoint(damaged)
    except UserError as err:
        assert "\n" not in str(err) and str(damaged) in str(err)
    else:
        reference = load_checkpoint(original)
        assert loaded.meta == reference.meta
        for group in ("distiller", "attack", "rng"):
            ours, theirs = getattr(loaded, group), getattr(reference, group)
            assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)


ARRAY_DTYPES = st.sampled_from([np.uint8, np.int64, np.float32, np.float64, np.int8, np.bool_, np.complex64])


@settings(max_examples=CASES["arrays"], **FAST)
@given(
    shape=st.lists(st.integers(0, 6), min_size=1, max_size=5),
    dtype=ARRAY_DTYPES,
    poison=st.sampled_from([None, np.nan, np.inf, -1.0, 256.0, 0.5]),
    labels=st.lists(st.integers(-3, 12), min_size=0, max_size=6),
)
def test_loader_output_is_validated(shape, dtype, poison, labels):
    images = np.zeros(shape, dtype=np.float64)
    if poison is not None and images.size:
        images.flat[0] = poison
    with np.errstate(invalid="ignore"):
        images = images.astype(dtype)
    try:
        checked, checked_labels = check_arrays(
            "toy", images, np.asarray(labels), channels=1, size=4, num_classes=10, where="test"
        )
    except UserError as err:
        assert "\n" not in str(err)
    else:
        assert checked.dtype == np.uint8 and checked.shape[1:] == (4, 4, 1) and checked.shape[0] > 0
        assert checked_labels.shape == (checked.shape[0],)
        assert checked_labels.min() >= 0 and checked_labels.max() < 10


@settings(max_examples=CASES["realdata"], **FAST)
@given(
    n=st.integers(0, 4),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16]),
    poison=st.sampled_from([None, float("nan"), float("inf"), -0.5, 1.5, 0.25]),
    label_shift=st.sampled_from([0, -1, 10, 3]),
    label_dtype=st.sampled_from([torch.int64, torch.int32]),
)
def test_dataset_tensors_are_validated(n, dtype, poison, label_shift, label_dtype):
    images = torch.full((n, 1, 4, 4), 0.5, dtype=dtype)
    if poison is not None and n:
        images[0, 0, 0, 0] = poison
    labels = (torch.arange(n) % 10 + label_shift).to(label_dtype)
    data = RealData(images, labels, 10, (0.5,), (0.5,), "toy")
    try:
        check_data(data, "train")
    except ValueError as err:
        assert "\n" not in str(err) and "toy train set" in str(err)
    else:
        assert images.dtype == torch.float32 and bool(torch.isfinite(images).all())
        assert float(images.min()) >= 0 and float(images.max()) <= 1
        assert int(labels.min()) >= 0 and int(labels.max()) < 10 and labels.dtype == torch.int64


def test_a_bad_dataset_stops_the_cli_before_any_result_is_written(tmp_path, monkeypatch):
    from ddbackdoor.data import splits

    train = RealData(
        torch.full((20, 1, 32, 32), float("nan")), torch.arange(20) % 10, 10, (0.5,), (0.5,), "toy"
    )
    monkeypatch.setattr(splits, "load_dataset", lambda *args: (train, train))
    out = tmp_path / "run"
    assert_one_line_exit_2(["run", "profile=smoke", "--out", str(out), "--quiet"])
    assert not out.exists()


def test_a_rerun_into_a_finished_run_with_damaged_metrics_keeps_everything(tmp_path):
    config = build_config({"profile": "smoke"}, ["iterations=1", "attack=naive"])
    from ddbackdoor.experiment import run_experiment

    out = tmp_path / "run"
    run_experiment(config, out, progress=False)
    (out / "metrics.json").write_text("{not json")
    before = folder_digest(out)
    assert_one_line_exit_2(
        ["run", "profile=smoke", "iterations=1", "attack=naive", "--out", str(out), "--quiet"]
    )
    assert folder_digest(out) == before
    shutil.rmtree(out)
