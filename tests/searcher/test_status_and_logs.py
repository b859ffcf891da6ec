"""Status codes beyond bad input (INTERNAL with a request id, UNAVAILABLE while shutting down),
one log line per request, the plaintext-token warning and the busy-port check of dff-serve."""

from __future__ import annotations

import logging
import re
import socket
import time
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from searcher.server import ServerConfig, port_in_use, start_server, warn_about_plaintext_token
from searcher.servicer import REQUEST_ID_HEADER, SearchServicer, _Call


def test_each_request_logs_method_status_ms_and_its_request_id(client, photo_folder: Path, caplog) -> None:
    from dffsearch.v1 import search_pb2

    request = search_pb2.SearchRequest(image=(photo_folder / "coffee.jpg").read_bytes(), top_k=2)
    with caplog.at_level(logging.INFO, logger="dff-serve.requests"):
        _, call = client.stub.Search.with_call(request, timeout=60, metadata=((REQUEST_ID_HEADER, "abc-123"),))
        with pytest.raises(grpc.RpcError) as info:
            client.search(b"", top_k=2)
    assert dict(call.trailing_metadata())[REQUEST_ID_HEADER] == "abc-123"
    failed_id = dict(info.value.trailing_metadata())[REQUEST_ID_HEADER]
    lines = [r.getMessage() for r in caplog.records if r.name == "dff-serve.requests"]
    assert any(re.fullmatch(r"Search OK \d+\.\d ms request_id=abc-123", line) for line in lines), lines
    assert any(re.fullmatch(rf"Search INVALID_ARGUMENT \d+\.\d ms request_id={failed_id}", line) for line in lines)


class _Exploding:
    """A servicer method body that fails in a way no handler expects."""

    def __init__(self, servicer: SearchServicer) -> None:
        self.servicer = servicer

    def __call__(self, request: bytes, context) -> bytes:
        with _Call(self.servicer, "Explode", context):
            raise KeyError("a bug")


def test_an_unexpected_error_is_internal_with_a_request_id_that_the_log_has(engine, caplog) -> None:
    servicer = SearchServicer(engine)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(_Exploding(servicer))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Explode", {"Go": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with (
            grpc.insecure_channel(f"127.0.0.1:{port}") as channel,
            caplog.at_level(logging.INFO),
            pytest.raises(grpc.RpcError) as info,
        ):
            channel.unary_unary("/test.Explode/Go")(b"", timeout=30)
    finally:
        server.stop(0).wait()
    assert info.value.code() == grpc.StatusCode.INTERNAL
    request_id = re.search(r"request id (\w+)", info.value.details()).group(1)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and request_id in r.getMessage()]
    assert errors and errors[0].exc_info[0] is KeyError  # the traceback is in the log
    assert "Explode INTERNAL" in " ".join(r.getMessage() for r in caplog.records)


def test_requests_after_shutdown_began_are_unavailable(engine, photo_folder: Path) -> None:
    from searcher.client import SearchClient

    running = start_server(ServerConfig(index=engine.config.index_dir, port=0), engine=engine)
    try:
        with SearchClient("127.0.0.1", running.port, timeout=60) as client:
            assert client.search(photo_folder / "coffee.jpg", top_k=1).results
            running.begin_shutdown()
            with pytest.raises(grpc.RpcError) as info:
                client.search(photo_folder / "coffee.jpg", top_k=1)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in info.value.details()
    finally:
        running.server.stop(0).wait()  # not running.stop(): the engine is the session's


def test_a_token_over_plaintext_on_a_network_address_is_warned_about(tmp_path: Path, caplog) -> None:
    token = tmp_path / "token"
    token.write_text("secret")
    with caplog.at_level(logging.WARNING, logger="dff-serve"):
        assert warn_about_plaintext_token(ServerConfig(index=tmp_path, host="0.0.0.0", token_file=token))
    assert "plaintext" in caplog.text and "--tls-cert" in caplog.text
    assert not warn_about_plaintext_token(ServerConfig(index=tmp_path, host="127.0.0.1", token_file=token))
    assert not warn_about_plaintext_token(
        ServerConfig(index=tmp_path, host="0.0.0.0", token_file=token, tls_cert=tmp_path / "c", tls_key=tmp_path / "k")
    )
    assert not warn_about_plaintext_token(ServerConfig(index=tmp_path, host="0.0.0.0"))


