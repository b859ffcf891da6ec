"""Re-ranking by the factor rows stored in the index, in the search engine and over gRPC: the
same list as dff-eval's for the same query (box queries: the box's factors only), off with 0,
bad depths refused, indexes without rows searched as before with a note, and re-ranking that
follows adds and removes of a live engine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from searcher_fixtures import EXTRA_PHOTO, INDEXED_PHOTOS, jpeg_bytes, photo

from descriptors.images import decode_image
from descriptors.rerank import DEFAULT_DEPTH, MatchKernel, match_scores
from evaluation.cache import ActivationCache, ImageRequest
from evaluation.encode import MethodEncoder, rank_pipeline
from searcher.engine import NO_FACTOR_ROWS_NOTE, InvalidQueryError

SMALL_SIZE = 64
QUERY_BOX = (100.0, 40.0, 420.0, 300.0)  # pixels of the 600x400 coffee photo
OUTSIDE = ("brick", "colorwheel")  # queries not indexed
GRAPH_K = 3
# (re-rank depth, QE depth, expansion): all re-ranked, the top 3 only, then each expansion kind
# from the re-ranked list (dff-eval's order: evaluation.encode.rank_pipeline)
VARIANTS = ((99, 0, "average"), (3, 0, "average"), (99, 2, "average"), (99, 2, "alpha"), (4, 2, "diffusion"))


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rerank-photos")
    for name in ("chelsea", "coffee", "rocket", "astronaut", "coins", "camera"):
        photo(name, max_side=None).save(folder / f"{name}.jpg", quality=90)
    return folder


@pytest.mark.parametrize("method", ["nmf-v", "nmf-vu"])
def test_the_searchers_reranked_list_is_dff_evals_with_and_without_a_box_and_with_each_expansion(
    method: str, small_folder: Path, tmp_path: Path
) -> None:
    from descriptors.diffusion import knn_graph
    from indexer import IndexConfig, build_index
    from indexer.update import build_graph
    from searcher.engine import SearchEngine

    index_dir = tmp_path / "index"
    # rerank_dim 1280 = the channels (no whitening): the codec is the identity, so both sides
    # store exactly the float16 rows and the test checks the kernel, the order and the QE order
    config = IndexConfig(descriptor=method, image_size=SMALL_SIZE, k=4, workers=0, rerank_dim=1280)
    build_index(small_folder, index_dir, config, progress=False)
    build_graph(index_dir, GRAPH_K)  # diffusion's stored k-NN graph (issue 13 part B)
    engine = SearchEngine(index_dir, max_top_k=20)
    try:
        n = engine.count
        database_requests = [ImageRequest(Path(p)) for p in engine.index.paths(range(n))]  # position = id
        cache = ActivationCache(tmp_path / "cache", engine.backbone, SMALL_SIZE, dtype="float32")
        encoder = MethodEncoder(cache, [method], k=4, progress=False, row_dim=1280)
        database = encoder.database(database_requests)[method]
        affinity = knn_graph(database, GRAPH_K).affinity()
        queries_and_boxes = [("coffee", None), ("coffee", QUERY_BOX)] + [(name, None) for name in OUTSIDE]
        for name, box in queries_and_boxes:
            query = small_folder / f"{name}.jpg" if name not in OUTSIDE else tmp_path / f"{name}.jpg"
            if not query.exists():
                photo(name, max_side=None).save(query, quality=90)
            queries = encoder.queries([ImageRequest(query)], [box])[method]
            for depth, qe, expansion in VARIANTS:
                expected = rank_pipeline(
                    queries, database, qe=qe, expansion=expansion, rerank=min(depth, n), kernel=MatchKernel(),
                    query_rows=encoder.query_rows[method], database_rows=encoder.database_rows[method], affinity=affinity,
                )[0]
                outcome = engine.query(
                    query.read_bytes(), box=box, top_k=n, query_expansion=qe, expansion=expansion, rerank=min(depth, n)
                )
                label = f"{method} {name} box={box} rerank={depth} qe={qe} {expansion}"
                assert [h.id for h in outcome.hits] == expected.tolist(), label
                assert outcome.reranked == min(depth, n)
                depth = min(depth, n)
                if not qe:  # the re-ranked scores are the kernel's (not cosines), on the rows dff-eval holds
                    rows = [encoder.database_rows[method][i] for i in expected[:depth]]
                    kernel = match_scores(encoder.query_rows[method][0], rows, MatchKernel())
                    np.testing.assert_allclose([h.score for h in outcome.hits[:depth]], kernel, atol=1e-4)
    finally:
        engine.close()


def test_box_queries_rerank_with_the_boxs_factors_only(engine, photo_folder: Path) -> None:
    index = engine.index
    assert index.has_factor_rows and engine.config.rerank == DEFAULT_DEPTH == 100  # the default: on, 100 (docs/results.md)
    data = (photo_folder / "chelsea.jpg").read_bytes()
    for box in (None, (60, 0, 230, 213)):
        outcome = engine.query(data, box=box, top_k=len(INDEXED_PHOTOS), rerank=len(INDEXED_PHOTOS))
        rows = engine.extractor.local_rows([decode_image(data)], None if box is None else [box])[0]
        assert len(rows) == outcome.query_factors and (box is None) == (len(rows) == 4)
        expected = match_scores(index.encode_query_rows(rows), index.factor_rows([h.id for h in outcome.hits]), MatchKernel())
        np.testing.assert_allclose([h.score for h in outcome.hits], expected, atol=1e-4)
        assert Path(outcome.hits[0].path).stem == "chelsea" and "rerank" in outcome.stages_ms
        # the same image's rows: kernel 1; the box keeps some of them: less
        assert outcome.hits[0].score > 0.99 if box is None else 0.2 < outcome.hits[0].score < 0.99


def test_rerank_zero_is_the_first_stage_and_bad_depths_are_refused(engine, photo_folder: Path) -> None:
    data = (photo_folder / "rocket.jpg").read_bytes()
    outcome = engine.query(data, top_k=5, rerank=0)
    scores, ids = engine.index.search(outcome.query_vector, 5)
    assert [h.id for h in outcome.hits] == ids[0].tolist() and outcome.reranked == 0
    np.testing.assert_allclose([h.score for h in outcome.hits], scores[0], atol=1e-5)
    assert "rerank" not in outcome.stages_ms
    for depth in (-1, engine.config.max_rerank + 1):
        with pytest.raises(InvalidQueryError, match="rerank") as info:
            engine.search(data, rerank=depth)
        assert info.value.reason == "bad-rerank"


def _without_factor_rows(index_dir: Path) -> None:
    """Make the index look like one built before factor rows existed."""
    manifest = json.loads((index_dir / "manifest.json").read_text())
    del manifest["factor_rows"]
    for segment in manifest["segments"]:
        segment["files"] = {"vectors": segment["files"]["vectors"]}
    (index_dir / "manifest.json").write_text(json.dumps(manifest))
    for path in index_dir.glob("factor_*"):
        path.unlink()


def test_over_grpc_absent_is_the_servers_default_and_an_index_without_rows_says_so(built_index: Path, tmp_path: Path) -> None:
    from searcher.client import SearchClient
    from searcher.server import ServerConfig, start_server

    data = jpeg_bytes(photo("coffee"))
    old = tmp_path / "old"
    shutil.copytree(built_index, old)
    _without_factor_rows(old)
    # the old index at dff-serve's default depth (100): served, each answer saying why it is not re-ranked
    for index_dir, rows, depth in ((built_index, True, {"rerank": 5}), (old, False, {})):
        running = start_server(ServerConfig(index=index_dir, port=0, **depth))
        try:
            with SearchClient("127.0.0.1", running.port, timeout=60) as client:
                assert client.info().rerank == (5 if rows else 0) and client.info().max_rerank == 1000
                default, asked, off = (client.search(data, top_k=8, rerank=r) for r in (None, 5, 0))
                assert (default.reranked, asked.reranked, off.reranked) == ((5, 5, 0) if rows else (0, 0, 0))
                expected = running.engine.search(data, top_k=8, rerank=5 if rows else 0)
                assert [r.id for r in default.results] == [h.id for h in expected]
                assert [r.score for r in asked.results] == pytest.approx([h.score for h in expected], abs=1e-6)
                assert [r.id for r in off.results] == [h.id for h in running.engine.search(data, top_k=8, rerank=0)]
                assert list(default.notes) == ([] if rows else [NO_FACTOR_ROWS_NOTE]) and not off.notes
                if rows:
                    assert [r.score for r in asked.results] != [r.score for r in off.results]  # kernel vs cosine
                    with pytest.raises(grpc.RpcError) as refused:
                        client.search(data, top_k=8, rerank=1001)
                    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "rerank" in refused.value.details()
        finally:
            running.stop(0)


def test_a_live_engine_reranks_an_added_image_and_never_a_removed_one(index_copy: Path) -> None:
    from searcher.engine import SearchEngine

    engine = SearchEngine(index_copy, max_top_k=20)
    try:
        gone = engine.search(jpeg_bytes(photo("rocket")), top_k=1, rerank=0)[0].id
        assert engine.remove_images(ids=[gone]) == 1
        extra = jpeg_bytes(photo(EXTRA_PHOTO))
        (added,) = engine.add_images([("extra", extra)])
        everything = engine.count
        for data in (jpeg_bytes(photo("rocket")), extra):
            hits = engine.search(data, top_k=everything, rerank=everything)
            assert gone not in {h.id for h in hits} and len(hits) == everything
        assert hits[0].id == added.id and hits[0].score > 0.99  # re-ranked with the rows the add stored
        engine.close()
        from indexer import compact_index

        compact_index(index_copy)
        engine = SearchEngine(index_copy, max_top_k=20)
        again = engine.search(extra, top_k=everything, rerank=everything)
        assert [(h.id, round(h.score, 4)) for h in again] == [(h.id, round(h.score, 4)) for h in hits]
        assert not engine.index.factor_rows([gone])[0].size
    finally:
        engine.close()
