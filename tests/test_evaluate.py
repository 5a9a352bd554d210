import pytest
import torch
from helpers import PatchReader

from ddbackdoor.config import EvalConfig
from ddbackdoor.data import RealData
from ddbackdoor.distill.base import SyntheticSet
from ddbackdoor.evaluate import EvalSets, attack_metrics, evaluate
from ddbackdoor.models import create_model
from ddbackdoor.triggers import white_patch

CLASSES, TARGET = 4, 1


def coded_test_set() -> RealData:
    """25 images per class; pixel (0, 0) encodes the class, the rest is mid-grey."""
    labels = torch.arange(CLASSES).repeat_interleave(25)
    images = torch.full((labels.numel(), 1, 16, 16), 0.5)
    images[:, 0, 0, 0] = (labels.float() + 0.5) / CLASSES
    return RealData(images, labels, CLASSES, (0.5,), (0.25,), "coded")


def coded_eval_sets() -> EvalSets:
    return EvalSets.build(coded_test_set(), white_patch(1, 16, 2, TARGET), "cpu")


def test_perfect_backdoor_scores_one_everywhere():
    net = PatchReader(TARGET, CLASSES, 0.5, 0.25)
    metrics = attack_metrics(net, coded_eval_sets())
    assert metrics == {"cta": 1.0, "asr": 1.0, "asr_all": 1.0}


def test_clean_model_asr_is_zero_but_all_images_variant_counts_the_target_class():
    net = PatchReader(TARGET, CLASSES, 0.5, 0.25)
    tests = coded_eval_sets()
    tests.triggered = tests.clean  # a model blind to the trigger sees the clean image
    metrics = attack_metrics(net, tests)
    assert metrics["cta"] == 1.0
    assert metrics["asr"] == 0.0
    assert metrics["asr_all"] == pytest.approx(1 / CLASSES)


def test_partial_backdoor_counts_by_hand():
    tests = coded_eval_sets()
    # the trigger works on the first 10 images of every class only
    keep_clean = torch.ones(len(tests.labels), dtype=torch.bool)
    for c in range(CLASSES):
        keep_clean[c * 25 : c * 25 + 10] = False
    tests.triggered = torch.where(keep_clean.view(-1, 1, 1, 1), tests.clean, tests.triggered)
    metrics = attack_metrics(PatchReader(TARGET, CLASSES, 0.5, 0.25), tests)
    # non-target images: 75, of which 30 triggered successfully
    assert metrics["asr"] == pytest.approx(30 / 75)
    # all images: 30 + all 25 target-class images
    assert metrics["asr_all"] == pytest.approx(55 / 100)


def test_evaluate_keeps_per_victim_values_and_is_reproducible():
    gen = torch.Generator().manual_seed(0)
    synthetic = SyntheticSet(torch.randn(8, 1, 16, 16, generator=gen), torch.arange(CLASSES).repeat(2))
    cfg = EvalConfig(num_victims=3, epochs=4, batch=8)

    def make(name):
        return (
            create_model(name, 1, CLASSES, 16, width=8)
            if name == "convnet"
            else create_model(name, 1, CLASSES, 16)
        )

    first = evaluate(synthetic, coded_eval_sets(), make, ["convnet", "mlp"], cfg, seed=3)
    second = evaluate(synthetic, coded_eval_sets(), make, ["convnet", "mlp"], cfg, seed=3)
    assert len(first["per_victim"]) == 6
    assert [v["network"] for v in first["per_victim"]] == ["convnet"] * 3 + ["mlp"] * 3
    assert first["cta"]["values"] == second["cta"]["values"]
    assert set(first["by_network"]) == {"convnet", "mlp"}
    assert first["cta"]["mean"] == pytest.approx(sum(first["cta"]["values"]) / 6)


def test_source_specific_asr_counts_only_the_source_class():
    from ddbackdoor.evaluate import score

    labels = torch.tensor([0, 1, 1, 2, 2, 2])
    tests = EvalSets(torch.zeros(6), torch.zeros(6), labels, target=0, source=2)
    triggered_pred = torch.tensor([0, 0, 1, 0, 0, 2])  # class 1: 1 of 2 hit, class 2: 2 of 3
    scores = score(labels.clone(), triggered_pred, tests)
    assert scores["asr"] == pytest.approx(3 / 5)
    assert scores["asr_source"] == pytest.approx(2 / 3)
    all_to_one = EvalSets(torch.zeros(6), torch.zeros(6), labels, target=0)
    assert "asr_source" not in score(labels, triggered_pred, all_to_one)


def test_a_run_with_a_source_class_reports_asr_source(tmp_path):
    from ddbackdoor.errors import ConfigError
    from ddbackdoor.experiment import run_experiment
    from ddbackdoor.resolve import build_config

    config = build_config({"profile": "smoke"}, ["attack=naive", "eval.source_class=3", "device=cpu"])
    metrics = run_experiment(config, tmp_path / "run", progress=False)
    assert len(metrics["asr_source"]["values"]) == config.eval.num_victims
    assert set(metrics["per_victim"][0]) >= {"cta", "asr", "asr_all", "asr_source"}
    assert "asr_source" in metrics["history"][-1]
    with pytest.raises(ConfigError, match="other than the target"):
        build_config({"profile": "smoke"}, ["eval.source_class=0"])
    with pytest.raises(ConfigError, match="eval.source_class"):
        build_config({"profile": "smoke"}, ["eval.source_class=10"])
