"""FAISS wrapping: training requirements, factories, search, removal (planted vectors)."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.config import AUTO_FLAT_LIMIT, resolve_faiss_factory
from indexer.errors import FaissTrainingError
from indexer.faiss_index import apply_search_params, build_faiss_index, min_training_vectors, remove_ids


def _unit_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_min_training_vectors_follows_faiss_kmeans_rule() -> None:
    assert min_training_vectors("Flat") == 0
    assert min_training_vectors("HNSW32") == 0
    assert min_training_vectors("IVF1024,Flat") == 39 * 1024
    assert min_training_vectors("IVF16,PQ8") == 39 * 256  # the PQ codebooks need more than IVF16
    assert min_training_vectors("IVF16,PQ8x4") == 39 * 16


def test_too_few_vectors_for_ivf1024_is_a_clear_error_that_suggests_a_smaller_factory() -> None:
    x = _unit_vectors(500, 32)
    with pytest.raises(FaissTrainingError, match=r"39,936 training vectors.*has 500.*Flat"):
        build_faiss_index(x, np.arange(500), "IVF1024,PQ8")


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,Flat"])
def test_each_vector_finds_itself_with_cosine_one_under_its_id(factory: str) -> None:
    x = _unit_vectors(1000, 32)
    ids = np.arange(1000, dtype=np.int64) * 3 + 7  # ids are the catalog's, not positions
    vectors_by_id = np.zeros((ids.max() + 1, 32), np.float32)
    vectors_by_id[ids] = x
    index = build_faiss_index(vectors_by_id, ids, factory)
    apply_search_params(index, "nprobe=16" if "IVF" in factory else "")
    scores, found = index.search(x[:50], 3)
    np.testing.assert_array_equal(found[:, 0], ids[:50])
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_remove_works_for_hnsw_by_rebuilding_from_kept_vectors() -> None:
    x = _unit_vectors(200, 16)
    ids = np.arange(200, dtype=np.int64)
    index = build_faiss_index(x, ids, "HNSW32")
    index = remove_ids(index, np.array([5, 6]), x, np.setdiff1d(ids, [5, 6]), "HNSW32")
    assert index.ntotal == 198
    _, found = index.search(x[[5, 7]], 1)
    assert found[0, 0] != 5 and found[1, 0] == 7


def test_auto_factory_is_flat_for_small_collections_and_the_benchmarked_one_above() -> None:
    assert resolve_faiss_factory("auto", 1000, None) == ("Flat", "")
    assert resolve_faiss_factory("auto", 1_000_000, None, 256) == ("IVF1024,PQ64,RFlat", "nprobe=16,k_factor_rf=16")
    assert resolve_faiss_factory("auto", 4_000_000, None, 1280)[0] == "IVF2048,PQ64,RFlat"
    assert resolve_faiss_factory("auto", AUTO_FLAT_LIMIT + 1, None, 100) == ("HNSW32", "efSearch=64")
    assert resolve_faiss_factory("HNSW32", 10, "efSearch=64") == ("HNSW32", "efSearch=64")


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF4,Flat"])
def test_read_faiss_ntotal_reads_the_count_from_the_header(tmp_path, factory: str) -> None:
    import faiss

    from indexer.faiss_index import read_faiss_ntotal, write_faiss_index

    x = _unit_vectors(200, 16)
    path = tmp_path / "index.faiss"
    write_faiss_index(build_faiss_index(x, np.arange(10, 190), factory, train_max=200), path)
    assert read_faiss_ntotal(path) == 180
    with open(path, "r+b") as handle:  # only the header is read: a cut file still answers
        handle.truncate(16)
    assert read_faiss_ntotal(path) == 180
    bare = faiss.IndexFlatIP(16)  # not an ID map (not written by the indexer): mmap fallback
    bare.add(x[:7])
    faiss.write_index(bare, str(path))
    assert read_faiss_ntotal(path) == 7