def test_dff_serve_on_a_busy_port_says_so_before_loading_anything(built_index: Path, capsys) -> None:
    from searcher.server import main

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        port = holder.getsockname()[1]
        assert port_in_use("127.0.0.1", port) == f"port {port} on 127.0.0.1 is in use"
        assert main(["--index", str(built_index), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dff-serve: port {port} on 127.0.0.1 is in use") and "--port" in err
    assert "\n" not in err
    assert port_in_use("127.0.0.1", 0) is None


def test_decodes_beyond_the_slots_wait_for_one_and_a_deadline_bounds_the_wait(engine, photo_folder: Path) -> None:
    import threading
    import time

    from searcher.errors import QueryDeadlineError

    data = (photo_folder / "coffee.jpg").read_bytes()
    slots = engine.config.decode_slots
    results: list = []
    threads = [
        threading.Thread(target=lambda: results.append(engine.search(data, top_k=1)[0].path))
        for _ in range(3 * slots)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 * slots and all(p.endswith("coffee.jpg") for p in results)

    for _ in range(slots):  # every decode slot busy (as under 16 concurrent 60 MP queries)
        engine._decode_slots.acquire()
    try:
        with pytest.raises(QueryDeadlineError, match="--decode-slots"):
            engine.query(data, top_k=1, deadline=time.monotonic() + 0.2)
    finally:
        for _ in range(slots):
            engine._decode_slots.release()
    assert engine.search(data, top_k=1)[0].path.endswith("coffee.jpg")


def _server_with_request_hold(engine, tmp_path: Path, max_in_flight: int):
    """A server on the session's engine (4 handler threads) whose Searches wait in flight until
    the test touches `hold/release` (searcher.servicer.RequestHold)."""
    from searcher.servicer import RequestHold

    hold = tmp_path / "hold"
    hold.mkdir()
    running = start_server(
        ServerConfig(index=engine.config.index_dir, port=0, workers=4, max_in_flight=max_in_flight), engine=engine
    )
    running.servicer.hold = RequestHold(hold)
    return hold, running


def test_health_answers_while_heavy_requests_hold_every_admitted_slot(engine, photo_folder: Path, tmp_path: Path) -> None:
    """Requests beyond --max-in-flight are refused at once, so the threads left over answer health
    checks: with 4 handler threads and 6 searches held in flight by the test hook, health must
    still say SERVING (without the gate, all 4 threads wait on the hook and the probe never runs
    until the test releases them, which it does only after the probe)."""
    from grpc_health.v1 import health_pb2

    from searcher.client import SearchClient
    hold, running = _server_with_request_hold(engine, tmp_path, max_in_flight=2)
    query = (photo_folder / "coffee.jpg").read_bytes()
    try:
        # retries=0: this test is about the server's refusal, not the client's retry policy
        with SearchClient("127.0.0.1", running.port, timeout=120, retries=0) as client, futures.ThreadPoolExecutor(6) as pool:
            calls = [pool.submit(client.search, query, top_k=1) for _ in range(6)]
            refused = []
            for call in futures.as_completed(calls):  # the admitted two wait on the hook: 4 come back
                with pytest.raises(grpc.RpcError) as info:
                    call.result()
                refused.append(info.value)
                if len(refused) == 4:
                    break
            assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
            assert all("--max-in-flight 2" in e.details() for e in refused)
            assert (hold / "held").exists() and running.servicer.gate.in_flight == 2
            check = client.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=60)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            assert client.info().count == engine.count  # GetIndexInfo is never refused
            (hold / "release").touch()
            admitted = [call for call in calls if call.exception(timeout=120) is None]
            assert len(admitted) == 2 and all(call.result().results for call in admitted)
            assert running.servicer.gate.in_flight == 0
    finally:
        (hold / "release").touch()
        running.server.stop(0).wait()  # not running.stop(): the engine is the session's


def test_client_retries_busy_refusals_with_backoff_and_never_retries_writes(engine, photo_folder: Path, tmp_path: Path) -> None:
    """SearchClient lets gRPC resend a Search refused with RESOURCE_EXHAUSTED: with one request
    held in flight at --max-in-flight 1, a second Search is refused exactly 1 + retries times
    (counted by the server) before the caller sees the refusal; with retries=0, once."""
    from searcher.client import SearchClient
    hold, running = _server_with_request_hold(engine, tmp_path, max_in_flight=1)
    query = (photo_folder / "coffee.jpg").read_bytes()
    try:
        with SearchClient("127.0.0.1", running.port, timeout=120) as client, futures.ThreadPoolExecutor(1) as pool:
            admitted = pool.submit(client.search, query, top_k=1)
            for _ in range(600):  # wait until the first request is provably in flight
                if (hold / "held").exists():
                    break
                time.sleep(0.05)
            assert running.servicer.gate.in_flight == 1
            for retries, attempts in ((2, 3), (0, 1)):
                before = running.servicer.gate.refused
                with SearchClient("127.0.0.1", running.port, timeout=120, retries=retries) as second, \
                        pytest.raises(grpc.RpcError) as info:
                    second.search(query, top_k=1)
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert running.servicer.gate.refused - before == attempts
            (hold / "release").touch()
            assert admitted.result(timeout=120).results
    finally:
        (hold / "release").touch()
        running.server.stop(0).wait()
    with pytest.raises(ValueError, match="retries"):
        SearchClient("127.0.0.1", 1, retries=9)


def test_max_in_flight_must_leave_threads_for_health_checks(tmp_path: Path) -> None:
    assert ServerConfig(index=tmp_path).resolved_max_in_flight() == 12  # 16 workers, 4 kept
    with pytest.raises(ValueError, match="below --workers 4"):
        start_server(ServerConfig(index=tmp_path, workers=4, max_in_flight=4))
