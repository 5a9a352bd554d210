"""What the `quick` profile shows on the bundled data, over several seeds (runs in CI: 10 quick runs
and 2 medium ones).

Ten quick runs in reproducible mode: the demo (seed 0: clean, NAIVEATTACK, DOORPING with the
valid-pixel trigger, DOORPING with the authors' unclipped trigger), clean and unclipped DOORPING
again with seeds 1 and 2, and TARGETPATCH (our re-optimised valid-pixel trigger) with seeds 1 and
2; and SEEDED (the valid-pixel attack that meets the attack issue's ASR target, not its CTA one) at
`medium`, seeds 1 and 2. At quick scale DOORPING's outcome flips between seeds (README "Results":
held-out seeds 3-5 as well), so no test here rests on one seed's attack outcome: the claims are
made over all seeds, with margins taken from the measured distribution, and the paper's claim that
this scale does not reproduce is a strict expected failure, so a change in outcome is noticed. The
demo's seed-0 table is kept as the regression test it is: reproducible mode makes it the same on
every x86-64 host.
"""

from pathlib import Path

import pytest
import torch
import yaml

from ddbackdoor.artifacts import load_tensors
from ddbackdoor.demo import DEMO_RUNS, format_table, run_seeds

pytestmark = pytest.mark.science

SEEDS = (0, 1, 2)
ATTACKS = ("clean", "naive", "doorping", "doorping_unclipped")
# SEEDED (README "SEEDED"): the valid-pixel attack that meets the attack issue's ASR target, at the
# `medium` profile with its 4x4 checkerboard at 1% (the budget); two seeds, so that no claim
# about it rests on one. Listed first: its runs are the longest (about 6 CPU-minutes each).
SEEDED = ["profile=medium", "attack=seeded", "poison.pattern=checkerboard", "poison.trigger_size=4"]
# TARGETPATCH (valid pixels, README "The frontier"): our re-optimised valid-pixel trigger
RUNS = {"seeded": SEEDED, **DEMO_RUNS, "target_patch": ["attack=target_patch"]}
TARGET_PATCH_SEEDS = SEEDED_SEEDS = (1, 2)
OTHER_SEEDS = ("seeded", "clean", "doorping_unclipped", "target_patch")
PLAN = {0: ATTACKS, 1: OTHER_SEEDS, 2: OTHER_SEEDS}
# clean DC's mean CTA at `medium` (runs/medium of configs/medium/proving_ground.yaml, reproducible
# mode, so the same on every host): the reference for SEEDED's, without two more medium runs here
MEDIUM_CLEAN_CTA = {1: 0.758, 2: 0.761}

# `ddbackdoor demo` on the bundled data (the README's table, character for character)
DEMO_TABLE = """\
run                             CTA             ASR       ASR (all)  per-victim ASR
clean                0.597 +- 0.040  0.075 +- 0.027  0.144 +- 0.024  0.067, 0.112, 0.047
naive                0.600 +- 0.047  0.064 +- 0.023  0.129 +- 0.025  0.043, 0.096, 0.052
doorping             0.592 +- 0.038  0.067 +- 0.020  0.135 +- 0.020  0.053, 0.096, 0.052
doorping_unclipped   0.594 +- 0.039  0.689 +- 0.260  0.717 +- 0.236  1.000, 0.364, 0.703"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("science")
    return out, run_seeds(out, PLAN, progress=False, runs=RUNS)


def victims(results, name: str, key: str = "asr") -> list[float]:
    return [v for seed in SEEDS if name in results[seed] for v in results[seed][name][key]["values"]]


def trigger_pixels(out, seed: int, name: str) -> torch.Tensor:
    tensors, _ = load_tensors(out / f"seed{seed}" / name / "synthetic.safetensors")
    return tensors["trigger_pattern"][tensors["trigger_mask"].expand_as(tensors["trigger_pattern"]) > 0]


def test_demo_table_is_the_readme_table(runs):
    """Regression test: seed 0 (the demo's runs) gives exactly the recorded table."""
    _, results = runs
    assert format_table({name: results[0][name] for name in ATTACKS}) == DEMO_TABLE


def test_clean_distillation_is_not_backdoored(runs):
    """Every clean victim of every seed stays at or below 0.15 (measured over the 18 victims of
    seeds 0-5: 0.017 to 0.112; the backdoored victims of the README's seed table are at 0.70 or
    more)."""
    _, results = runs
    assert max(victims(results, "clean")) <= 0.15, victims(results, "clean")


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
    reason="finding: at quick scale the authors' DOORPING backdoors some seeds' victims and not others "
    "(README 'Results'); the paper's claim needs a larger scale",
)
def test_doorping_as_the_authors_ran_it_backdoors_every_seed(runs):
    _, results = runs
    asr = victims(results, "doorping_unclipped")
    assert sum(v >= 0.9 for v in asr) >= 8, asr


