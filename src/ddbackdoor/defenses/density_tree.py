"""HDBSCAN's hierarchy and FLARE's walk down it, in numpy (no dependency beyond scipy).

HDBSCAN (Campello et al. 2013) builds single linkage on mutual-reachability distances: the distance
of two points, raised to the larger of their core distances (each point's distance to its k-th
nearest neighbour, itself counted). A dense group then merges early and stays together; sparse
points join late. FLARE reads that hierarchy top-down (`stable_cut`).

The minimum spanning tree comes from Prim's algorithm over rows computed on the fly: O(N^2) time,
O(N) memory, so a 60,000-image set needs no N x N matrix.
"""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import fcluster
from scipy.spatial.distance import cdist


def core_distances(points: np.ndarray, k: int, block: int = 1024) -> np.ndarray:
    """Each point's distance to its k-th nearest neighbour, the point itself being the first."""
    k = min(k, points.shape[0])
    out = np.empty(points.shape[0])
    for start in range(0, points.shape[0], block):
        rows = cdist(points[start : start + block], points)
        out[start : start + block] = np.partition(rows, k - 1, axis=1)[:, k - 1]
    return out


def minimum_spanning_edges(points: np.ndarray, core: np.ndarray) -> np.ndarray:
    """[N-1, 3] edges (a, b, mutual-reachability distance) of Prim's tree from point 0."""
    n = points.shape[0]
    in_tree = np.zeros(n, dtype=bool)
    best = np.full(n, np.inf)
    parent = np.zeros(n, dtype=np.int64)
    edges = np.empty((n - 1, 3))
    current = 0
    for row in range(n - 1):
        in_tree[current] = True
        reach = np.maximum(np.sqrt(((points - points[current]) ** 2).sum(axis=1)), core)
        reach = np.maximum(reach, core[current])
        closer = ~in_tree & (reach < best)
        best[closer] = reach[closer]
        parent[closer] = current
        current = int(np.argmin(np.where(in_tree, np.inf, best)))
        edges[row] = (parent[current], current, best[current])
    return edges


def single_linkage(points: np.ndarray, min_samples: int) -> np.ndarray:
    """scipy's linkage matrix [N-1, 4] (a, b, distance, size) on mutual-reachability distances."""
    n = points.shape[0]
    edges = minimum_spanning_edges(points, core_distances(points, min_samples))
    edges = edges[np.argsort(edges[:, 2], kind="stable")]
    root = np.arange(2 * n - 1)  # union-find over points and merged clusters
    size = np.ones(2 * n - 1)

    def find(x: int) -> int:
        while root[x] != x:
            root[x] = root[root[x]]
            x = root[x]
        return x

    linkage = np.empty((n - 1, 4))
    for row, (a, b, distance) in enumerate(edges):
        ra, rb = find(int(a)), find(int(b))
        merged = n + row
        root[ra] = root[rb] = merged
        size[merged] = size[ra] + size[rb]
        linkage[row] = (min(ra, rb), max(ra, rb), distance, size[merged])
    return linkage


def size_of(linkage: np.ndarray, node: int) -> float:
    """Points under a node of the linkage (a point itself counts 1)."""
    n = linkage.shape[0] + 1
    return 1.0 if node < n else linkage[node - n, 3]


def larger_side(linkage: np.ndarray, node: int) -> int:
    n = linkage.shape[0] + 1
    a, b = int(linkage[node - n, 0]), int(linkage[node - n, 1])
    return a if size_of(linkage, a) >= size_of(linkage, b) else b


def next_split(linkage: np.ndarray, node: int, min_size: int) -> int | None:
    """The first merge at or below `node`, following its larger side, whose two sides both hold at
    least `min_size` points (a split in HDBSCAN's condensed tree); None if points only fall out."""
    n = linkage.shape[0] + 1
    while node >= n:
        a, b = int(linkage[node - n, 0]), int(linkage[node - n, 1])
        if min(size_of(linkage, a), size_of(linkage, b)) >= min_size:
            return node
        node = larger_side(linkage, node)
    return None


def stable_cut(linkage: np.ndarray, min_size: int, xi: float, depth: int) -> float | None:
    """FLARE's walk: from the largest cluster below the root's first split, follow the largest
    branch (at most `depth` clusters) to the first cluster that persists, in density lambda =
    1/distance, more than `xi` before it splits again (or never splits). Returns the distance at
    which to cut the hierarchy: just below that cluster's birth, so it and every group that left
    the main branch before it are whole (flare.py says why not the release's deeper cut). None:
    the root never splits, or no cluster within `depth` is stable."""
    n = linkage.shape[0] + 1
    first = next_split(linkage, 2 * n - 2, min_size)
    if first is None:
        return None
    node, born = larger_side(linkage, first), linkage[first - n, 2]
    for _ in range(depth):
        split = next_split(linkage, node, min_size)
        if split is None or 1.0 / linkage[split - n, 2] - 1.0 / born > xi:
            return float(np.nextafter(born, 0))
        node, born = larger_side(linkage, split), linkage[split - n, 2]
    return None


def components(linkage: np.ndarray, distance: float, min_size: int) -> np.ndarray:
    """Cluster id per point at a cut of the hierarchy (0 = largest); -1 for groups below `min_size`."""
    flat = fcluster(linkage, distance, criterion="distance")
    ids, counts = np.unique(flat, return_counts=True)
    large = counts >= min_size
    rank = {int(c): k for k, c in enumerate(ids[large][np.argsort(-counts[large], kind="stable")])}
    return np.array([rank.get(int(c), -1) for c in flat])
