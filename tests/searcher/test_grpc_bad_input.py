"""Every kind of bad input, over a real port: the right status, a message a person can act on,
the server keeps serving and the index is unchanged."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import grpc
import pytest
from dffsearch.v1 import search_pb2
from PIL import Image
from searcher_fixtures import jpeg_bytes, photo


@pytest.fixture
def coins(photo_folder: Path) -> bytes:
    return (photo_folder / "coins.jpg").read_bytes()


def _png(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def _expect(client, code: grpc.StatusCode, pattern: str, **search) -> None:
    count = client.info().count
    with pytest.raises(grpc.RpcError) as info:
        client.search(**search)
    assert info.value.code() == code, info.value.details()
    assert re.search(pattern, info.value.details()), info.value.details()
    # still serving, nothing changed
    assert client.info().count == count
    assert client.search(jpeg_bytes(photo("coins")), top_k=1).results[0].rank == 1


def test_empty_bytes(client) -> None:
    _expect(client, grpc.StatusCode.INVALID_ARGUMENT, r"empty input \(0 bytes\)", image=b"")


def test_bytes_that_are_not_an_image(client) -> None:
    _expect(client, grpc.StatusCode.INVALID_ARGUMENT, r"not a decodable image.*JPEG, PNG", image=b"%PDF-1.4 hello" * 10)


def test_truncated_jpeg(client, coins: bytes) -> None:
    _expect(client, grpc.StatusCode.INVALID_ARGUMENT, r"damaged|truncated", image=coins[: len(coins) // 2])


def test_one_pixel_image(client) -> None:
    _expect(client, grpc.StatusCode.INVALID_ARGUMENT, r"1x1 is too small", image=_png(Image.new("RGB", (1, 1))))


def test_decompression_bomb(client) -> None:
    bomb = _png(Image.new("1", (9000, 9000)))  # 81 Mpixel that compresses to a few KB
    assert len(bomb) < 100_000
    _expect(client, grpc.StatusCode.INVALID_ARGUMENT, r"exceeds the limit.*downscale.*--max-pixels", image=bomb)


@pytest.mark.parametrize(
    ("box", "pattern"),
    [((100, 10, 100, 50), r"is empty: need x0 < x1"), ((10, 50, 90, 20), r"is empty"),
     ((0, 0, 5000, 50), r"outside the 320x\d+ image")],
)
def test_bad_box(client, coins: bytes, box, pattern: str) -> None:
    _expect(client, grpc.StatusCode.INVALID_ARGUMENT, pattern, image=coins, box=box)


@pytest.mark.parametrize("top_k", [0, 21])
def test_top_k_out_of_range(client, coins: bytes, top_k: int) -> None:
    _expect(client, grpc.StatusCode.INVALID_ARGUMENT, r"top_k=\d+ is out of range; ask for 1 to 20", image=coins, top_k=top_k)


def test_oversized_message(client) -> None:
    # the test server accepts 1 MiB; 2 MiB of bytes never reach the handler
    _expect(client, grpc.StatusCode.RESOURCE_EXHAUSTED, r"larger than max", image=b"\xff" * (2 << 20))


def _requests_counted(server, method: str, code: str) -> float:
    match = re.search(
        rf'dffsearch_requests_total{{code="{code}",method="{method}"}} ([0-9.e+]+)', server.metrics.exposition()
    )
    return float(match.group(1)) if match else 0.0


def test_the_server_stops_work_whose_deadline_has_passed(server, client, coins: bytes, tmp_path: Path) -> None:
    """The request is held in flight (test hook) until its client has given up; released, the
    server must notice the deadline itself and record DEADLINE_EXCEEDED, instead of computing an
    answer nobody waits for (which it would record as OK)."""
    from searcher.servicer import RequestHold

    before = _requests_counted(server, "Search", "DEADLINE_EXCEEDED")
    ok_before = _requests_counted(server, "Search", "OK")
    server.servicer.hold = RequestHold(tmp_path)
    try:
        with pytest.raises(grpc.RpcError) as info:
            client.search(coins, top_k=10, localize=True, timeout=1.0)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert (tmp_path / "held").exists(), "the request never reached the handler"
    finally:
        server.servicer.hold = None
        (tmp_path / "release").touch()
    give_up = time.monotonic() + 60
    while _requests_counted(server, "Search", "DEADLINE_EXCEEDED") == before and time.monotonic() < give_up:
        time.sleep(0.05)
    assert _requests_counted(server, "Search", "DEADLINE_EXCEEDED") == before + 1
    assert _requests_counted(server, "Search", "OK") == ok_before


def test_localizing_more_results_than_the_server_allows(client, engine, coins: bytes) -> None:
    saved = engine.config.max_localize
    engine.config.max_localize = 3
    try:
        _expect(client, grpc.StatusCode.INVALID_ARGUMENT, r"at most 3 results.*--max-localize",
                image=coins, top_k=4, localize=True)
        assert len(client.search(coins, top_k=3, localize=True).results) == 3
    finally:
        engine.config.max_localize = saved


@pytest.mark.parametrize(("limit", "pattern"), [
    ({"max_add_images": 1}, r"at most 1 images per call \(dff-serve --max-add-images\)"),
    ({"max_add_bytes": 20_000}, r"at most 0 MiB of images per call \(dff-serve --max-add-mb\)"),
])
def test_add_images_over_the_server_caps(server, client, limit: dict, pattern: str) -> None:
    from dataclasses import replace

    saved = server.servicer.limits
    server.servicer.limits = replace(saved, **limit)
    count = client.info().count
    try:
        with pytest.raises(grpc.RpcError) as info:
            client.add_images([("a", jpeg_bytes(photo("retina"))), ("b", jpeg_bytes(photo("grass")))])
    finally:
        server.servicer.limits = saved
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert re.search(pattern, info.value.details()) and "nothing was added" in info.value.details()
    assert client.info().count == count


def test_add_with_a_bad_image_changes_nothing(client) -> None:
    count = client.info().count
    with pytest.raises(grpc.RpcError) as info:
        client.add_images([("fine", jpeg_bytes(photo("retina"))), ("bad", b"garbage")])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "image 1 (key 'bad')" in info.value.details() and "nothing was added" in info.value.details()
    assert client.info().count == count


def test_remove_with_nothing_or_unknown_ids(client) -> None:
    count = client.info().count
    with pytest.raises(grpc.RpcError) as info:
        client.remove_images()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        client.remove_images(ids=[987654])
    assert info.value.code() == grpc.StatusCode.NOT_FOUND and "nothing was removed" in info.value.details()
    assert client.info().count == count


def test_metrics_count_requests_by_code_and_stages(server, client, coins: bytes) -> None:
    client.search(coins, top_k=2)
    with pytest.raises(grpc.RpcError):
        client.search(b"", top_k=2)
    text = server.metrics.exposition()
    assert 'dffsearch_requests_total{code="OK",method="Search"}' in text
    assert 'dffsearch_requests_total{code="INVALID_ARGUMENT",method="Search"}' in text
    for stage in ("decode", "forward", "nmf", "descriptor", "faiss"):
        assert f'dffsearch_stage_seconds_count{{stage="{stage}"}}' in text


def test_raw_stub_request_without_box_or_top_k(client, coins: bytes) -> None:
    # proto3 default top_k = 0 is refused like any other out-of-range value
    with pytest.raises(grpc.RpcError) as info:
        client.stub.Search(search_pb2.SearchRequest(image=coins), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_serve_threads_flag_and_its_old_name_and_verbose() -> None:
    from searcher.server import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(["--index", "x", "--threads", "1", "--verbose"]))
    assert (config.torch_threads, config.verbose) == (1, True)
    assert config_from_args(build_parser().parse_args(["--index", "x", "--torch-threads", "2"])).torch_threads == 2
    assert config_from_args(build_parser().parse_args(["--index", "x"])).torch_threads is None
