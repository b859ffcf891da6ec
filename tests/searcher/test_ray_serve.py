"""`dff-serve --ray`: a real Ray Serve app (gRPC ingress, encoder, 2 index shards) answers like the
local engine over the same exact (Flat) index, through the unchanged `SearchClient`, and follows
the index directory when `dff-index add` commits a new generation to it (the last test)."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from searcher_fixtures import EXTRA_PHOTO, jpeg_bytes, photo


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def served_index(built_index: Path, tmp_path_factory) -> Path:
    """A copy of the pristine index: the last test adds to it (the others compare with `engine`)."""
    target = tmp_path_factory.mktemp("ray-served") / "index"
    shutil.copytree(built_index, target)
    return target


@pytest.fixture(scope="module")
def ray_app(ray_local, served_index: Path):
    from searcher.ray_serve import RayServeConfig, start_on_ray, stop_on_ray

    port = start_on_ray(
        RayServeConfig(index=served_index, address="auto", port=_free_port(), shards=2, max_top_k=20, token="s3cret",
                       follow_s=0.5)
    )
    yield port
    stop_on_ray()


@pytest.fixture
def ray_client(ray_app):
    from searcher.client import SearchClient

    with SearchClient("127.0.0.1", ray_app, token="s3cret", timeout=120) as client:
        client.wait_until_serving(timeout=120)
        yield client


@pytest.mark.parametrize(
    "name, box, qe, rerank",
    [
        ("chelsea", None, 0, None),  # absent: both sides' default depth (descriptors.rerank.DEFAULT_DEPTH)
        ("astronaut", (40, 20, 200, 220), 0, 5),  # a box query re-ranks with the box's factors
        ("rocket", None, 3, 4),  # re-ranked, then expanded
        ("coffee", None, 0, 0),  # off: the first stage
    ],
    ids=["plain-default-rerank", "box-rerank5", "qe3-rerank4", "rerank-off"],
)
def test_sharded_ray_app_equals_the_local_engine(ray_client, engine, name, box, qe, rerank):
    """Shards own their ids' factor rows; the ingress re-ranks with the engine's own code."""
    image = jpeg_bytes(photo(name))
    expected = engine.query(image, box=box, top_k=8, query_expansion=qe, rerank=rerank)
    response = ray_client.search(image, box=box, top_k=8, query_expansion=qe, rerank=rerank)
    assert response.reranked == expected.reranked and list(response.notes) == expected.notes == []
    assert expected.reranked == (min(engine.count, engine.config.rerank) if rerank is None else rerank)
    assert [r.id for r in response.results] == [h.id for h in expected.hits]
    assert [r.path for r in response.results] == [h.path for h in expected.hits]
    np.testing.assert_allclose([r.score for r in response.results], [h.score for h in expected.hits], atol=1e-5)
    assert response.results[0].rank == 1


def test_ray_app_info_errors_and_auth(ray_app, ray_client, engine):
    from searcher.client import SearchClient

    info = ray_client.info()
    assert info.count == engine.count and info.dimension == engine.info()["dimension"]
    assert (info.rerank, info.max_rerank) == (engine.info()["rerank"], engine.info()["max_rerank"]) == (100, 1000)
    with pytest.raises(grpc.RpcError) as bad_image:
        ray_client.search(b"not an image", top_k=3)
    assert bad_image.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as bad_k:
        ray_client.search(jpeg_bytes(photo("coffee")), top_k=0)
    assert bad_k.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "top_k" in bad_k.value.details()
    with pytest.raises(grpc.RpcError) as bad_rerank:  # above the deployment's max_rerank (1000)
        ray_client.search(jpeg_bytes(photo("coffee")), top_k=3, rerank=1001)
    assert bad_rerank.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "rerank" in bad_rerank.value.details()
    with pytest.raises(grpc.RpcError) as read_only:
        ray_client.remove_images(ids=[0])
    assert read_only.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "dff-index remove" in read_only.value.details()
    with SearchClient("127.0.0.1", ray_app, token="wrong", timeout=60) as other, pytest.raises(grpc.RpcError) as denied:
        other.search(jpeg_bytes(photo("coffee")), top_k=3)
    assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_ray_app_localizes(ray_client, engine):
    image = jpeg_bytes(photo("chelsea"))
    expected = engine.search(image, top_k=3, localize=True)
    response = ray_client.search(image, top_k=3, localize=True)
    for got, want in zip(response.results, expected, strict=True):
        assert got.HasField("box") == (want.box is not None)
        if want.box is not None:
            np.testing.assert_allclose([got.box.x0, got.box.y0, got.box.x1, got.box.y1], want.box, atol=1e-3)


def test_ray_app_serves_the_page_images_and_concepts(ray_client, engine):
    """What dff-web needs from a Ray deployment: GetImage (indexed ids only) and the concepts."""
    image = jpeg_bytes(photo("chelsea"))
    top = engine.search(image, top_k=1)[0]
    stored = ray_client.get_image(top.id, max_side=64)
    assert stored.id == top.id and stored.content_type == "image/jpeg" and stored.width > 64
    with pytest.raises(grpc.RpcError) as unknown:
        ray_client.get_image(10**9)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    expected = engine.query(image, top_k=2, localize=True, with_concepts=True)
    response = ray_client.search(image, top_k=2, localize=True, return_concepts=True)
    assert [c.kept for c in response.query_concepts] == [c.kept for c in expected.concepts]
    kept = {c.index for c in response.query_concepts if c.kept}
    assert all(r.HasField("shared_concept") and r.shared_concept in kept for r in response.results)


def test_ray_app_follows_an_offline_add(ray_client, served_index: Path, tmp_path: Path):
    """`dff-index add` on the served directory (another process's commit) reaches every shard."""
    from indexer import add_images

    before = ray_client.info().count
    new_file = tmp_path / f"{EXTRA_PHOTO}.jpg"
    photo(EXTRA_PHOTO).save(new_file, quality=90)
    added = add_images(served_index, [new_file], progress=False)
    assert len(added.ids) == 1
    query = jpeg_bytes(photo(EXTRA_PHOTO))
    deadline = time.monotonic() + 120  # the shards look every 0.5 s; reopening one takes a moment
    while ray_client.info().count != before + 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray_client.info().count == before + 1
    top = ray_client.search(query, top_k=1).results[0]
    assert top.id == added.ids[0] and top.path.endswith(f"{EXTRA_PHOTO}.jpg")
    assert ray_client.get_image(added.ids[0], max_side=32).id == added.ids[0]
