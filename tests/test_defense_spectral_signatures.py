"""Spectral Signatures: a planted outlier direction by hand, and the BadNets sanity target."""

import pytest
import torch
from torch import nn

from ddbackdoor.defenses import DefenseData, LabelledImages
from ddbackdoor.defenses import spectral_signatures as ss
from ddbackdoor.defenses.screening import worst_case_fraction

pytestmark = pytest.mark.usefixtures("host_independent")  # conftest: one thread, host-independent


def planted(clean: int = 200, poison: int = 20, dims: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian features plus `poison` rows shifted by 8 along one axis: the planted signature."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(clean + poison, dims, generator=gen)
    features[clean:, 3] += 8.0
    truth = torch.zeros(clean + poison, dtype=torch.bool)
    truth[clean:] = True
    return features, truth


def test_scores_rank_the_planted_direction_first():
    features, truth = planted()
    scores = ss.spectral_scores(features.double().numpy())
    top = torch.from_numpy(scores).argsort(descending=True)[: int(truth.sum())]
    assert truth[top].all()


def test_run_flags_exactly_the_planted_rows_given_their_fraction():
    features, truth = planted()
    # a model whose penultimate features are its input: Flatten -> Linear
    model = nn.Sequential(nn.Flatten(), nn.Linear(features.shape[1], 2))
    images = LabelledImages(
        features.view(-1, features.shape[1], 1, 1), torch.zeros(len(truth), dtype=torch.long), truth
    )
    data = DefenseData(images, None, (0.0,), (1.0,), 2, inspect={"planted": images})
    opts = ss.SpectralOptions(epsilon=20 / 220, removal_factor=1.0)
    report = ss.run(model, data, opts, torch.Generator().manual_seed(0))["sets"]["planted"]
    assert report["flagged"] == 20
    assert report["precision"] == 1.0 and report["recall"] == 1.0


def test_worst_case_fraction_of_one_class():
    # 10% of 6000 images relabelled into one of 10 classes of 600: 600 / (540 + 600)
    assert worst_case_fraction(0.1, 10) == pytest.approx(600 / 1140)


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="measured (3% BadNets: 180 poisoned among about 760 images of the target class, 24%; "
    "host-independent kernels): removing 1.5 x the worst-case poisoned fraction of every class (epsilon "
    "0.236, 2,129 of 6,000 images) gives recall 0.722, precision 0.061: the top singular direction of "
    "the target class's features separates only part of the poison in this 16-channel network",
)
def test_badnets_poison_recall_at_least_0_8(badnets):
    model, data = badnets
    result = ss.run(model, data, ss.SpectralOptions(), torch.Generator().manual_seed(0))
    report = result["sets"]["poisoned_real"]
    print(
        f"\nspectral_signatures: epsilon {result['epsilon']:.3f}, "
        f"flagged {report['flagged']}/{report['size']}, recall {report['recall']:.3f}, "
        f"precision {report['precision']:.3f}"
    )
    assert report["recall"] >= 0.8
