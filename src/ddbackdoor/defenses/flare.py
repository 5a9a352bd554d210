"""FLARE (Hou, Luo, Hua et al., "Towards Universal Dataset Purification against Backdoor Attacks",
TIFS 2025): poisoned samples are abnormal in some hidden layer, not always the last.

FLARE describes each sample by how unlikely its activations are in every hidden layer: per layer,
the minimum over channels and positions of the activation's log-likelihood under that channel's
Gaussian (the statistics a BatchNorm layer keeps). Benign samples of every class share one dense
region of that space; a poisoned group, abnormal in some layer, forms a cluster of its own. It
clusters the vectors with HDBSCAN, keeps the largest cluster and the unclustered points as benign and
flags every other cluster. When the benign samples do not form one stable cluster with all layers,
it leaves out the last layer and tries again (a backdoor's abnormality can be hidden in the deepest
layers, where all samples look alike).

Read in the authors' release in BackdoorBox (core/defenses/FLARE.py), written anew; what differs:

- Statistics: the release reads the running mean and variance of each BatchNorm2d layer of a
  model trained on the screened data. Our networks need no BatchNorm (the NDSS ConvNet has instance
  norm or none), so each layer's per-channel mean and variance are measured over the screened set
  itself, in one pass: what those running statistics estimate. The layers are the outputs of every
  convolution and every hidden Linear layer (where a BatchNorm would sit), the classifier excluded.
- Reduction: the release maps the vectors to 2-D with UMAP (40 neighbours, min_dist 0) before
  HDBSCAN. Here the vectors have one entry per layer (4 for the ConvNet), already low-dimensional;
  they are standardised per layer and clustered directly, which also keeps umap-learn (numba,
  host-compiled kernels) out of the dependencies.
- The cut: HDBSCAN's hierarchy (density_tree.py) walked as the release walks it (from the largest
  cluster below the root's first split, down the largest branch, `depth` 3, to the first cluster
  that persists more than `xi` 0.02 in density before it splits), but cut just below that stable
  cluster's birth, where the release cuts just above its next split: without UMAP's compaction
  that deeper cut leaves most of a separated group unclustered, and unclustered points are kept.
- Cluster size: the release fixes min_cluster_size at 100 (0.2% of CIFAR-10's 50,000); here it is
  that share of the screened set, at least `min_cluster_floor`.

The model is the one the runner hands every data-level defense: a victim trained on the run's
synthetic set (what a receiver of the set would train).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import Field
from torch import nn

from .base import Defense, DefenseData, LabelledImages, Options, last_linear, precision_recall
from .density_tree import components, single_linkage, stable_cut

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


class FlareOptions(Options):
    min_cluster_share: float = Field(0.002, gt=0, le=0.5)  # the release's 100 of 50,000
    min_cluster_floor: int = Field(5, ge=2)
    xi: float = Field(0.02, gt=0)  # the release's stability threshold, in density (1 / distance)
    depth: int = Field(3, ge=1)  # clusters examined down the largest branch (the release's d)
    batch: int = Field(256, ge=1)


def hidden_layers(net: nn.Module) -> list[nn.Module]:
    """Every convolution and every Linear layer but the last (the classifier), in forward order."""
    classifier = last_linear(net)
    return [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not classifier]


@torch.inference_mode()
def layer_outputs(net: nn.Module, layers: list[nn.Module], images: torch.Tensor) -> list[torch.Tensor]:
    """Each layer's output for `images`, as [N, C, positions] (a Linear layer's as one position)."""
    store: list[torch.Tensor] = []
    handles = [layer.register_forward_hook(lambda _m, _i, out: store.append(out)) for layer in layers]
    try:
        net(images)
    finally:
        for handle in handles:
            handle.remove()
    return [out.reshape(out.shape[0], out.shape[1], -1).double() for out in store]


def channel_statistics(net: nn.Module, layers: list[nn.Module], images: torch.Tensor, batch: int):
    """Per layer, each channel's mean and standard deviation over every image and position."""
    sums: list[torch.Tensor | None] = [None] * len(layers)
    squares: list[torch.Tensor | None] = [None] * len(layers)
    count = [0] * len(layers)
    for start in range(0, images.shape[0], batch):
        for k, out in enumerate(layer_outputs(net, layers, images[start : start + batch])):
            s, q = out.sum(dim=(0, 2)), (out**2).sum(dim=(0, 2))
            sums[k] = s if sums[k] is None else sums[k] + s
            squares[k] = q if squares[k] is None else squares[k] + q
            count[k] += out.shape[0] * out.shape[2]
    stats = []
    for s, q, n in zip(sums, squares, count, strict=True):
        mean = s / n
        var = (q / n - mean**2).clamp_min(0)
        stats.append((mean, (var + 1e-5).sqrt()))  # BatchNorm's epsilon
    return stats


