"""The searcher encodes a query exactly as dff-eval does (descriptors.encode, one implementation),
and its query expansion ranks as dff-eval's (descriptors.query_expansion), whatever top_k is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from searcher_fixtures import photo

from descriptors.images import decode_image
from descriptors.pipeline import METHODS
from evaluation.cache import ActivationCache, ImageRequest
from evaluation.encode import MethodEncoder, expand_queries, rank_database

SMALL_SIZE = 64  # every method's index is built and queried at this size: seconds, not minutes
QUERY_BOX = (100.0, 40.0, 420.0, 300.0)  # pixels of the 600x400 query: off-centre, partial cells


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("few-photos")
    for name in ("chelsea", "coffee", "rocket"):
        photo(name, max_side=None).save(folder / f"{name}.jpg", quality=90)  # coffee: 600x400
    return folder


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_searchers_query_vector_is_dff_evals_for_every_method_with_and_without_a_box(
    method: str, small_folder: Path, tmp_path: Path
) -> None:
    from indexer import IndexConfig, build_index
    from searcher.engine import SearchEngine

    index_dir = tmp_path / "index"
    config = IndexConfig(descriptor=method, image_size=SMALL_SIZE, k=4, workers=0)
    build_index(small_folder, index_dir, config, progress=False)
    engine = SearchEngine(index_dir)
    try:
        query = small_folder / "coffee.jpg"
        # the JPEG decodes at 1/2 for 64 px (400 / 2 >= 2 x 64): the reduced decode is exercised
        assert decode_image(query, reduce_to=SMALL_SIZE).size == (300, 200)
        cache = ActivationCache(tmp_path / "cache", engine.backbone, SMALL_SIZE, dtype="float32")
        encoder = MethodEncoder(cache, [method], k=4, progress=False)
        for box in (None, QUERY_BOX):
            served = engine.query(query.read_bytes(), box=box, top_k=3).query_vector
            evaluated = encoder.queries([ImageRequest(query)], [box])[method][0]
            np.testing.assert_allclose(served, evaluated, atol=1e-6, err_msg=f"{method}, box={box}")
        # the box changes the vector (the check above would not notice a box that is ignored)
        unboxed = engine.query(query.read_bytes(), top_k=3).query_vector
        assert not np.allclose(served, unboxed, atol=1e-3)
        # and without a box it is the vector the indexer stored for the same file
        (hit,) = engine.search(query.read_bytes(), top_k=1)
        assert Path(hit.path).name == query.name
        indexed = np.asarray(engine.index.vectors([hit.id]), dtype=np.float32)[0]
        np.testing.assert_allclose(unboxed, indexed, atol=1e-5, err_msg=f"{method}: indexer")
        assert not np.allclose(served, unboxed, atol=1e-3)
    finally:
        engine.close()


def test_query_expansion_is_not_cut_short_by_top_k(engine, photo_folder: Path) -> None:
    """top_k=1, qe=5 expands with five neighbours, like dff-eval: same first result, same score."""
    data = (photo_folder / "coffee.jpg").read_bytes()
    index = engine.index
    ids = np.asarray(index.catalog.indexed_ids(), dtype=np.int64)
    database = np.asarray(index.vectors([int(i) for i in ids]), dtype=np.float32)
    query = engine.query(data, top_k=1).query_vector[None, :]

    ranking = rank_database(query, database)
    expanded = expand_queries(query, database, ranking, 5)
    expected_order = rank_database(expanded, database)[0]
    expected_scores = (expanded @ database.T)[0]

    (hit,) = engine.search(data, top_k=1, query_expansion=5)
    assert hit.id == int(ids[expected_order[0]])
    assert hit.score == pytest.approx(float(expected_scores[expected_order[0]]), abs=1e-5)
    # and a deeper expansion than top_k is not the same as expanding with one neighbour
    expanded_by_one = expand_queries(query, database, ranking, 1)
    assert not np.isclose(hit.score, float((expanded_by_one @ database.T)[0].max()), atol=1e-5)
    ten = engine.search(data, top_k=10, query_expansion=5)
    assert [h.id for h in ten] == [int(ids[j]) for j in expected_order[:10]]
