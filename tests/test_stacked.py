"""K runs stacked in one process (`ddbackdoor stack`): each run is itself, resumable either way."""

from __future__ import annotations

import json

import pytest
import torch

from ddbackdoor import reproducible
from ddbackdoor.artifacts import load_tensors
from ddbackdoor.cli import main
from ddbackdoor.distill.matching import match_distance
from ddbackdoor.errors import ConfigError, Interrupted, UserError
from ddbackdoor.experiment import run_experiment
from ddbackdoor.resolve import build_config
from ddbackdoor.stacked import RunStack, grid_cells, run_stacked, stacked_distance

# pinned: the stacked and the lone runs then differ only by the vmapped kernels' summation order
SMOKE = ["profile=smoke", "doorping.max_steps=50", "eval.epochs=5", "reproducible=true"]
CELLS = [
    ["seed=0", "attack=doorping", "poison.clip=false"],
    ["seed=1", "attack=naive"],
    ["seed=2", "attack=none"],
]


def configs(*extra: str):
    return [build_config({}, [*SMOKE, *extra, *cell]) for cell in CELLS]


def saved(run_dir) -> dict[str, torch.Tensor]:
    tensors, _ = load_tensors(run_dir / "synthetic.safetensors")
    return tensors


def test_stacked_distance_is_each_runs_match_distance():
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3, 3, 3), (4,), (10, 8)]
    syn = [torch.randn(2, *s, generator=gen) for s in shapes]
    real = [torch.randn(2, *s, generator=gen) for s in shapes]
    per_run = stacked_distance(syn, real)
    for k in range(2):
        alone = match_distance([g[k] for g in syn], [g[k] for g in real])
        torch.testing.assert_close(per_run[k], alone)


def test_stacked_runs_equal_the_same_runs_alone(tmp_path):
    """One iteration: the same synthetic set and trigger as alone, up to float rounding (the
    vmapped kernels sum in another order), and the same victims' scores."""
    cfgs = configs("iterations=1")
    alone = [run_experiment(c, tmp_path / f"alone{i}", progress=False) for i, c in enumerate(cfgs)]
    stacked = run_stacked(cfgs, [tmp_path / f"stacked{i}" for i in range(3)], progress=False)
    for i in range(3):
        a, b = saved(tmp_path / f"alone{i}"), saved(tmp_path / f"stacked{i}")
        assert a["images"].abs().max() > 0.5  # a real set, not zeros
        torch.testing.assert_close(b["images"], a["images"], atol=1e-4, rtol=0)
        torch.testing.assert_close(b["trigger_pattern"], a["trigger_pattern"], atol=1e-4, rtol=0)
        assert stacked[i]["asr"]["values"] == pytest.approx(alone[i]["asr"]["values"], abs=0.02)
        assert stacked[i]["cta"]["values"] == pytest.approx(alone[i]["cta"]["values"], abs=0.02)
    # the unclipped DOORPING trigger was re-optimised (differs from its random start) in both
    assert not torch.equal(
        saved(tmp_path / "stacked0")["trigger_pattern"], saved(tmp_path / "stacked1")["trigger_pattern"]
    )


def stop_after(monkeypatch, iteration: int) -> None:
    """Make every run of the next stack receive a stop request during `iteration`."""
    original = RunStack.after_iteration

    def after(self, it, losses):
        if it == iteration:
            for run in self.runs:
                run.stop_signal = 15
        return original(self, it, losses)

    monkeypatch.setattr(RunStack, "after_iteration", after)


def test_stopped_stack_resumes_bitwise_and_alone(tmp_path, monkeypatch):
    cfgs = configs("iterations=4")[:2]
    whole = [tmp_path / f"whole{i}" for i in range(2)]
    run_stacked(cfgs, whole, progress=False)
    parts = [tmp_path / f"part{i}" for i in range(2)]
    with monkeypatch.context() as patch:
        stop_after(patch, 2)
        with pytest.raises(Interrupted):
            run_stacked(cfgs, parts, progress=False)
    for part in parts:  # every run wrote its checkpoint before the stop was raised
        assert (part / "checkpoints" / "iter-000002.safetensors").exists()
    run_stacked(cfgs, parts, progress=False)
    for a, b in zip(whole, parts, strict=True):
        assert json.loads((b / "metrics.json").read_text())["resumed_from"] == 2
        for name, tensor in saved(a).items():
            assert torch.equal(saved(b)[name], tensor), name
    # the same checkpoint resumed by a run alone ends within rounding of the stacked run
    alone = tmp_path / "alone"
    with monkeypatch.context() as patch:
        stop_after(patch, 2)
        with pytest.raises(Interrupted):
            run_stacked(cfgs[:1], [alone], progress=False)
    run_experiment(cfgs[0], alone, progress=False)
    torch.testing.assert_close(saved(alone)["images"], saved(whole[0])["images"], atol=1e-3, rtol=0)


