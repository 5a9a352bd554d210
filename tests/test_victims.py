import pytest
import torch
from test_evaluate import CLASSES, coded_eval_sets

from ddbackdoor import evaluate as evaluate_module
from ddbackdoor.config import EvalConfig
from ddbackdoor.distill.base import SyntheticSet
from ddbackdoor.evaluate import evaluate, fresh_victim, train_victim
from ddbackdoor.evaluate import stacked_scores as real_stacked_scores
from ddbackdoor.models import create_model
from ddbackdoor.victims import StackedVictims, can_stack, train_stacked


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: on the shared 2-core machine two OpenMP threads stall each other (conftest restores)."""
    torch.set_num_threads(1)


def make(name: str) -> torch.nn.Module:
    options = {"width": 8, "depth": 2} if name == "convnet" else {}
    return create_model(name, 1, CLASSES, 16, **options)


@pytest.fixture(scope="module")
def synthetic() -> SyntheticSet:
    gen = torch.Generator().manual_seed(0)
    # 12 images, batch 5: three batches per epoch, the last one short
    return SyntheticSet(torch.randn(12, 1, 16, 16, generator=gen), torch.arange(CLASSES).repeat(3))


def test_stacked_training_gives_each_victim_its_sequential_weights(synthetic):
    cfg = EvalConfig(num_victims=3, epochs=4, batch=5)
    seeds = [11, 12, 13]
    nets = [fresh_victim(make, "convnet", s) for s in seeds]
    assert not torch.equal(nets[0].features[0].weight, nets[1].features[0].weight)
    stacked = StackedVictims(nets)
    train_stacked(
        stacked, synthetic.images, synthetic.labels, cfg, [torch.Generator().manual_seed(s) for s in seeds]
    )
    for i, s in enumerate(seeds):
        alone = train_victim(
            fresh_victim(make, "convnet", s), synthetic, cfg, torch.Generator().manual_seed(s)
        )
        for name, p in alone.named_parameters():
            assert torch.allclose(stacked.params[name][i], p, rtol=1e-4, atol=1e-6), name
        start = fresh_victim(make, "convnet", s).features[0].weight
        assert not torch.allclose(stacked.params["features.0.weight"][i], start)  # it did train


def test_batched_evaluation_equals_sequential(synthetic, monkeypatch):
    cfg = EvalConfig(num_victims=3, epochs=4, batch=5, batched=True)
    stacked_calls = []
    monkeypatch.setattr(
        evaluate_module,
        "stacked_scores",
        lambda *args: stacked_calls.append(1) or real_stacked_scores(*args),
    )
    tests = coded_eval_sets()
    batched = evaluate(synthetic, tests, make, ["convnet", "mlp"], cfg, seed=2)
    sequential = evaluate(
        synthetic, tests, make, ["convnet", "mlp"], cfg.model_copy(update={"batched": False}), seed=2
    )
    for key in ("cta", "asr", "asr_all"):
        assert batched[key]["values"] == pytest.approx(sequential[key]["values"], abs=1e-9), key
    assert [v["seed"] for v in batched["per_victim"]] == [v["seed"] for v in sequential["per_victim"]]
    assert len(stacked_calls) == 2  # both architectures took the stacked path, and only the first run


def test_batchnorm_and_dropout_networks_are_not_stacked():
    bn = [create_model("convnet", 1, CLASSES, 16, width=8, norm="batchnorm") for _ in range(2)]
    plain = [make("convnet") for _ in range(2)]
    assert not can_stack(bn)
    assert can_stack(plain)
    assert not can_stack(plain[:1])
    assert not can_stack([plain[0], make("mlp")])
