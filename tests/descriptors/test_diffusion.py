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


def test_merge_neighbours_keeps_the_k_best_above_the_floor_and_raises_the_floor_when_it_cuts() -> None:
    from descriptors.diffusion import merge_neighbours

    ids = np.array([4, 7, -1])
    sims = np.array([0.9, 0.5, -np.inf], np.float32)
    # a list shortened by a removal (floor 0.4: it holds every node above 0.4): 0.3 may not enter
    out = merge_neighbours(ids, sims, 0.4, np.array([9, 2]), np.array([0.3, 0.6], np.float32), 3)
    assert out[0].tolist() == [4, 2, 7] and out[2] == 0.4
    # a full list: the new node cuts the last one, and the floor becomes the new third similarity
    out = merge_neighbours(out[0], out[1], out[2], np.array([5]), np.array([0.95], np.float32), 3)
    assert out[0].tolist() == [5, 4, 2] and out[2] == np.float32(0.6)


def test_exact_neighbours_over_chunks_equals_one_brute_force_pass() -> None:
    from descriptors.diffusion import exact_neighbours

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    ids = np.arange(100, 150)
    chunks = [(ids[i : i + 7], vectors[i : i + 7]) for i in range(0, 50, 7)]
    found, sims = exact_neighbours(vectors[:5], ids[:5], chunks, 4)
    full = vectors[:5] @ vectors.T
    full[np.arange(5), np.arange(5)] = -np.inf
    np.testing.assert_array_equal(found, ids[np.argsort(-full, axis=1)[:, :4]])
    np.testing.assert_allclose(sims, np.sort(full, axis=1)[:, ::-1][:, :4], rtol=1e-5)