@pytest.mark.xfail(
    strict=True, reason="finding: a trigger limited to valid pixels stays near clean ASR at quick scale"
)
def test_doorping_with_a_valid_pixel_trigger_reaches_high_asr(runs):
    _, results = runs
    assert results[0]["doorping"]["asr"]["mean"] >= 0.9, results[0]["doorping"]["asr"]


@pytest.mark.xfail(
    strict=True,
    reason="finding: TARGETPATCH, our re-optimised valid-pixel trigger, stays at the clean level at "
    "quick scale (README 'The frontier': 0/9 victims of seeds 0-2 at 0.9, none at held-out seeds 3 and 4)",
)
def test_target_patch_backdoors_every_seed(runs):
    """The attack issue's target on the seeds CI can afford: all but one victim of seeds 1 and 2."""
    _, results = runs
    asr = victims(results, "target_patch")
    assert len(asr) == 3 * len(TARGET_PATCH_SEEDS) and sum(v >= 0.9 for v in asr) >= len(asr) - 1, asr


def seeded_cta_gap(results) -> float:
    """SEEDED's mean CTA minus clean DC's over SEEDED_SEEDS (clean: the recorded medium runs)."""
    cta = sum(results[s]["seeded"]["cta"]["mean"] for s in SEEDED_SEEDS) / len(SEEDED_SEEDS)
    return cta - sum(MEDIUM_CLEAN_CTA[s] for s in SEEDED_SEEDS) / len(SEEDED_SEEDS)


def test_seeded_backdoors_all_but_one_victim_with_valid_pixels_at_medium(runs):
    """The attack issue's ASR target on the seeds CI can afford: SEEDED's 4x4 checkerboard on 1% of
    the images (every stamped pixel in [0, 1]) sends all but one victim of seeds 1 and 2 to ASR
    >= 0.9 (measured: five of six, 0.861 and 0.981-0.998), and keeps mean CTA within 3 points of
    clean DC's (measured: 2.4 points below; with the target class's other images started at
    random, `seeded.typical=false`, 3.6; the issue's 2 points is the strict xfail below)."""
    out, results = runs
    asr = victims(results, "seeded")
    assert len(asr) == 3 * len(SEEDED_SEEDS) and sum(v >= 0.9 for v in asr) >= len(asr) - 1, asr
    assert seeded_cta_gap(results) >= -0.03, seeded_cta_gap(results)
    for seed in SEEDED_SEEDS:
        patch = trigger_pixels(out, seed, "seeded")
        assert patch.numel() == 16 and ((patch == 0) | (patch == 1)).all(), (seed, patch)
        config = yaml.safe_load((out / f"seed{seed}" / "seeded" / "config.yaml").read_text())
        assert (config["profile"], config["reproducible"]) == ("medium", True)
        assert config["poison"] | {"clip": None} == {
            "portion": 0.01,
            "trigger_size": 4,
            "target": 0,
            "clip": None,
            "pattern": "checkerboard",
        }
        assert results[seed]["seeded"]["attack"]["seeded"] == 7 and config["seeded"]["typical"]


@pytest.mark.xfail(
    strict=True,
    reason="finding: SEEDED's backdoor costs the target class's own accuracy: mean CTA 2.4 points "
    "below clean DC at seeds 1-2 (2.04 at seeds 0-2; README 'SEEDED'), not within the issue's 2",
)
def test_seeded_keeps_clean_accuracy_within_two_points(runs):
    _, results = runs
    assert seeded_cta_gap(results) >= -0.02, seeded_cta_gap(results)


def test_quick_profile_keeps_the_papers_attack_settings(runs):
    out, results = runs
    for seed, names in PLAN.items():
        for name in set(names) - {"seeded"}:  # SEEDED runs at `medium`, checked with its own test
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
