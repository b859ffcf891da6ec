"""The service around the engine: health, reflection, auth, TLS, the dff-query CLI and --show."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from searcher_fixtures import jpeg_bytes, photo

from searcher.client import SearchClient, main
from searcher.server import ServerConfig, start_server


def test_health_is_serving_for_the_server_and_the_service(server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "dffsearch.v1.SearchService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(server) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([request]), timeout=10))
        names = {s.name for s in reply.list_services_response.service}
    assert {"dffsearch.v1.SearchService", "grpc.health.v1.Health"} <= names


def test_index_info(client, engine) -> None:
    info = client.info()
    assert info.count == engine.count == 10
    assert info.backbone == "efficientnet-lite0" and info.image_size == 160 and info.max_top_k == 20
    assert json.loads(info.manifest_json)["descriptor"]["k"] == 4


@pytest.fixture
def token_server(engine, tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    running = start_server(ServerConfig(index=engine.config.index_dir, port=0, token_file=token_file), engine=engine)
    yield running
    running.server.stop(0).wait()


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_missing_or_wrong_token_is_unauthenticated(token_server, token, photo_folder: Path) -> None:
    data = (photo_folder / "coins.jpg").read_bytes()
    with SearchClient("127.0.0.1", token_server.port, token=token) as client:
        for call in (lambda: client.search(data, top_k=1), client.info, lambda: client.remove_images(ids=[0])):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert ("missing" if token is None else "wrong bearer token") in info.value.details()
    with SearchClient("127.0.0.1", token_server.port, token="s3cret-token") as client:
        assert client.info().count == 10  # unchanged, and the right token works
        assert Path(client.search(data, top_k=1).results[0].path).stem == "coins"
        client.wait_until_serving(5)  # health stays open to probes


def test_non_loopback_server_refuses_writes_without_a_token(engine, photo_folder: Path) -> None:
    running = start_server(ServerConfig(index=engine.config.index_dir, host="0.0.0.0", port=0), engine=engine)
    try:
        with SearchClient("127.0.0.1", running.port) as client:
            with pytest.raises(grpc.RpcError) as info:
                client.add_images([("x", jpeg_bytes(photo("retina")))])
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "--token-file" in info.value.details()
            assert client.search((photo_folder / "coins.jpg").read_bytes(), top_k=1).results  # reads stay open
            assert client.info().count == 10
    finally:
        running.server.stop(0).wait()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI absent (needed to make a test certificate)")
def test_tls(engine, tmp_path: Path, photo_folder: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    running = start_server(
        ServerConfig(index=engine.config.index_dir, port=0, tls_cert=cert, tls_key=key), engine=engine
    )
    try:
        with SearchClient("127.0.0.1", running.port, tls_ca=cert) as client:
            hits = client.search((photo_folder / "chelsea.jpg").read_bytes(), top_k=1).results
            assert Path(hits[0].path).stem == "chelsea"
        with SearchClient("127.0.0.1", running.port, timeout=3) as plain, pytest.raises(grpc.RpcError):
            plain.info()  # a plaintext client cannot talk to the TLS port
    finally:
        running.server.stop(0).wait()


def test_dff_query_json_and_table(server, photo_folder: Path, capsys) -> None:
    query = photo_folder / "astronaut.jpg"
    assert main([str(query), "--port", str(server.port), "--top-k", "3", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in printed["results"]] == [1, 2, 3]
    assert Path(printed["results"][0]["path"]).stem == "astronaut" and printed["results"][0]["box"] is None
    assert {"decode", "forward", "faiss"} <= set(printed["stages_ms"])
    assert main([str(query), "--port", str(server.port), "--top-k", "2", "--box", "100,0,250,200"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "id", "score", "box", "path"]
    assert table[1].split()[0] == "1" and table[1].endswith("astronaut.jpg")


def test_dff_query_reports_server_errors(server, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert main([str(empty), "--port", str(server.port)]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_dff_query_show_writes_a_figure(server, photo_folder: Path, tmp_path: Path, capsys) -> None:
    from PIL import Image

    out = tmp_path / "show.png"
    args = [str(photo_folder / "chelsea.jpg"), "--port", str(server.port), "--top-k", "4",
            "--box", "60,0,230,213", "--show", str(out), "--json"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert all(r["box"] is None for r in printed["results"])  # --show alone does not localize
    with Image.open(out) as figure:
        assert figure.size[0] > 500 and figure.size[1] > 400
    out.unlink()
    assert main([*args, "--localize"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert all(r["box"] is not None for r in printed["results"])
    assert out.is_file()


def test_prometheus_metrics_over_http(engine, photo_folder: Path) -> None:
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        metrics_port = sock.getsockname()[1]
    running = start_server(
        ServerConfig(index=engine.config.index_dir, port=0, metrics_port=metrics_port), engine=engine
    )
    try:
        with SearchClient("127.0.0.1", running.port) as client:
            client.search((photo_folder / "coffee.jpg").read_bytes(), top_k=2)
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert 'dffsearch_requests_total{code="OK",method="Search"} 1.0' in text
        assert 'dffsearch_stage_seconds_count{stage="forward"} 1.0' in text
        assert "dffsearch_indexed_images 10.0" in text
    finally:
        running.server.stop(0).wait()
        running._metrics_http[0].shutdown()