def test_stack_refuses_runs_that_cannot_share_a_loop(tmp_path):
    a, b = build_config({}, SMOKE), build_config({}, [*SMOKE, "ipc=3"])
    with pytest.raises(ConfigError, match="'ipc'"):
        run_stacked([a, b], [tmp_path / "a", tmp_path / "b"], progress=False)
    dsa = build_config({}, [*SMOKE, "distill=dsa"])
    with pytest.raises(ConfigError, match="DC only"):
        run_stacked([dsa], [tmp_path / "c"], progress=False)
    bn = build_config({}, [*SMOKE, "net.norm=batchnorm"])
    with pytest.raises(ConfigError, match="BatchNorm"):
        run_stacked([bn], [tmp_path / "d"], progress=False)


def test_grid_cells_cross_cells_with_axes():
    cells = grid_cells(["seed=0,1"], ["attack=none", "attack=doorping poison.clip=false"])
    assert cells == [
        ("attack-none_seed-0", ["attack=none", "seed=0"]),
        ("attack-none_seed-1", ["attack=none", "seed=1"]),
        ("attack-doorping_poison.clip-false_seed-0", ["attack=doorping", "poison.clip=false", "seed=0"]),
        ("attack-doorping_poison.clip-false_seed-1", ["attack=doorping", "poison.clip=false", "seed=1"]),
    ]
    assert grid_cells([]) == [("run", [])]
    with pytest.raises(UserError, match="key=value"):
        grid_cells(["seed"])
    with pytest.raises(UserError, match="repeat"):
        grid_cells(["seed=0,0"])


def test_stack_command(tmp_path, capsys):
    out = tmp_path / "grid"
    code = main(
        [
            "stack",
            *SMOKE,
            "iterations=1",
            "--cell",
            "attack=none",
            "--grid",
            "seed=0,1",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary) == ["attack-none_seed-0", "attack-none_seed-1"]
    printed = capsys.readouterr().out
    assert "attack-none_seed-1" in printed and "per-victim ASR" in printed
    assert main(["stack", *SMOKE, "--grid", "ipc=2,3", "--out", str(tmp_path / "bad")]) == 2
    assert "must agree on 'ipc'" in capsys.readouterr().err


def test_a_run_resumes_across_a_version_that_added_config_keys(tmp_path, monkeypatch):
    """The paper-scale evidence spans GPU loans and versions: a config.yaml without a section
    added since (here `target_patch`) is the same run, resumed, not refused."""
    import yaml

    cfgs = configs("iterations=4")[:1]
    out = [tmp_path / "run"]
    with monkeypatch.context() as patch:
        stop_after(patch, 2)
        with pytest.raises(Interrupted):
            run_stacked(cfgs, out, progress=False)
    written = yaml.safe_load((out[0] / "config.yaml").read_text())
    del written["target_patch"]
    (out[0] / "config.yaml").write_text(yaml.safe_dump(written))
    assert run_stacked(cfgs, out, progress=False)[0]["resumed_from"] == 2
    written = yaml.safe_load((out[0] / "config.yaml").read_text())
    written["ipc"] = 3  # a real difference is still refused
    (out[0] / "config.yaml").write_text(yaml.safe_dump(written))
    (out[0] / "metrics.json").unlink()
    with pytest.raises(UserError, match="ipc"):
        run_stacked(cfgs, out, progress=False)


def test_a_stack_begun_in_reproducible_mode_resumes_in_it(tmp_path):
    """The same stack command, no longer saying `reproducible`, reports the pinned runs it made."""
    outs = [tmp_path / f"run{i}" for i in range(3)]
    first = run_stacked(configs("iterations=1", "eval.num_victims=1"), outs, progress=False)
    unpinned = [build_config({}, [*SMOKE[:-1], "iterations=1", "eval.num_victims=1", *c]) for c in CELLS]
    assert not unpinned[0].reproducible
    assert run_stacked(unpinned, outs, progress=False) == first
    assert reproducible.recorded(tmp_path)  # what the CLI reads to pin before importing torch
