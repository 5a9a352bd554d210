"""Seeing the attack: DOORPING's per-update records, re-scoring against earlier triggers, stealth."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ddbackdoor.cli import main
from ddbackdoor.errors import ArtifactError
from ddbackdoor.experiment import run_experiment
from ddbackdoor.rescore import rescore
from ddbackdoor.resolve import build_config
from ddbackdoor.stealth import ssim, stealth_metrics
from ddbackdoor.triggers import Trigger, patch_mask, white_patch

UNCLIPPED = [
    "profile=smoke",
    "attack=doorping",
    "poison.clip=false",
    "iterations=3",
    "doorping.max_steps=200",
]


@pytest.fixture(scope="module")
def unclipped_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("instruments") / "run"
    metrics = run_experiment(build_config({}, UNCLIPPED), out, progress=False)
    return out, metrics


def updates(run_dir) -> list[dict]:
    lines = (run_dir / "history.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "trigger_update"]


def test_every_trigger_update_is_recorded(unclipped_run):
    out, metrics = unclipped_run
    records = updates(out)
    assert len(records) == metrics["attack"]["trigger_updates"] == 3  # smoke: 2 outer steps, 1 update each
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert sum(r["steps"] for r in records) == metrics["attack"]["trigger_steps"]
    for r in records:
        assert r["stopped"] in ("loss", "pinned", "max_steps")
        assert len(r["units"]) == len(r["start_activation"]) == 1
        assert r["target_activation"][0] == pytest.approx(10 * max(r["start_activation"][0], 0.0))
        assert r["patch_min"] <= r["patch_max"] and 0 <= r["outside_unit_share"] <= 1
        assert torch.tensor(r["patch"]).shape == (1, 2, 2)
        if r["stopped"] == "loss":
            assert r["loss_end"] < 0.5
        if r["stopped"] == "max_steps":
            assert r["steps"] == 200
    assert records[-1]["patch_max"] == pytest.approx(metrics["stealth"]["trigger_max"])


def test_rescore_reproduces_the_final_asr_and_scores_earlier_triggers(unclipped_run, capsys):
    out, metrics = unclipped_run
    result = rescore(out)
    assert list(result["by_trigger_iteration"]) == ["1", "2", "3"]
    assert (
        result["by_trigger_iteration"]["3"]["values"] == metrics["asr"]["values"]
    )  # same victims, bit for bit
    assert result["cta"]["values"] == metrics["cta"]["values"]
    assert (out / "rescore.png").stat().st_size > 0
    assert main(["rescore", str(out), "--iterations", "1,3"]) == 0
    assert "trigger of iteration" in capsys.readouterr().out
    with pytest.raises(ArtifactError, match="no trigger recorded at iteration"):
        rescore(out, [99])


def test_rescore_needs_recorded_updates(tmp_path, capsys):
    out = tmp_path / "naive"
    run_experiment(build_config({}, ["profile=smoke", "attack=naive"]), out, progress=False)
    assert main(["rescore", str(out)]) == 2
    assert "records no trigger update" in capsys.readouterr().err


def test_stealth_of_known_triggers():
    black = torch.zeros(5, 1, 16, 16)
    white = white_patch(1, 16, 2, target=0)
    m = stealth_metrics(white, black)
    assert m["area_pixels"] == 4 and m["area_share"] == pytest.approx(4 / 256)
    assert m["linf"] == pytest.approx(1.0) and m["l2"] == pytest.approx(2.0)
    assert m["psnr_db"] == pytest.approx(10 * math.log10(256 / 4))
    assert m["trigger_outside_unit_share"] == 0 and m["stamped_outside_unit_share"] == 0
    invisible = stealth_metrics(Trigger(torch.zeros(1, 16, 16), patch_mask(16, 2), 0), black)
    assert invisible["linf"] == 0 and invisible["psnr_db"] == 100 and invisible["ssim"] == pytest.approx(1.0)
    mask = patch_mask(16, 2)
    impossible = Trigger(torch.where(mask.bool(), torch.tensor(3.0), torch.tensor(0.0)), mask, 0, clip=False)
    m = stealth_metrics(impossible, black)
    assert m["trigger_outside_unit_share"] == 1.0 and m["trigger_max"] == 3.0
    assert m["stamped_outside_unit_share"] == pytest.approx(4 / 256) and m["linf"] == pytest.approx(3.0)


def test_ssim_properties():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 32, 32, generator=gen)
    noise = torch.randn(3, 1, 32, 32, generator=gen)
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))
    slight, heavy = (x + 0.01 * noise).clamp(0, 1), (x + 0.3 * noise).clamp(0, 1)
    assert (ssim(slight, x) > ssim(heavy, x)).all()
    assert torch.allclose(ssim(heavy, x), ssim(x, heavy))


def test_metrics_json_holds_stealth(unclipped_run):
    _, metrics = unclipped_run
    for key in ("area_pixels", "linf", "l2", "psnr_db", "ssim", "trigger_outside_unit_share"):
        assert key in metrics["stealth"]


def test_target_patch_keeps_valid_pixels_and_settles(tmp_path):
    """TARGETPATCH: sigmoid-bounded patch (never outside [0, 1]), recorded updates, and no update
    after `freeze_after` of the iterations, so evaluation stamps the trigger the set learned."""
    cfg = build_config(
        {}, ["profile=smoke", "attack=target_patch", "iterations=4", "target_patch.freeze_after=0.5"]
    )
    metrics = run_experiment(cfg, tmp_path / "run", progress=False)
    records = updates(tmp_path / "run")
    assert [r["iteration"] for r in records] == [1, 2]  # frozen after iteration 2 of 4
    assert metrics["attack"]["trigger_updates"] == 2
    assert metrics["stealth"]["trigger_outside_unit_share"] == 0
    assert all(0 <= v <= 1 for r in records for v in torch.tensor(r["patch"]).flatten().tolist())
    assert records[-1]["patch_max"] == pytest.approx(metrics["stealth"]["trigger_max"])


def test_ssim_on_images_smaller_than_its_window():
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))
