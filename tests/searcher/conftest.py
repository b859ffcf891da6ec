"""Fixtures for the searcher: a small real index built by the real indexer from scikit-image
photos at 160 px (K=4, so tests stay fast), engines over it, and servers on real ports."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from searcher_fixtures import IMAGE_SIZE, INDEXED_PHOTOS, photo


@pytest.fixture(scope="session")
def photo_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in INDEXED_PHOTOS:
        photo(name).save(folder / f"{name}.jpg", quality=90)
    return folder


@pytest.fixture(scope="session")
def built_index(photo_folder: Path, tmp_path_factory) -> Path:
    """A pristine index; tests that change an index use `index_copy`."""
    from indexer import IndexConfig, build_index

    out = tmp_path_factory.mktemp("built") / "index"
    build_index(photo_folder, out, IndexConfig(image_size=IMAGE_SIZE, k=4, workers=0), progress=False)
    return out


@pytest.fixture
def index_copy(built_index: Path, tmp_path: Path) -> Path:
    target = tmp_path / "index"
    shutil.copytree(built_index, target)
    return target


@pytest.fixture(scope="session")
def engine(built_index: Path):
    """A read-only engine on the pristine index (max_top_k 20 for the range tests)."""
    from searcher.engine import EngineConfig, SearchEngine

    engine = SearchEngine(EngineConfig(index_dir=built_index, max_top_k=20))
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def server(engine):
    """An in-process server on a free loopback port with a 1 MiB message limit."""
    from searcher.server import ServerConfig, start_server

    running = start_server(ServerConfig(index=engine.config.index_dir, port=0, max_message_mb=1.0), engine=engine)
    yield running
    running.server.stop(0).wait()


@pytest.fixture
def client(server):
    from searcher.client import SearchClient

    with SearchClient("127.0.0.1", server.port, timeout=60) as client:
        yield client
