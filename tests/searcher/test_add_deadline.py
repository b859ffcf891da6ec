"""AddImages honours the client's deadline (issue 16): a long upload whose deadline passes while
the server decodes or encodes it stops there and adds nothing: no generation, no stored upload;
the server keeps serving and takes the next upload."""

from __future__ import annotations

import time

import grpc
import pytest
from searcher_fixtures import EXTRA_PHOTO, INDEXED_PHOTOS, jpeg_bytes, photo


@pytest.fixture
def own_server(index_copy):
    from searcher.engine import EngineConfig, SearchEngine
    from searcher.server import ServerConfig, start_server

    engine = SearchEngine(EngineConfig(index_dir=index_copy))
    running = start_server(ServerConfig(index=index_copy, port=0), engine=engine)
    yield running, engine
    running.server.stop(0).wait()
    engine.close()


def _distinct_uploads(count: int) -> list[tuple[str, bytes]]:
    """`count` photos with distinct content (shifted crops of the sample photos)."""
    uploads = []
    for i in range(count):
        img = photo(INDEXED_PHOTOS[i % len(INDEXED_PHOTOS)], 480)
        shift = 1 + i // len(INDEXED_PHOTOS)
        uploads.append((f"upload-{i}", jpeg_bytes(img.crop((shift, shift, img.width - 40 + shift, img.height - 40 + shift)))))
    return uploads


def test_an_upload_past_its_deadline_stops_and_adds_nothing(own_server):
    from searcher.client import SearchClient

    running, engine = own_server
    uploads_dir = engine.config.index_dir / "uploads"
    stored_before = set(uploads_dir.iterdir()) if uploads_dir.exists() else set()
    count, generation = engine.count, engine.generation
    with SearchClient("127.0.0.1", running.port, timeout=60) as client:
        # 64 photos take seconds to decode and encode; the deadline passes long before
        with pytest.raises(grpc.RpcError) as info:
            client.add_images(_distinct_uploads(64), timeout=0.3)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # the client gave up at once; wait for the server's handler to end (it decides the outcome)
        waited = time.monotonic() + 300
        while running.servicer.gate.in_flight and time.monotonic() < waited:
            time.sleep(0.05)
        assert running.servicer.gate.in_flight == 0, "the AddImages handler never ended"
        assert (engine.count, engine.generation) == (count, generation), "the late upload was committed"
        stored_now = set(uploads_dir.iterdir()) if uploads_dir.exists() else set()
        assert stored_now == stored_before, "files of the abandoned upload were left in uploads/"
        # still serving, and the next upload (no deadline) goes in
        reply = client.add_images([("after", jpeg_bytes(photo(EXTRA_PHOTO)))])
        assert reply.count == count + 1 and reply.generation == generation + 1
