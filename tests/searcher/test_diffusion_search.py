"""Query expansion kinds over gRPC: alpha-QE and diffusion on the index's stored k-NN graph,
each equal to the shared implementation (descriptors/) applied by hand; diffusion kept working
by a live add; clear refusals."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from searcher_fixtures import photo


@pytest.fixture
def graph_server(index_copy: Path):
    from indexer.update import build_graph
    from searcher.client import SearchClient
    from searcher.engine import EngineConfig, SearchEngine
    from searcher.server import ServerConfig, start_server

    build_graph(index_copy, 3)
    engine = SearchEngine(EngineConfig(index_dir=index_copy))
    running = start_server(ServerConfig(index=index_copy, port=0), engine=engine)
    with SearchClient("127.0.0.1", running.port, timeout=120) as client:
        yield engine, client
    running.server.stop(0).wait()
    engine.close()


def _expected_diffusion(engine, query: np.ndarray, depth: int, top_k: int) -> list[int]:
    from descriptors.diffusion import diffuse, diffusion_order
    from indexer.graph import read_graph

    index = engine.index
    scores, ids = index.search(query[None, :], max(top_k, depth))
    graph_ids, graph = read_graph(index.index_dir, index.manifest).positions()
    at = np.searchsorted(graph_ids, ids[0])
    f = diffuse(at[:depth], scores[0][:depth], graph.affinity(3.0))
    return graph_ids[diffusion_order(f, at)][:top_k].tolist()


def test_diffusion_and_alpha_over_grpc_equal_the_shared_implementation(graph_server, photo_folder: Path) -> None:
    from descriptors.query_expansion import ALPHA_QE, expand_query

    engine, client = graph_server
    data = (photo_folder / "rocket.jpg").read_bytes()
    first = client.search(data, top_k=10)
    query = engine.index.vectors([first.results[0].id])[0]  # the query's indexed copy: same vector

    diffused = client.search(data, top_k=6, query_expansion=3, expansion="diffusion")
    assert [h.id for h in diffused.results] == _expected_diffusion(engine, query, 3, 6)
    cosines = engine.index.vectors([h.id for h in diffused.results]) @ query
    np.testing.assert_allclose([h.score for h in diffused.results], cosines, atol=2e-3)

    alpha = client.search(data, top_k=6, query_expansion=3, expansion="alpha")
    top = [h.id for h in first.results[:3]]
    expanded = expand_query(query, engine.index.vectors(top), 3, alpha=ALPHA_QE)
    _, ids = engine.index.search(expanded[None, :], 6)
    assert [h.id for h in alpha.results] == ids[0].tolist()


def test_a_live_add_keeps_the_graph_current_and_diffusion_finds_the_new_image(graph_server, tmp_path: Path) -> None:
    from indexer.graph import read_graph

    engine, client = graph_server
    new = tmp_path / "new.jpg"
    photo("coffee").rotate(180).save(new, quality=90)
    added = client.add_images([("rotated-coffee.jpg", new.read_bytes())])
    new_id = added.added[0].id
    index = engine.index
    graph = read_graph(index.index_dir, index.manifest)  # raises if the add left the graph stale
    assert new_id in graph.ids.tolist()
    hits = client.search(new.read_bytes(), top_k=3, query_expansion=2, expansion="diffusion").results
    assert hits[0].id == new_id


def test_unknown_expansion_and_diffusion_without_a_graph_are_refused(client, photo_folder: Path) -> None:
    data = (photo_folder / "coins.jpg").read_bytes()
    with pytest.raises(grpc.RpcError) as info:
        client.search(data, query_expansion=2, expansion="median")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "average, alpha, diffusion" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:
        client.search(data, query_expansion=2, expansion="diffusion")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "dff-index graph" in info.value.details()
