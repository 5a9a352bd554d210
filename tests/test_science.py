"""The paper's claims on the bundled data with the `quick` profile (runs in CI, several minutes).

This is the same job as `make demo`. DOORPING must reach ASR >= 0.9 while its
CTA stays within 5 points of clean DC, and clean DC must not map the trigger
to the target (ASR <= 0.15). The paper's DOORPING keeps its trigger in
normalised space without clipping; we run it that way (`doorping_unclipped`)
and with a trigger restricted to valid pixels (`doorping`, our default). The
second does not reach the target at this scale: that is a finding, kept
visible here as an expected failure and explained in the README.
"""

import json

import pytest
import yaml

from ddbackdoor.demo import run_demo

pytestmark = pytest.mark.science


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    summary = run_demo(out, progress=False)
    assert json.loads((out / "summary.json").read_text()).keys() == summary.keys()
    return out, summary


def test_doorping_as_the_authors_ran_it_reaches_high_asr(demo):
    _, summary = demo
    assert summary["doorping_unclipped"]["asr"]["mean"] >= 0.9, summary["doorping_unclipped"]["asr"]


@pytest.mark.parametrize("run", ["doorping", "doorping_unclipped"])
def test_doorping_keeps_clean_accuracy(demo, run):
    _, summary = demo
    assert summary[run]["cta"]["mean"] >= summary["clean"]["cta"]["mean"] - 0.05


def test_clean_distillation_is_not_backdoored(demo):
    _, summary = demo
    assert summary["clean"]["asr"]["mean"] <= 0.15, summary["clean"]["asr"]


@pytest.mark.xfail(
    strict=False, reason="finding: a trigger limited to valid pixels stays near clean ASR at quick scale"
)
def test_doorping_with_a_valid_pixel_trigger_reaches_high_asr(demo):
    _, summary = demo
    assert summary["doorping"]["asr"]["mean"] >= 0.9, summary["doorping"]["asr"]


def test_quick_profile_keeps_the_papers_attack_settings(demo):
    out, summary = demo
    for run in summary:
        config = yaml.safe_load((out / run / "config.yaml").read_text())
        assert config["profile"] == "quick"
        assert config["poison"] | {"clip": None} == {
            "portion": 0.01,
            "trigger_size": 2,
            "target": 0,
            "clip": None,
        }
        assert (config["doorping"]["layer"], config["doorping"]["topk"], config["doorping"]["alpha"]) == (
            -2,
            1,
            10.0,
        )
        assert (config["doorping"]["max_steps"], config["doorping"]["stop_loss"]) == (1000, 0.5)
    assert summary["doorping"]["attack"]["poisoned"] == 60  # floor(0.01 * 6000)
