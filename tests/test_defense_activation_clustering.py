"""Activation Clustering: two planted blobs, and the BadNets sanity target."""

import pytest
import torch
from helpers import host_independent_kernels
from torch import nn

from ddbackdoor.defenses import DefenseData, LabelledImages
from ddbackdoor.defenses import activation_clustering as ac

pytestmark = pytest.mark.usefixtures("host_independent")  # conftest: one thread, host-independent


def blobs() -> tuple[LabelledImages, nn.Module]:
    """Class 0: 180 clean rows and 40 rows far off along every axis; class 1: one blob of 100."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(320, 12, generator=gen)
    features[180:220] += 6.0
    labels = torch.cat([torch.zeros(220, dtype=torch.long), torch.ones(100, dtype=torch.long)])
    truth = torch.zeros(320, dtype=torch.bool)
    truth[180:220] = True
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))  # penultimate features = the input
    return LabelledImages(features.view(320, 12, 1, 1), labels, truth), model


@pytest.mark.parametrize(("analysis", "reduce"), [("relative_size", "ica"), ("silhouette", "pca")])
def test_the_small_far_cluster_is_flagged_and_a_single_blob_is_not(analysis, reduce):
    images, model = blobs()
    data = DefenseData(images, None, (0.0,), (1.0,), 2, inspect={"blobs": images})
    result = ac.run(
        model, data, ac.ACOptions(analysis=analysis, reduce=reduce), torch.Generator().manual_seed(0)
    )
    report = result["sets"]["blobs"]
    assert report["suspicious_classes"] == [0]
    assert report["precision"] == 1.0 and report["recall"] == 1.0
    assert report["per_class"][0]["poison_per_cluster"] in ([0, 40], [40, 0])


@pytest.fixture(scope="module")
def badnets_result(badnets):
    model, data = badnets
    with host_independent_kernels():  # module scope: outside the per-test fixture
        return ac.run(model, data, ac.ACOptions(), torch.Generator().manual_seed(0))


def test_badnets_poison_recall_at_least_0_8(badnets_result):
    """Measured (3% BadNets: the poison about a quarter of the target class): recall 0.806, precision
    0.466; the silhouette rule flags classes 0 and 1, the target among them."""
    report = badnets_result["sets"]["poisoned_real"]
    target = report["per_class"][0]
    print(
        f"\nactivation_clustering, target class: sizes {target['cluster_sizes']}, poison per cluster "
        f"{target['poison_per_cluster']}, silhouette {target['silhouette']:.3f}"
    )
    print(
        f"\nactivation_clustering: suspicious {report['suspicious_classes']}, flagged {report['flagged']}, "
        f"recall {report['recall']}, precision {report['precision']}"
    )
    assert report["recall"] >= 0.8 and 0 in report["suspicious_classes"]
