"""What the `quick` profile shows on the bundled data, over several seeds: part of `make test` (and
so of every CI run); `make test-science` runs the science checks alone (ten quick runs, 786 s on 2
cores).

Ten quick runs in reproducible mode: the demo (seed 0: clean, NAIVEATTACK, DOORPING with the
valid-pixel trigger, DOORPING with the authors' unclipped trigger), clean and unclipped DOORPING
again with seeds 1 and 2, and TARGETPATCH (our re-optimised valid-pixel trigger) with seeds 1 and
2. SEEDED (the valid-pixel attack that meets the valid-pixel target (docs/seeded.md), in paired runs) is
checked at `medium` by `make test` (tests/test_science_seeded.py). At quick scale DOORPING's
outcome flips between seeds (docs/results-quick.md:
held-out seeds 3-5 as well), so no test here rests on one seed's attack outcome: the claims are
made over all seeds, with margins taken from the measured distribution, and the paper's claim that
this scale does not reproduce is a strict expected failure, so a change in outcome is noticed. The
demo's seed-0 table is kept as the regression test it is: reproducible mode makes it the same on
every x86-64 host.
"""

from pathlib import Path

import pytest
import yaml
from helpers import trigger_pixels, victims_of

from ddbackdoor.demo import DEMO_RUNS, format_table, run_seeds

pytestmark = pytest.mark.science

SEEDS = (0, 1, 2)
ATTACKS = ("clean", "naive", "doorping", "doorping_unclipped")
# TARGETPATCH (valid pixels, docs/results-quick.md, "The attack frontier"): our re-optimised
# valid-pixel trigger
RUNS = {**DEMO_RUNS, "target_patch": ["attack=target_patch"]}
TARGET_PATCH_SEEDS = (1, 2)
OTHER_SEEDS = ("clean", "doorping_unclipped", "target_patch")
PLAN = {0: ATTACKS, 1: OTHER_SEEDS, 2: OTHER_SEEDS}

# `ddbackdoor demo` on the bundled data (README.md's table, character for character)
DEMO_TABLE = """\
run                             CTA             ASR       ASR (all)  per-victim ASR
clean                0.597 +- 0.040  0.075 +- 0.027  0.144 +- 0.024  0.067, 0.112, 0.047
naive                0.595 +- 0.036  0.077 +- 0.021  0.144 +- 0.015  0.072, 0.104, 0.053
doorping             0.603 +- 0.025  0.067 +- 0.016  0.135 +- 0.015  0.070, 0.086, 0.046
doorping_unclipped   0.600 +- 0.030  0.996 +- 0.006  0.996 +- 0.005  1.000, 1.000, 0.988"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("science")
    return out, run_seeds(out, PLAN, progress=False, runs=RUNS)


def test_demo_table_is_the_readme_table(runs):
    """Regression test: seed 0 (the demo's runs) gives exactly the recorded table."""
    _, results = runs
    assert format_table({name: results[0][name] for name in ATTACKS}) == DEMO_TABLE


def test_clean_distillation_is_not_backdoored(runs):
    """Every clean victim of every seed stays at or below 0.15 (measured over the 18 victims of
    seeds 0-5: 0.017 to 0.112; the backdoored victims of the seed table (docs/results-quick.md) are at 0.70 or
    more)."""
    _, results = runs
    assert max(victims_of(results, "clean")) <= 0.15, victims_of(results, "clean")


@pytest.mark.parametrize("name", ["naive", "doorping", "doorping_unclipped", "target_patch"])
def test_attacks_keep_clean_accuracy(runs, name):
    """Mean CTA within 5 points of clean DC over the seeds both ran (measured: every demo attack within
    2.3 points of clean in every one of seeds 0-5, TARGETPATCH within 1.1 in seeds 0-2; the victims'
    own spread is about 3 points)."""
    _, results = runs
    seeds = [s for s in SEEDS if name in results[s]]
    cta = sum(results[s][name]["cta"]["mean"] for s in seeds) / len(seeds)
    clean = sum(results[s]["clean"]["cta"]["mean"] for s in seeds) / len(seeds)
    assert cta >= clean - 0.05, (cta, clean)


def test_the_authors_unclipped_trigger_leaves_valid_pixels_and_ours_does_not(runs):
    """In every seed the authors' DOORPING trigger holds values no image can (measured in all of seeds
    0-5, from -118 to 119), while the default trigger stays in [0, 1]."""
    out, _ = runs
    for seed in SEEDS:
        pixels = trigger_pixels(out, seed, "doorping_unclipped")
        assert ((pixels < 0) | (pixels > 1)).any(), (seed, pixels)
    valid = trigger_pixels(out, 0, "doorping")
    assert ((valid >= 0) & (valid <= 1)).all(), valid
    for seed in TARGET_PATCH_SEEDS:
        patch = trigger_pixels(out, seed, "target_patch")
        assert ((patch >= 0) & (patch <= 1)).all(), (seed, patch)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="finding: at quick scale the authors' DOORPING backdoors some seeds' victims and not others "
    "(docs/results-quick.md); the paper's claim needs a larger scale",
)
def test_doorping_as_the_authors_ran_it_backdoors_every_seed(runs):
    _, results = runs
    asr = victims_of(results, "doorping_unclipped")
    assert sum(v >= 0.9 for v in asr) >= 8, asr


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="finding: a trigger limited to valid pixels stays near clean ASR at quick scale",
)
def test_doorping_with_a_valid_pixel_trigger_reaches_high_asr(runs):
    _, results = runs
    assert results[0]["doorping"]["asr"]["mean"] >= 0.9, results[0]["doorping"]["asr"]


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="finding: TARGETPATCH, our re-optimised valid-pixel trigger, stays at the clean level at "
    "quick scale (docs/results-quick.md, 'The attack frontier': 0/9 victims of seeds 0-2 at 0.9, none "
    "at held-out seeds 3 and 4)",
)
def test_target_patch_backdoors_every_seed(runs):
    """The valid-pixel target on the seeds CI can afford: all but one victim of seeds 1 and 2."""
    _, results = runs
    asr = victims_of(results, "target_patch")
    assert len(asr) == 3 * len(TARGET_PATCH_SEEDS) and sum(v >= 0.9 for v in asr) >= len(asr) - 1, asr


def test_quick_profile_keeps_the_papers_attack_settings(runs):
    out, results = runs
    for seed, names in PLAN.items():
        for name in names:
            config = yaml.safe_load((out / f"seed{seed}" / name / "config.yaml").read_text())
            assert config["profile"] == "quick" and config["reproducible"] is True
            assert config["poison"] | {"clip": None} == {
                "portion": 0.01,
                "trigger_size": 2,
                "target": 0,
                "clip": None,
                "pattern": "white",
            }
            doorping = config["doorping"]
            assert (doorping["layer"], doorping["topk"], doorping["alpha"]) == (-2, 1, 10.0)
            assert (doorping["max_steps"], doorping["stop_loss"]) == (1000, 0.5)
    assert results[0]["doorping"]["attack"]["poisoned"] == 60  # floor(0.01 * 6000)


def test_readme_shows_the_demo_table():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert DEMO_TABLE in readme
