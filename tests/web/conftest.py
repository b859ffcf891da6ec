"""Fixtures of the web tests: a real index of scikit-image photos, a real gRPC server on a free
port, and the FastAPI app talking to it through `SearchClient` (HTTP in process via httpx)."""

from __future__ import annotations

from pathlib import Path

import pytest
from web_fixtures import IMAGE_SIZE, INDEXED_PHOTOS

from descriptors.sample_photos import sample_photo


@pytest.fixture(scope="session")
def web_photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("web-photos")
    for name in INDEXED_PHOTOS:
        sample_photo(name, 320).save(folder / f"{name}.jpg", quality=90)
    return folder


@pytest.fixture(scope="session")
def web_index(web_photos: Path, tmp_path_factory) -> Path:
    from indexer import IndexConfig, build_index

    out = tmp_path_factory.mktemp("web-index") / "index"
    build_index(web_photos, out, IndexConfig(image_size=IMAGE_SIZE, k=4, workers=0), progress=False)
    return out


@pytest.fixture(scope="session")
def grpc_server(web_index: Path):
    from searcher.server import ServerConfig, start_server

    running = start_server(ServerConfig(index=web_index, port=0, max_top_k=20))
    yield running
    running.stop(0)


@pytest.fixture(scope="session")
def web_client(grpc_server):
    """The page's HTTP API in process (starlette's TestClient over httpx), real gRPC behind it."""
    from fastapi.testclient import TestClient

    from web.app import create_app
    from web.config import WebConfig

    app = create_app(WebConfig(grpc=f"127.0.0.1:{grpc_server.port}", thumbnail_side=96))
    with TestClient(app) as client:
        yield client
