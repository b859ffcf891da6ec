"""indexer.large_ivf: an IVF-PQ built shard by shard, chunk by chunk, merged on disk, answers like
the same IVF-PQ built in memory, and the re-ranked search finds the exact neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.large_ivf import VectorShards, build_large_ivf, open_large_ivf, search_reranked


@pytest.fixture
def shards(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((20, 32)).astype(np.float32)
    x = centers[rng.integers(0, 20, 3000)] + 0.3 * rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    paths = []
    for s, (a, b) in enumerate([(0, 1200), (1200, 1900), (1900, 3000)]):  # uneven shards
        paths.append(tmp_path / f"v{s}.npy")
        np.save(paths[-1], x[a:b])
    return paths, x


def test_on_disk_build_equals_in_memory_and_reranks_exactly(shards, tmp_path):
    import faiss

    paths, x = shards
    stats = build_large_ivf(paths, tmp_path / "out", "IVF16,PQ8x4", train_n=1000, chunk=500)
    assert stats.vectors == 3000 and stats.blocks == 8  # 3 + 2 + 3 chunks of <= 500 rows
    assert not (tmp_path / "out" / "blocks").exists()
    index = open_large_ivf(tmp_path / "out", nprobe=4)
    assert index.ntotal == 3000

    # the same training sample, in memory, added at once: same codes, same answers
    reference = faiss.index_factory(32, "IVF16,PQ8x4", faiss.METRIC_INNER_PRODUCT)
    faiss.downcast_index(faiss.extract_index_ivf(reference)).do_polysemous_training = False
    take = np.sort(np.random.default_rng(0).choice(3000, size=1000, replace=False))
    reference.train(x[take])
    reference.add(x)
    faiss.extract_index_ivf(reference).nprobe = 4
    queries = x[:25] + 0.05
    np.testing.assert_array_equal(index.search(queries, 10)[1], reference.search(queries, 10)[1])

    exact = np.argsort(-(queries @ x.T), axis=1)[:, :10]
    _, found = search_reranked(index, VectorShards(paths), queries, 10, k_factor=30)
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
    assert recall >= 0.95


def test_vector_shards_address_rows_by_global_id(shards):
    paths, x = shards
    vs = VectorShards(paths)
    ids = np.array([2999, 0, 1200, 1199, 1900, 5])
    np.testing.assert_array_equal(vs.rows(ids), x[ids])
    assert vs.count == 3000 and vs.dim == 32
