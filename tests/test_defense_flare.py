"""FLARE: a planted abnormal group by hand, the BadNets sanity target, and the runner."""

import numpy as np
import pytest
import torch
from helpers import host_independent_kernels
from torch import nn

from ddbackdoor.defenses import DefenseData, LabelledImages, flare

pytestmark = pytest.mark.usefixtures("host_independent")  # conftest: one thread, host-independent


def planted(clean: int = 200, poison: int = 20, dims: int = 8) -> tuple[LabelledImages, nn.Module]:
    """Rows whose hidden layer is the identity: `poison` of them far out on one channel (a trigger's
    neuron), the rest Gaussian, spread over two classes."""
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(clean + poison, dims, generator=gen)
    rows[clean:, 3] += 30.0
    truth = torch.zeros(clean + poison, dtype=torch.bool)
    truth[clean:] = True
    hidden = nn.Linear(dims, dims)
    with torch.no_grad():
        hidden.weight.copy_(torch.eye(dims))
        hidden.bias.zero_()
    model = nn.Sequential(nn.Flatten(), hidden, nn.Linear(dims, 2))
    labels = torch.arange(clean + poison) % 2
    return LabelledImages(rows.view(-1, dims, 1, 1), labels, truth), model


def test_the_layers_are_every_convolution_and_hidden_linear_but_not_the_classifier():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 5), nn.Linear(5, 2))
    assert flare.hidden_layers(net) == [net[0], net[3]]


def test_the_planted_rows_are_the_least_likely_in_their_layer():
    images, model = planted()
    features = flare.likelihood_features(model, images.images, 64)
    assert features.shape == (220, 1)  # one hidden layer: one entry per row
    poison = images.poison.numpy()
    assert features[poison, 0].max() < np.median(features[~poison, 0])


@pytest.mark.parametrize("seed", range(3))
def test_a_group_that_leaves_the_benign_cluster_is_flagged_whole(seed):
    """Two layers' features: 200 benign rows in one broad blob, 20 in a tight blob far off."""
    gen = np.random.default_rng(seed)
    features = np.concatenate([gen.normal(0, 1, (200, 2)), gen.normal(6, 0.3, (20, 2))])
    flags, report = flare.screen(features, flare.FlareOptions())
    assert flags[200:].all() and not flags[:200].any()
    assert report["layers_used"] == 2 and report["cluster_sizes"] == [200, 20]


def test_the_runner_entry_screens_each_set_with_the_models_layers():
    images, model = planted()
    data = DefenseData(images, None, (0.0,), (1.0,), 2, inspect={"planted": images})
    report = flare.run(model, data, flare.FlareOptions(), torch.Generator().manual_seed(0))["sets"]["planted"]
    assert report["size"] == 220 and report["layers"] == 1 and report["poisoned"] == 20
    assert report["verdict"] == ("flagged" if report["flagged"] else "not flagged")
    assert len(report["flagged_indices"]) == report["flagged"]


def test_a_set_too_small_for_two_clusters_is_not_flagged():
    images, model = planted(clean=6, poison=2)
    data = DefenseData(images, None, (0.0,), (1.0,), 2, inspect={"small": images})
    report = flare.run(model, data, flare.FlareOptions(), torch.Generator().manual_seed(0))["sets"]["small"]
    assert report["verdict"] == "not flagged" and "too few samples" in report["note"]


@pytest.fixture(scope="module")
def badnets_report(badnets):
    model, data = badnets
    with host_independent_kernels():  # module scope: outside the per-test fixture
        return flare.run(model, data, flare.FlareOptions(), torch.Generator().manual_seed(0))["sets"][
            "poisoned_real"
        ]


def test_badnets_what_it_flags_is_poison_of_the_target_class(badnets_report):
    """Measured (3% BadNets, 180 poisoned): all 4 layers, 2 clusters at the cut (5,681 and 12 images;
    307 unclustered); the 12 flagged are all poison, all labelled the target 0: recall 0.067."""
    report = badnets_report
    print(f"\nflare: {report['cluster_sizes']} flagged {report['flagged']}, recall {report['recall']}")
    assert report["flagged"] > 0 and report["precision"] >= 0.9
    assert report["flagged_per_class"][0] == report["flagged"]


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="measured (3% BadNets, host-independent kernels): recall 0.067, precision 1.0 (12 of 180 poisoned "
    "images leave the benign cluster as a group; 65 sit in it and 103 among the 307 unclustered rows, which "
    "FLARE keeps): in this 16-channel network the poison's likelihoods overlap the benign tail",
)
def test_badnets_poison_recall_at_least_0_8(badnets_report):
    assert badnets_report["recall"] >= 0.8
