"""The paper's claim on the bundled data, with the `quick` profile (runs in CI).

DOORPING must reach ASR >= 0.9 while its CTA stays within 5 points of clean
DC, and clean DC must not map the trigger to the target (ASR <= 0.15). This
is the same job as `make demo`; it takes several minutes on 2 CPU cores.
"""

import json

import pytest

from ddbackdoor.demo import run_demo


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    result = run_demo(out, progress=False)
    assert json.loads((out / "summary.json").read_text()).keys() == {"clean", "naive", "doorping"}
    return result


@pytest.mark.science
def test_doorping_reaches_high_asr(summary):
    values = summary["doorping"]["asr"]["values"]
    assert summary["doorping"]["asr"]["mean"] >= 0.9, values


@pytest.mark.science
def test_doorping_keeps_clean_accuracy(summary):
    assert summary["doorping"]["cta"]["mean"] >= summary["clean"]["cta"]["mean"] - 0.05


@pytest.mark.science
def test_clean_distillation_is_not_backdoored(summary):
    assert summary["clean"]["asr"]["mean"] <= 0.15


@pytest.mark.science
def test_quick_profile_keeps_the_papers_attack_settings(summary):
    for run in summary.values():
        assert run["attack"]["name"] in {"none", "naive", "doorping"}
    assert summary["doorping"]["attack"]["poisoned"] == 60  # floor(0.01 * 6000)
