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


def test_span_and_take_read_across_shard_boundaries(shards):
    paths, x = shards
    reader = VectorShards(paths)
    np.testing.assert_array_equal(reader.span(1100, 2000), x[1100:2000])  # three shards
    np.testing.assert_array_equal(reader.span(5, 5), x[5:5])
    dense = np.array([1150, 1151, 1153, 1199, 1200, 1250])  # sorted, dense: one read of the span
    sparse = np.array([2999, 0, 1900])  # any order: one read per row
    np.testing.assert_array_equal(reader.take(dense), x[dense])
    np.testing.assert_array_equal(reader.take(sparse), x[sparse])
    with pytest.raises(IndexError):
        reader.span(2990, 3001)


@pytest.mark.parametrize("factory", ["IVF16,PQ8x4np", "IVF8,Flat", "Flat"])
def test_dff_index_builds_streamed_from_the_vectors_file_give_the_same_index(tmp_path, factory):
    """`build_faiss_index` past the streaming threshold (forced here) reads its sample and its
    chunks with pread instead of through the memory map: the index is the same, byte for byte."""
    import faiss

    from indexer.faiss_index import build_faiss_index

    rng = np.random.default_rng(1)
    path = tmp_path / "vectors.npy"
    vectors = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(3000, 32))  # as build writes it
    ids = np.sort(rng.choice(3000, 2600, replace=False))  # skipped images: rows without a vector
    x = rng.standard_normal((len(ids), 32)).astype(np.float32)
    vectors[ids] = x / np.linalg.norm(x, axis=1, keepdims=True)  # not flushed: the streamed path must see them
    built = {
        stream: faiss.serialize_index(build_faiss_index(vectors, ids, factory, train_max=1000, chunk=700, stream=stream))
        for stream in (False, True)
    }
    assert built[True].tobytes() == built[False].tobytes()
    assert faiss.deserialize_index(built[True]).ntotal == len(ids)
    # a small file stays on the memory-mapped path by default; a plain array cannot be streamed
    reread = np.load(path, mmap_mode="r")
    assert faiss.serialize_index(build_faiss_index(reread, ids, factory, train_max=1000, chunk=700)).tobytes() == built[False].tobytes()
    with pytest.raises(ValueError, match="memory-mapped"):
        build_faiss_index(np.asarray(reread), ids, factory, stream=True)

