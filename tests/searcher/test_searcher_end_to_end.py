"""End to end: `dff-index`-built index, `dff-serve` as a subprocess on a free port, `dff-query --json`,
add / find / remove over gRPC, SIGTERM (exit 0), restart: the state is kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from unittest import mock

import grpc
import pytest
from searcher_fixtures import jpeg_bytes, photo

from searcher.client import SearchClient
from searcher.launcher import launch_serve
from searcher.servicer import RequestHold

BIN = Path(sys.executable).parent


def _start(index: Path, token_file: Path, hold: Path | None = None) -> tuple[subprocess.Popen, int]:
    # the server's test hook (inherited through the environment): each Search waits for HOLD/release
    hook = {RequestHold.ENV: str(hold)} if hold is not None else {}
    with mock.patch.dict(os.environ, hook):
        server = launch_serve(
            index, ["--token-file", str(token_file), "--torch-threads", "2", "--verbose"], log_path=index.parent / "serve.log",
            timeout=120,
        )
    return server.process, server.port


def _wait_for(condition, what: str, timeout: float = 60.0) -> None:
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _serving(client: SearchClient) -> bool:
    from grpc_health.v1 import health_pb2

    try:
        status = client.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
    except grpc.RpcError:
        return False
    return status == health_pb2.HealthCheckResponse.SERVING


def _stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.slow
def test_serve_query_add_remove_restart(index_copy: Path, photo_folder: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("e2e-token")
    process, port = _start(index_copy, token_file)
    try:
        with SearchClient("127.0.0.1", port, token="e2e-token") as client:
            client.wait_until_serving(60)
            start_count = client.info().count
            # numpy's BLAS stays on one thread while the compute threads are 2 (searcher/server.py)
            assert "dff-serve: threads: compute 2 (torch intra-op, FAISS), BLAS 1," in (
                index_copy.parent / "serve.log").read_text()

            query = photo_folder / "rocket.jpg"
            cli = subprocess.run(
                [str(BIN / "dff-query"), str(query), "--port", str(port), "--top-k", "5", "--json",
                 "--token-file", str(token_file)],
                capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
            assert cli.returncode == 0, cli.stderr
            results = json.loads(cli.stdout)["results"]
            assert results[0]["rank"] == 1 and Path(results[0]["path"]).stem == "rocket"
            assert results[0]["score"] == pytest.approx(1.0, abs=1e-3)

            kept, dropped = jpeg_bytes(photo("retina")), jpeg_bytes(photo("grass"))
            added = client.add_images([("retina", kept), ("grass", dropped)])
            assert [a.key for a in added.added] == ["retina", "grass"] and added.count == start_count + 2
            kept_id, dropped_id = added.added[0].id, added.added[1].id
            top = client.search(dropped, top_k=1).results[0]
            assert (top.id, top.key) == (dropped_id, "grass")

            removed = client.remove_images(ids=[dropped_id])
            assert removed.removed == 1 and removed.count == start_count + 1
            assert dropped_id not in [r.id for r in client.search(dropped, top_k=20).results]
        assert _stop(process) == 0

        hold = tmp_path / "hold"
        hold.mkdir()
        (hold / "release").touch()  # searches pass through until the test removes it
        process, port = _start(index_copy, token_file, hold)
        with SearchClient("127.0.0.1", port, token="e2e-token") as client:
            client.wait_until_serving(60)
            assert client.info().count == start_count + 1
            top = client.search(kept, top_k=1).results[0]
            assert (top.id, top.key) == (kept_id, "retina")
            assert dropped_id not in [r.id for r in client.search(dropped, top_k=20).results]

            # SIGTERM while a search is held in flight by the server's test hook: new requests get
            # UNAVAILABLE, the held one completes with OK once released, then the server exits 0
            (hold / "release").unlink()
            (hold / "held").unlink()
            in_flight: list = []
            thread = threading.Thread(
                target=lambda: in_flight.append(client.search(kept, top_k=3, timeout=120))
            )
            thread.start()
            _wait_for(lambda: (hold / "held").exists(), "the search to be in flight")
            process.send_signal(signal.SIGTERM)
            _wait_for(lambda: not _serving(client), "health to leave SERVING after SIGTERM")
            with pytest.raises(grpc.RpcError) as refused:
                client.search(kept, top_k=1, timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
            assert thread.is_alive() and not in_flight  # still held: it was in flight throughout
            (hold / "release").touch()
            thread.join(120)
            assert in_flight and in_flight[0].results[0].id == kept_id
            assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
