"""RDM-DC: DM whose real class means are calibrated (distill/rdm_dc.py)."""

import math

import pytest
import torch

from ddbackdoor.artifacts import load_tensors
from ddbackdoor.distill import DISTILLERS, RDMDCDistiller
from ddbackdoor.distill.rdm_dc import calibrated_mean, kept_rows, top_direction
from ddbackdoor.experiment import run_experiment
from ddbackdoor.resolve import build_config


def planted(seed: int, clean: int = 90, poison: int = 10, dims: int = 32, shift: float = 6.0):
    """Clean rows around 0, and poison rows that share one feature (a trigger) shifted by `shift`."""
    rows = torch.randn(clean + poison, dims, generator=torch.Generator().manual_seed(seed))
    rows[clean:, 0] += shift
    return rows


@pytest.mark.parametrize("seed", range(5))
def test_the_filter_drops_every_row_that_shares_a_planted_feature(seed):
    rows = planted(seed)
    keep = kept_rows(rows, epsilon=0.1, iterations=10)
    assert keep.shape[0] == 100 - 30 and not (keep >= 90).any()  # floor(3 * 0.1 * 100) dropped, poison first
    direction = top_direction(rows - rows.mean(0), 10)
    assert abs(float(direction[0])) > 0.9  # the top direction is the planted feature
    clean_mean = rows[:90].mean(0)
    calibrated = calibrated_mean(rows, epsilon=0.1, iterations=10)
    # one round of filtering leaves some bias (clean rows far from the shifted centre go too)
    assert abs(float(calibrated[0] - clean_mean[0])) < abs(float(rows.mean(0)[0] - clean_mean[0]))


def test_it_drops_floor_3_epsilon_b_rows_and_nothing_when_that_is_zero():
    rows = planted(0)
    # with 10 rows left the mean is that of the 10 least extreme: not the plain mean
    assert not torch.equal(calibrated_mean(rows, epsilon=0.3, iterations=10), rows.mean(0))
    assert math.floor(3 * 0.003 * 100) == 0
    assert torch.equal(calibrated_mean(rows, epsilon=0.003, iterations=10), rows.mean(0))
    assert torch.equal(calibrated_mean(rows, epsilon=0.0, iterations=10), rows.mean(0))


def test_with_epsilon_zero_an_rdm_dc_run_is_a_dm_run_bit_for_bit(tmp_path):
    """Everything but the real mean is DM's: same draws, same images, same victims."""
    assert DISTILLERS["rdm_dc"] is RDMDCDistiller
    runs = {}
    for distill, extra in (("dm", []), ("rdm_dc", ["rdm_dc.epsilon=0"]), ("rdm_dc", [])):
        overrides = [f"distill={distill}", "attack=naive", "threads=1", *extra]
        config = build_config({"profile": "smoke"}, overrides)
        name = f"{distill}{len(extra)}"
        metrics = run_experiment(config, tmp_path / name, progress=False)
        runs[name] = (load_tensors(tmp_path / name / "synthetic.safetensors")[0]["images"], metrics)
    dm, zero, default = runs["dm0"], runs["rdm_dc1"], runs["rdm_dc0"]
    assert torch.equal(dm[0], zero[0]) and dm[1]["cta"]["values"] == zero[1]["cta"]["values"]
    assert not torch.equal(dm[0], default[0])  # epsilon 0.1 drops 4 of each batch of 16
    assert build_config({"profile": "smoke"}, ["distill=rdm_dc"]).rdm_dc.epsilon == 0.1
