"""SEEDED, the valid-pixel attack that meets the valid-pixel target (docs/seeded.md), at the `medium` profile
on the bundled data, seeds 1 and 2 (two medium runs, about 6 CPU-minutes each): the science check
`make test` (and so CI) runs. SEEDED at `quick` is not representative (docs/seeded.md), so these
runs are at `medium`; the quick-scale claims over three seeds are `make test-science`
(tests/test_science.py).
"""

import pytest
import yaml
from helpers import trigger_pixels, victims_of

from ddbackdoor.demo import run_seeds

# the 4x4 checkerboard at 1% (the valid-pixel budget); two seeds, so that no claim rests on one
SEEDED = ["profile=medium", "attack=seeded", "poison.pattern=checkerboard", "poison.trigger_size=4"]
SEEDED_SEEDS = (1, 2)


# clean DC's mean CTA at `medium` (runs/medium of configs/medium/proving_ground.yaml, reproducible
# mode, so the same on every host; a clean run draws the same whether or not runs are paired): the
# reference for SEEDED's, whose runs are paired with these (same starting images but the target
# class's), without two more medium runs here
MEDIUM_CLEAN_CTA = {1: 0.758, 2: 0.761}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("seeded")
    plan = {seed: ("seeded",) for seed in SEEDED_SEEDS}
    return out, run_seeds(out, plan, progress=False, runs={"seeded": SEEDED})


def seeded_cta_gap(results) -> float:
    """SEEDED's mean CTA minus clean DC's over SEEDED_SEEDS (clean: the recorded medium runs)."""
    cta = sum(results[s]["seeded"]["cta"]["mean"] for s in SEEDED_SEEDS) / len(SEEDED_SEEDS)
    return cta - sum(MEDIUM_CLEAN_CTA[s] for s in SEEDED_SEEDS) / len(SEEDED_SEEDS)


def test_seeded_backdoors_all_but_one_victim_with_valid_pixels_at_medium(runs):
    """The valid-pixel target on the seeds CI can afford: SEEDED's 4x4 checkerboard on 1% of the
    images (every stamped pixel in [0, 1]) sends all but one victim of seeds 1 and 2 to ASR >= 0.9
    (measured, paired runs: five of six, 0.759 and 0.979-0.997) and keeps mean CTA within 2 points
    of clean DC's at the same seeds (measured: 0.3 points below; before runs were paired, when an
    attacked run started from other images than the clean run of its seed, 2.4)."""
    out, results = runs
    asr = victims_of(results, "seeded")
    assert len(asr) == 3 * len(SEEDED_SEEDS) and sum(v >= 0.9 for v in asr) >= len(asr) - 1, asr
    assert seeded_cta_gap(results) >= -0.02, seeded_cta_gap(results)
    for seed in SEEDED_SEEDS:
        patch = trigger_pixels(out, seed, "seeded")
        assert patch.numel() == 16 and ((patch == 0) | (patch == 1)).all(), (seed, patch)
        config = yaml.safe_load((out / f"seed{seed}" / "seeded" / "config.yaml").read_text())
        assert (config["profile"], config["reproducible"], config["paired"]) == ("medium", True, True)
        assert config["poison"] | {"clip": None} == {
            "portion": 0.01,
            "trigger_size": 4,
            "target": 0,
            "clip": None,
            "pattern": "checkerboard",
        }
        assert results[seed]["seeded"]["attack"]["seeded"] == 7 and config["seeded"]["typical"]
