"""STRIP: entropy of known predictions, and the BadNets sanity target."""

import math

import pytest
import torch

from ddbackdoor.defenses import strip

pytestmark = pytest.mark.usefixtures("host_independent")  # conftest: one thread, host-independent


def test_entropy_of_known_predictions_in_bits():
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0]])
    assert strip.prediction_entropy(probs).tolist() == pytest.approx([2.0, 0.0, 1.0])
    assert float(strip.prediction_entropy(torch.full((10,), 0.1))) == pytest.approx(math.log2(10))


def test_add_blend_saturates_like_the_authors_addweighted():
    x, overlay = torch.tensor([0.2, 0.9]), torch.tensor([0.3, 0.5])
    assert strip.BLENDS["add"](x, overlay).tolist() == pytest.approx([0.5, 1.0])
    assert strip.BLENDS["average"](x, overlay).tolist() == pytest.approx([0.25, 0.7])


def test_badnets_triggered_inputs_are_separated(badnets):
    model, data = badnets
    # reduced scale: 20 blends per input (paper: 100), 200 test inputs of each kind
    opts = strip.StripOptions(overlays=20, inputs=200)
    result = strip.run(model, data, opts, torch.Generator().manual_seed(0))
    print(
        f"\nstrip: AUROC {result['auroc']:.4f}, FAR {result['far']:.4f} at FRR {result['frr']:.4f} "
        f"(threshold {result['threshold']:.3f}); mean entropy {result['entropy']}"
    )
    assert result["auroc"] >= 0.9
    assert result["entropy"]["triggered_mean"] < result["entropy"]["clean_mean"]
    assert result["pictures"]["entropy_histogram"].size == (480, 300)
