"""SEEDED, the valid-pixel attack that meets the valid-pixel target (docs/seeded.md), at the `medium` profile
on the bundled data, seeds 1 and 2 (two medium runs, about 6 CPU-minutes each): the science check
`make test` (and so CI) runs. SEEDED at `quick` is not representative (docs/seeded.md), so these
runs are at `medium`; the quick-scale claims over three seeds are tests/test_science.py.
"""

import pytest
from helpers import victims_of

from ddbackdoor.artifacts import load_tensors
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


def test_seeded_backdoors_the_victims_with_valid_pixels_at_medium(runs):
    """The valid-pixel target on the seeds CI can afford: SEEDED's 4x4 checkerboard on 1% of the
    images (every stamped pixel in [0, 1]). Measured, paired runs: five of six victims at ASR >=
    0.9 (0.759 and 0.979-0.997; mean about 0.95), mean CTA 0.3 points below clean DC at the same
    seeds. Asserted with room: mean ASR >= 0.85, no victim under 0.5, CTA within 2 points."""
    _, results = runs
    asr = victims_of(results, "seeded")
    assert len(asr) == 3 * len(SEEDED_SEEDS), asr
    assert sum(asr) / len(asr) >= 0.85 and min(asr) >= 0.5, asr
    assert seeded_cta_gap(results) >= -0.02, seeded_cta_gap(results)


def test_the_seeded_synthetic_images_still_show_the_trigger(runs):
    """What the victims learn the trigger from: after distillation every seeded image of the
    target class still shows the checkerboard (all 16 patch pixels on the pattern's side of 0.5;
    measured at seeds 30-32 with a validation split: all 7 images of each run, mean distance from
    the pattern 0.01-0.17), and no other image of the class does (agreement 0.5, chance)."""
    out, _ = runs
    for seed in SEEDED_SEEDS:
        tensors, meta = load_tensors(out / f"seed{seed}" / "seeded" / "synthetic.safetensors")
        images = tensors["images"][tensors["labels"] == 0] * meta["std"][0] + meta["mean"][0]
        mask = tensors["trigger_mask"][0] > 0
        pattern = tensors["trigger_pattern"][0][mask] > 0.5
        agree = [float(((image[0][mask] > 0.5) == pattern).float().mean()) for image in images]
        assert all(a == 1.0 for a in agree[:7]) and all(a <= 0.75 for a in agree[7:]), (seed, agree)
