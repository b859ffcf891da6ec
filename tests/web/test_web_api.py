"""The page's HTTP API against a real dff-serve (in process, real port): search with a box, more
like this, thumbnails (resized, cached), errors in words, and image routes that serve nothing but
indexed ids."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from web_fixtures import CAT_BOX, COFFEE_BOX, INDEXED_PHOTOS, composite_query, jpeg_bytes

from descriptors.rerank import DEFAULT_DEPTH

pytestmark = pytest.mark.slow


def _upload(client, data: bytes, name: str = "query.jpg", mime: str = "image/jpeg") -> dict:
    response = client.post("/api/queries", files={"file": (name, data, mime)})
    assert response.status_code == 200, response.text
    return response.json()


def _names(answer: dict) -> list[str]:
    return [Path(r["name"]).stem for r in answer["results"]]


def test_the_index_panel_says_what_the_index_is(web_client) -> None:
    info = web_client.get("/api/info").json()
    assert info["count"] == len(INDEXED_PHOTOS)
    assert info["backbone"] == "efficientnet-lite0" and info["descriptor"] == "nmf-v"
    assert info["faiss"] and info["dimension"] > 0 and info["updated_at"] > 0


def test_a_box_decides_what_is_searched_and_why_it_matched(web_client) -> None:
    query = _upload(web_client, jpeg_bytes(composite_query()))
    assert (query["width"], query["height"]) == (640, 240) and query["query"].startswith("u-")
    for box, expected in ((CAT_BOX, "chelsea"), (COFFEE_BOX, "coffee")):
        answer = web_client.post(
            "/api/search", json={"query": query["query"], "box": list(box), "top_k": 5, "localize": True}
        ).json()
        assert _names(answer)[0] == expected, answer["results"]
        top = answer["results"][0]
        assert top["box"] is not None and top["width"] == 320 and top["height"] == 213
        assert "/" not in top["name"]  # file names only: no server folders in the page
        concepts = answer["query"]["concepts"]
        kept = [c["index"] for c in concepts if c["kept"]]
        assert len(concepts) == 4 and kept and sum(c["weight"] for c in concepts) == pytest.approx(1, abs=1e-3)
        assert top["shared_concept"] in kept
        heatmap = top["shared_concept_heatmap"]
        assert len(heatmap["values"]) == heatmap["height"] * heatmap["width"] and max(heatmap["values"]) == 1.0
    # the query image comes back for a reload of the page's URL
    back = web_client.get(f"/api/queries/{query['query']}")
    assert back.status_code == 200 and back.headers["content-type"] == "image/jpeg"


def test_more_like_this_searches_with_an_indexed_image(web_client) -> None:
    first = web_client.post("/api/search", json={"query": _upload(web_client, jpeg_bytes(composite_query()))["query"],
                                                 "box": list(CAT_BOX), "top_k": 3, "localize": False}).json()
    chelsea = first["results"][0]["id"]
    answer = web_client.post("/api/search", json={"query": f"id-{chelsea}", "top_k": 3, "localize": False}).json()
    assert answer["results"][0]["id"] == chelsea and answer["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert answer["query"]["concepts"] == [] and answer["results"][0]["box"] is None


def test_thumbnails_are_resized_cached_and_revalidated(web_client) -> None:
    backend = web_client.app.state.backend
    image_id = web_client.post(
        "/api/search", json={"query": _upload(web_client, jpeg_bytes(composite_query()))["query"], "top_k": 1,
                             "localize": False}
    ).json()["results"][0]["id"]
    backend.thumbnails.clear()
    first = web_client.get(f"/api/thumbs/{image_id}")
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(first.content)).size) == 96
    hits = backend.thumbnails.hits
    second = web_client.get(f"/api/thumbs/{image_id}")
    assert second.content == first.content and backend.thumbnails.hits == hits + 1
    etag = first.headers["etag"]
    assert web_client.get(f"/api/thumbs/{image_id}", headers={"If-None-Match": etag}).status_code == 304
    full = web_client.get(f"/api/images/{image_id}")
    assert full.status_code == 200 and Image.open(io.BytesIO(full.content)).size in {(320, 213), (320, 320)}


@pytest.mark.parametrize(
    "path",
    [
        "/api/images/999999", "/api/thumbs/999999", "/api/images/-1", "/api/thumbs/1.0",
        "/api/images/..%2F..%2F..%2Fetc%2Fpasswd", "/api/thumbs/%2Fetc%2Fpasswd",
        "/api/images/0%2F..%2F..%2Fpyproject.toml", "/api/thumbs/..", "/api/images/%2e%2e",
        "/static/..%2F..%2Fpyproject.toml", "/static/%2e%2e/backend.py", "/static/../cli.py",
        "/api/queries/..%2F..%2Fetc%2Fpasswd", "/api/queries/id-999999", "/api/queries/u-nothex",
    ],
)
def test_image_routes_serve_only_indexed_ids(web_client, path: str) -> None:
    response = web_client.get(path)
    assert response.status_code == 404, (path, response.status_code, response.text[:200])
    assert b"root:" not in response.content and b"[project]" not in response.content
    if path.startswith("/api/"):
        assert response.json()["error"]["message"]


def test_bad_uploads_and_requests_get_words(web_client) -> None:
    text = web_client.post("/api/queries", files={"file": ("notes.txt", b"just some words\n", "text/plain")})
    assert text.status_code == 400 and text.json()["error"]["code"] == "not-an-image"
    assert "notes.txt" in text.json()["error"]["message"] and "not an image" in text.json()["error"]["message"]
    query = _upload(web_client, jpeg_bytes(composite_query()))["query"]
    outside = web_client.post("/api/search", json={"query": query, "box": [0, 0, 5000, 10]})
    assert outside.status_code == 400 and "outside" in outside.json()["error"]["message"]
    short = web_client.post("/api/search", json={"query": query, "box": [1, 2, 3]})
    assert short.status_code == 400 and "box" in short.json()["error"]["message"]
    too_many = web_client.post("/api/search", json={"query": query, "top_k": 999})
    assert too_many.status_code == 400 and "top_k" in too_many.json()["error"]["message"]
    gone = web_client.post("/api/search", json={"query": "u-" + "0" * 32})
    assert gone.status_code == 404 and "upload the image again" in gone.json()["error"]["message"]


def test_a_too_large_upload_an_unreachable_server_and_a_refused_token_are_said(grpc_server, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from searcher.server import ServerConfig, start_server
    from web.app import create_app
    from web.config import WebConfig

    small = create_app(WebConfig(grpc=f"127.0.0.1:{grpc_server.port}", max_upload_mb=0.01))
    with TestClient(small) as client:
        big = client.post("/api/queries", files={"file": ("big.jpg", b"\xff" * 20_000, "image/jpeg")})
        assert big.status_code == 413 and "0.01 MB" in big.json()["error"]["message"]

    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    with TestClient(create_app(WebConfig(grpc=f"127.0.0.1:{closed}"))) as client:
        answer = client.get("/api/info")
        assert answer.status_code == 503 and "unreachable" in answer.json()["error"]["message"]
        assert client.get("/").status_code == 200  # the page itself still loads

    token_file = tmp_path / "token"
    token_file.write_text("s3cret")
    guarded = start_server(ServerConfig(index=grpc_server.engine.config.index_dir, port=0, token_file=token_file),
                           engine=grpc_server.engine)
    try:
        with TestClient(create_app(WebConfig(grpc=f"127.0.0.1:{guarded.port}"))) as client:
            refused = client.get("/api/info")
            assert refused.status_code == 502 and refused.json()["error"]["code"] == "auth"
            assert "--token-file" in refused.json()["error"]["message"]
        with TestClient(create_app(WebConfig(grpc=f"127.0.0.1:{guarded.port}", token_file=token_file))) as client:
            assert client.get("/api/info").json()["count"] == len(INDEXED_PHOTOS)
    finally:
        guarded.server.stop(0).wait()


def test_a_removed_image_is_no_longer_served_even_from_the_cache(web_index: Path, tmp_path: Path) -> None:
    import shutil

    from fastapi.testclient import TestClient

    from searcher.client import SearchClient
    from searcher.server import ServerConfig, start_server
    from web.app import create_app
    from web.config import WebConfig

    copy = tmp_path / "index"
    shutil.copytree(web_index, copy)
    running = start_server(ServerConfig(index=copy, port=0))
    try:
        config = WebConfig(grpc=f"127.0.0.1:{running.port}", thumbnail_side=64, info_ttl_s=0.0)
        with TestClient(create_app(config)) as client, SearchClient("127.0.0.1", running.port) as grpc_client:
            assert client.get("/api/thumbs/0").status_code == 200  # now in the cache
            assert client.get("/api/thumbs/0").status_code == 200
            assert grpc_client.remove_images(ids=[0]).removed == 1
            for path in ("/api/thumbs/0", "/api/images/0", "/api/queries/id-0"):
                answer = client.get(path)
                assert answer.status_code == 404 and "not in the index" in answer.json()["error"]["message"], path
            assert client.get("/api/thumbs/1").status_code == 200
    finally:
        running.stop(0)


def test_search_takes_a_rerank_depth_and_says_how_many_were_reranked(web_client) -> None:
    query = _upload(web_client, jpeg_bytes(composite_query()))["query"]
    body = {"query": query, "box": list(CAT_BOX), "top_k": 5, "localize": False}
    default, off, five = (
        web_client.post("/api/search", json=body | extra).json() for extra in ({}, {"rerank": 0}, {"rerank": 5})
    )
    info = web_client.get("/api/info").json()
    assert info["rerank"] == DEFAULT_DEPTH == 100  # dff-serve's default: on (docs/results.md, "Issue 13")
    everything = min(DEFAULT_DEPTH, info["count"])
    assert (default["reranked"], off["reranked"], five["reranked"]) == (everything, 0, 5)
    assert not default["notes"] and not five["notes"] and _names(five)[0] == _names(default)[0] == "chelsea"
    assert [r["score"] for r in five["results"]] != [r["score"] for r in off["results"]]  # kernel vs cosine
    refused = web_client.post("/api/search", json=body | {"rerank": 5000})  # above dff-serve's --max-rerank
    assert refused.status_code == 400 and "rerank" in refused.json()["error"]["message"]
    assert web_client.post("/api/search", json=body | {"rerank": -1}).status_code == 400
