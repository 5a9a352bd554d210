"""Every defense against a real backdoored synthetic set and against a clean one: two finished
`medium` runs made once for these tests and committed (tests/data/medium-*/: config, metrics, synthetic
set), from `ddbackdoor sweep configs/experiments/seeded_validation.yaml`, seed 30: SEEDED with its
4x4 checkerboard on 1% of the images (victims at ASR 1.000, 0.972, 0.991; CTA 0.726) and clean DC
(CTA 0.743). `ddbackdoor defend` rebuilds each run's first victim and poisoned data from the
directory alone. Each defense's verdict is asserted as measured (reproducible mode, so the same on
every host), with room to spare: a change of outcome fails the test. Cheaper options than the
defaults (Neural Cleanse 10 epochs, STRIP 200 inputs x 20 overlays) keep the module near six
minutes; with the defaults the verdicts are the same (docs/defenses.md)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ddbackdoor.defenses.runner import run_defenses

RUNS = Path(__file__).resolve().parent / "data"
OPTIONS = ["neural_cleanse.epochs=10", "strip.inputs=200", "strip.overlays=20"]


@pytest.fixture(scope="module")
def defended(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, dict]]:
    results = {}
    for name in ("seeded", "clean"):
        run = tmp_path_factory.mktemp(name) / name
        shutil.copytree(RUNS / f"medium-{name}", run)
        results[name] = run_defenses(run, "all", OPTIONS, progress=False)
    return results


def test_the_committed_runs_are_what_they_claim(defended):
    """The rebuilt first victims score as the runs recorded: backdoored and clean."""
    seeded, clean = defended["seeded"]["strip"]["victim"], defended["clean"]["strip"]["victim"]
    assert (
        seeded["metrics"]["asr"] == pytest.approx(seeded["run_metrics"]["asr"])
        and seeded["metrics"]["asr"] > 0.9
    )
    assert (
        clean["metrics"]["asr"] == pytest.approx(clean["run_metrics"]["asr"])
        and clean["metrics"]["asr"] < 0.1
    )


def test_neural_cleanse_does_not_name_seededs_target_nor_a_clean_class(defended):
    """Finding: the reversed triggers do not single out the target (its anomaly index: 1.78, under
    the threshold 2), so nothing is unlearned and the backdoor stays; on the clean set no class is
    flagged either."""
    seeded, clean = defended["seeded"]["neural_cleanse"], defended["clean"]["neural_cleanse"]
    assert 0 not in seeded["flagged_classes"] and seeded["target_anomaly_index"] < 2
    assert seeded["after"]["asr"] > 0.9
    assert clean["flagged_classes"] == []


def test_fine_pruning_removes_seededs_backdoor_and_keeps_clean_accuracy(defended):
    """Measured: 22 of 32 channels pruned, ASR 1.000 -> 0.052, CTA 0.728 -> 0.760; clean: CTA
    0.750 -> 0.764."""
    seeded, clean = defended["seeded"]["fine_pruning"], defended["clean"]["fine_pruning"]
    assert seeded["after"]["asr"] < 0.2 and seeded["after"]["cta"] >= seeded["before"]["cta"] - 0.05
    assert clean["after"]["asr"] < 0.1 and clean["after"]["cta"] >= clean["before"]["cta"] - 0.05


def test_nad_removes_seededs_backdoor_at_a_cost_in_clean_accuracy(defended):
    """Measured: ASR 1.000 -> 0.039 at CTA 0.728 -> 0.593; on the clean set it costs as much
    (0.750 -> 0.614) with nothing to remove."""
    seeded, clean = defended["seeded"]["nad"], defended["clean"]["nad"]
    assert seeded["after"]["asr"] < 0.2
    for result in (seeded, clean):
        assert result["before"]["cta"] - result["after"]["cta"] > 0.05


def test_strip_tells_seededs_triggered_inputs_from_clean_ones(defended):
    """Measured AUROC: 1.000 on the backdoored victim, 0.377 on the clean one (nothing to find)."""
    assert defended["seeded"]["strip"]["auroc"] >= 0.95
    assert defended["clean"]["strip"]["auroc"] <= 0.7


def test_spectral_signatures_misses_seededs_poison_in_the_real_data(defended):
    """Finding: recall 0.074 on the poisoned real data (54 images among 5,400); on any synthetic
    set it removes a fixed share (10 of 100), so its verdict there says nothing."""
    seeded, clean = defended["seeded"]["spectral_signatures"], defended["clean"]["spectral_signatures"]
    assert seeded["sets"]["poisoned_real"]["recall"] < 0.3
    assert seeded["sets"]["synthetic"]["flagged"] == clean["sets"]["synthetic"]["flagged"] == 10


def test_activation_clustering_finds_the_poison_in_the_real_data_not_in_the_synthetic_set(defended):
    """Measured: every poisoned real image found (recall 1.00, precision 0.33; classes 0, 1 and 9
    flagged); neither synthetic set flagged; on the clean data it flags classes 0 and 1 all the
    same (216 images, none poisoned): its verdict on real data alone does not tell the two runs
    apart."""
    seeded, clean = defended["seeded"]["activation_clustering"], defended["clean"]["activation_clustering"]
    real = seeded["sets"]["poisoned_real"]
    assert real["recall"] >= 0.9 and 0 in real["suspicious_classes"]
    for result in (seeded, clean):
        assert result["sets"]["synthetic"]["verdict"] == "not flagged"
    assert clean["sets"]["poisoned_real"]["verdict"] == "flagged"