def likelihood_features(net: nn.Module, images: torch.Tensor, batch: int) -> np.ndarray:
    """[N, layers]: per layer, the minimum log-likelihood of the sample's activations under each
    channel's Gaussian (FLARE's description of a sample)."""
    net.eval()
    layers = hidden_layers(net)
    stats = channel_statistics(net, layers, images, batch)
    rows = []
    for start in range(0, images.shape[0], batch):
        outs = layer_outputs(net, layers, images[start : start + batch])
        per_layer = []
        for out, (mean, std) in zip(outs, stats, strict=True):
            z = (out - mean.view(1, -1, 1)) / std.view(1, -1, 1)
            logp = -0.5 * z**2 - std.log().view(1, -1, 1) - HALF_LOG_TWO_PI
            per_layer.append(logp.flatten(1).amin(1))
        rows.append(torch.stack(per_layer, dim=1))
    return torch.cat(rows).cpu().numpy()


def standardised(features: np.ndarray) -> np.ndarray:
    spread = features.std(axis=0)
    return (features - features.mean(axis=0)) / np.where(spread > 0, spread, 1.0)


def screen(features: np.ndarray, opts: FlareOptions) -> tuple[np.ndarray, dict]:
    """Flagged rows and the report: all layers first, then one fewer at a time, until the hierarchy
    has a stable benign cluster; flagged = every cluster at that cut but the largest (points in
    groups smaller than the minimum cluster size are kept, as the release keeps HDBSCAN's noise)."""
    rows = features.shape[0]
    min_size = max(opts.min_cluster_floor, math.ceil(opts.min_cluster_share * rows))
    report = {"min_cluster_size": min_size, "layers": features.shape[1], "layers_used": 0, "clusters": 0}
    flags = np.zeros(rows, dtype=bool)
    if rows < 2 * min_size:
        return flags, {**report, "note": f"too few samples ({rows}) for two clusters of {min_size}"}
    for used in range(features.shape[1], 0, -1):
        linkage = single_linkage(standardised(features[:, :used]), min_size)
        cut = stable_cut(linkage, min_size, opts.xi, opts.depth)
        if cut is None:
            continue
        labels = components(linkage, cut, min_size)
        sizes = np.bincount(labels[labels >= 0])
        report.update(
            layers_used=used,
            clusters=len(sizes),
            cluster_sizes=[int(s) for s in sizes],
            unclustered=int((labels < 0).sum()),
            cut_distance=cut,
            _labels=labels,
        )
        return labels >= 1, report
    return flags, {**report, "note": "no layer count gave a stable benign cluster"}


def screen_images(model: nn.Module, images: LabelledImages, opts: FlareOptions, num_classes: int) -> dict:
    features = likelihood_features(model, images.images, opts.batch)
    flags, report = screen(features, opts)
    labels = report.pop("_labels", None)
    labels_of = images.labels.cpu().numpy()
    if labels is not None and images.poison is not None:  # how pure the clusters are (diagnostic)
        truth = images.poison.cpu().numpy()
        report["poison_per_cluster"] = [int(truth[labels == k].sum()) for k in range(int(labels.max()) + 1)]
    flagged_classes = np.bincount(labels_of[flags], minlength=num_classes)
    return {
        "size": len(images),
        "flagged": int(flags.sum()),
        "flagged_indices": [int(i) for i in np.flatnonzero(flags)],
        "flagged_per_class": [int(n) for n in flagged_classes],
        **precision_recall(torch.from_numpy(flags), None if images.poison is None else images.poison.cpu()),
        "verdict": "flagged" if flags.any() else "not flagged",
        **report,
    }


def run(model: nn.Module, data: DefenseData, opts: FlareOptions, generator: torch.Generator) -> dict:
    """Screen every data set the runner hands over (the poisoned real set, the synthetic set)."""
    return {
        "sets": {
            name: screen_images(model, images, opts, data.num_classes)
            for name, images in data.inspect.items()
        }
    }


DEFENSE = Defense(
    "flare",
    "data",
    FlareOptions,
    run,
    description="FLARE (Hou et al. 2025): clusters per-layer activation likelihoods; all but the largest out",
)
