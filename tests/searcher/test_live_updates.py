"""Live updates: AddImages / RemoveImages applied to the in-memory index of a running server give
the same index as the same changes made offline with `dff-index`, with per-input outcomes."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from searcher_fixtures import EXTRA_PHOTO, jpeg_bytes, photo

from indexer.cli import main as dff_index
from indexer.open_index import open_index


def _index_state(index) -> dict:
    rows = index.catalog.rows()
    ids = [r.id for r in rows if r.indexed]
    return {
        "generation": index.generation,
        "rows": [(r.id, r.path, r.sha256, r.status) for r in rows],
        "vectors": index.vectors(ids),
        "count": index.count,
    }


def _assert_same(a: dict, b: dict) -> None:
    assert a["rows"] == b["rows"] and a["count"] == b["count"] and a["generation"] == b["generation"]
    np.testing.assert_allclose(a["vectors"], b["vectors"], atol=1e-5)


def test_the_same_changes_live_over_grpc_and_offline_with_the_cli_give_the_same_index(
    index_copy: Path, photo_folder: Path, tmp_path: Path, capsys
) -> None:
    from dffsearch.v1 import search_pb2

    from searcher.client import SearchClient
    from searcher.engine import EngineConfig, SearchEngine
    from searcher.server import ServerConfig, start_server

    offline = tmp_path / "offline"
    shutil.copytree(index_copy, offline)
    uploads = [
        ("new-1", jpeg_bytes(photo(EXTRA_PHOTO))),
        ("new-2", jpeg_bytes(photo("chelsea").rotate(90, expand=True))),
        ("dup", (photo_folder / "coffee.jpg").read_bytes()),
        ("bad", b"not an image"),
    ]
    engine = SearchEngine(EngineConfig(index_dir=index_copy))
    running = start_server(ServerConfig(index=index_copy, port=0), engine=engine)
    try:
        with SearchClient("127.0.0.1", running.port, timeout=300) as client:
            before = engine.index
            reply = client.add_images(uploads, skip_invalid=True)
            outcomes = [(a.key, a.outcome, a.reason) for a in reply.added]
            assert outcomes == [
                ("new-1", search_pb2.ADDED, ""), ("new-2", search_pb2.ADDED, ""),
                ("dup", search_pb2.DUPLICATE, ""), ("bad", search_pb2.SKIPPED, "not-an-image"),
            ]
            coffee = next(a for a in reply.added if a.key == "dup")
            assert coffee.duplicate and coffee.path == str(photo_folder / "coffee.jpg") and coffee.id >= 0
            assert engine.index is before  # applied in place, not reloaded
            new_ids = sorted(a.id for a in reply.added if a.outcome == search_pb2.ADDED)
            assert new_ids == [10, 11] and reply.count == 12 and reply.generation == 2
            removed = client.remove_images(ids=[new_ids[0], 3])
            assert removed.removed == 2 and removed.count == 10 and removed.generation == 3
            live = _index_state(engine.index)
            hits = client.search(uploads[1][1], top_k=3).results
    finally:
        running.server.stop(0).wait()
        engine.close()
    # the live in-memory state is what a reopen of the same folder gives
    with open_index(index_copy) as reopened:
        _assert_same(live, _index_state(reopened))

    # offline: the same files (the server stores uploads as uploads/<sha256>.jpg) with the CLI,
    # in the server's order (sorted file names)
    (offline / "uploads").mkdir()
    files = []
    for _, data in uploads[:3]:
        target = offline / "uploads" / f"{hashlib.sha256(data).hexdigest()}.jpg"
        target.write_bytes(data)
        files.append(str(target))
    capsys.readouterr()
    assert dff_index(["add", str(offline), *sorted(files), "--json", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    by_path = {o["path"]: (o["outcome"], o["id"]) for o in printed["inputs"]}
    assert sorted(by_path.values()) == sorted([("added", 10), ("added", 11), ("duplicate", coffee.id)])
    assert dff_index(["remove", str(offline), "--ids", str(new_ids[0]), "3"]) == 0
    with open_index(offline) as index:
        _assert_same(live, _index_state(index))
        _, ids = index.search(index.vectors([hits[0].id]), 3)
        assert [h.id for h in hits] == ids[0].tolist()
