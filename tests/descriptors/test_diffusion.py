"""Diffusion on the k-NN graph: a chain of neighbours reaches what direct similarity misses."""

from __future__ import annotations

import numpy as np

from descriptors.diffusion import diffusion_rank, knn_graph


def test_knn_graph_excludes_self_and_sorts():
    vectors = np.eye(4, dtype=np.float32) + 0.1
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    graph = knn_graph(vectors, k=2)
    assert graph.neighbours.shape == (4, 2)
    assert all(i not in graph.neighbours[i] for i in range(4))
    assert (np.diff(graph.similarities, axis=1) <= 0).all()


def test_diffusion_follows_the_manifold():
    # points on an arc: 0 -> 1 -> ... -> 9, each close to its neighbours only; a distractor 10 is
    # directly more similar to the query than the arc's far end, but not connected to the arc
    angles = np.linspace(0, np.pi / 2, 10)
    arc = np.stack([np.cos(angles), np.sin(angles), np.zeros(10)], axis=1)
    distractor = np.array([[np.cos(0.9), 0.0, np.sin(0.9)]])
    database = np.concatenate([arc, distractor]).astype(np.float32)
    query = arc[0]
    sims = database @ query
    assert sims[10] > sims[9]  # the first stage ranks the distractor above the arc's far end
    affinity = knn_graph(database, k=2).affinity(gamma=3.0)
    ranking = diffusion_rank(sims, affinity, k=2, alpha=0.99, iterations=50)
    assert sorted(ranking.tolist()) == list(range(11))
    assert ranking.tolist().index(9) < ranking.tolist().index(10)
