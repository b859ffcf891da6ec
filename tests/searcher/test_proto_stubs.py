"""The committed gRPC stubs must be exactly what grpcio-tools generates from the .proto."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load_generate_module():
    spec = importlib.util.spec_from_file_location("proto_generate", REPO / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    generate = _load_generate_module()
    fresh = generate.generate(tmp_path)
    committed = generate.generated_files(REPO / "proto")
    assert len(fresh) == len(committed) == 3
    for new, old in zip(fresh, committed, strict=True):
        assert old.exists(), f"{old} is missing: run `python proto/generate.py`"
        assert new.read_text() == old.read_text(), (
            f"{old.relative_to(REPO)} is out of date with search.proto: run `python proto/generate.py`"
        )


def test_stubs_import_as_dffsearch_v1_and_carry_the_contract() -> None:
    from dffsearch.v1 import search_pb2, search_pb2_grpc

    service = search_pb2.DESCRIPTOR.services_by_name["SearchService"]
    assert [m.name for m in service.methods] == ["Search", "AddImages", "RemoveImages", "GetIndexInfo", "GetImage"]
    assert service.methods_by_name["AddImages"].client_streaming
    request = search_pb2.SearchRequest(image=b"x", top_k=3, query_expansion=5, localize=True)
    assert not request.HasField("box")
    request.box.CopyFrom(search_pb2.Box(x0=1, y0=2, x1=3, y1=4))
    decoded = search_pb2.SearchRequest.FromString(request.SerializeToString())
    assert (decoded.box.x0, decoded.box.y1, decoded.top_k) == (1.0, 4.0, 3)
    assert hasattr(search_pb2_grpc, "SearchServiceStub")
