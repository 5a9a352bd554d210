"""Neural Cleanse: the MAD anomaly index by hand, the cost schedule, and the BadNets sanity target."""

import pytest
import torch

from ddbackdoor.defenses import neural_cleanse as nc

pytestmark = pytest.mark.usefixtures("host_independent")  # conftest: one thread, host-independent


def test_anomaly_index_on_hand_made_norms():
    norms = [2.0, 9.0, 10.0, 11.0, 12.0]
    # median 10; |x - 10| = 8, 1, 0, 1, 2 -> median 1 -> MAD = 1.4826 * 1
    assert nc.anomaly_index(norms) == pytest.approx([8 / 1.4826, 1 / 1.4826, 0.0, 1 / 1.4826, 2 / 1.4826])
    assert nc.flagged_classes(norms) == [0]


def test_only_small_norms_are_flagged():
    norms = [10.0, 9.5, 11.0, 10.5, 30.0]  # class 4 is an outlier, but on the large side
    assert nc.anomaly_index(norms)[4] > 2
    assert nc.flagged_classes(norms) == []


def test_cost_schedule_moves_up_after_successes_and_down_after_failures():
    schedule = nc.CostSchedule(nc.NeuralCleanseOptions(init_cost=1e-3, patience=2))
    schedule.update(1.0)
    assert schedule.cost == 1e-3
    schedule.update(1.0)
    assert schedule.cost == pytest.approx(1.5e-3)
    schedule.update(0.5)
    schedule.update(0.5)
    assert schedule.cost == pytest.approx(1.5e-3 / 1.5**1.5)
    assert schedule.moved_up and schedule.moved_down


def test_badnets_target_is_flagged_and_unlearned(badnets):
    model, data = badnets
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    # reduced scale: 5 epochs over the 300-image clean set (default 40)
    result = nc.run(model, data, nc.NeuralCleanseOptions(epochs=5), torch.Generator().manual_seed(0))
    print(
        "\nneural_cleanse: norms",
        [round(n, 1) for n in result["l1_norms"]],
        "anomaly index of target",
        round(result["target_anomaly_index"], 2),
        "flagged",
        result["flagged_classes"],
        "before",
        result["before"],
        "after",
        result["after"],
    )
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items()), "the model was modified"
    assert result["target_anomaly_index"] > 2
    assert data.tests.target in result["flagged_classes"]
    assert result["after"]["asr"] < 0.2
    assert result["before"]["cta"] - result["after"]["cta"] <= 0.10
    assert result["pictures"]["reversed_triggers"].size[0] > 0
