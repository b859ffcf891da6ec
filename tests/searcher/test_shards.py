"""searcher.shards: S index parts answer like the whole index (no Ray needed)."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.faiss_index import apply_search_params, build_faiss_index
from searcher.shards import faiss_part, merge_top_k


def _vectors(n: int = 3000, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "IVF16,PQ8x4"])
def test_parts_merged_equal_the_whole_index(factory):
    """Exact and IVF indexes (same nprobe per part): each part scans the same lists restricted to
    its ids with the same codes, so the merged top-k is the whole index's top-k."""
    vectors = _vectors()
    ids = np.arange(len(vectors), dtype=np.int64)[::-1].copy()  # ids need not follow storage order
    whole = build_faiss_index(vectors, ids, factory)
    params = "nprobe=4" if factory.startswith("IVF") else ""
    apply_search_params(whole, params)
    parts = []
    for s in range(3):
        part = faiss_part(whole, lambda wanted: vectors[wanted], s, 3)
        apply_search_params(part, params)
        parts.append(part)
    assert sum(p.ntotal for p in parts) == whole.ntotal
    queries = _vectors(20, seed=1)
    scores, found = whole.search(queries, 10)
    merged_scores, merged = merge_top_k([p.search(queries, 10) for p in parts], 10)
    np.testing.assert_array_equal(merged, found)
    np.testing.assert_allclose(merged_scores, scores, atol=1e-5)


def test_merge_pads_and_puts_missing_last():
    a = (np.array([[0.9, -np.inf]], np.float32), np.array([[4, -1]]))
    b = (np.array([[0.95, 0.1]], np.float32), np.array([[7, 2]]))
    scores, ids = merge_top_k([a, b], 5)
    assert ids.tolist() == [[7, 4, 2, -1, -1]]
    np.testing.assert_allclose(scores[0, :3], [0.95, 0.9, 0.1])
