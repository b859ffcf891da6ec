"""`index_info` without loading the FAISS index; `add_images` reading, hashing, decoding once."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import types
from pathlib import Path

import pytest
from indexer_fixtures import write_variants

from indexer.build import build_index
from indexer.cli import main as cli_main
from indexer.manifest import build_extractor
from indexer.open_index import index_info, open_index
from indexer.update import add_images, remove_images

# the modules themselves: the package re-exports a function named open_index
files_module, open_index_module, stages_module = (sys.modules[f"indexer.{m}"] for m in ("files", "open_index", "stages"))


def test_info_answers_from_manifest_catalog_and_faiss_header_without_loading_the_index(
    photo_folder: Path, tmp_path: Path, tiny_config, monkeypatch, capsys
) -> None:
    import faiss

    out = tmp_path / "index"
    (photo_folder / "broken.jpg").write_bytes(b"")  # a skipped file in the catalog
    build_index(photo_folder, out, tiny_config, progress=False)
    assert remove_images(out, ids=[0, 5]) == 2  # ntotal (6) now differs from the files (8)
    with open_index(out) as index:
        expected_live = {
            "vectors_in_faiss": index.count,
            "catalog_indexed": index.catalog.count(),
            "catalog_skipped": index.catalog.skipped_reasons(),
        }
        manifest = dict(index.manifest)
    assert expected_live["vectors_in_faiss"] == 6 and expected_live["catalog_skipped"] == {"empty": 1}

    def no_full_read(*_args, **_kwargs):
        raise AssertionError("index_info loaded the FAISS index")

    monkeypatch.setattr(faiss, "read_index", no_full_read)
    monkeypatch.setattr(open_index_module, "read_faiss_index", no_full_read)
    info = index_info(out)
    assert info["live"] == expected_live
    assert set(info) == set(manifest) | {"index_dir", "live", "files", "factor_rows_on_disk"}
    assert {k: info[k] for k in manifest} == manifest
    assert info["index_dir"] == str(out)
    files = [p for p in [*out.iterdir(), *(out / "segments").iterdir()] if p.is_file() and not p.name.startswith(".")]
    assert info["files"] == {p.relative_to(out).as_posix(): p.stat().st_size for p in files}
    assert "segments/00000002.removed.npy" in info["files"]  # the removal's tombstone
    assert cli_main(["info", str(out)]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(info))

    # only the header of index.faiss is read: an index cut after 16 bytes still reports its count
    # (open_index, which loads it, fails on that file)
    cut = tmp_path / "cut"
    shutil.copytree(out, cut)
    with open(cut / "index.faiss", "r+b") as handle:
        handle.truncate(16)
    cut_info = index_info(cut)
    assert cut_info["live"] == expected_live and cut_info["files"]["index.faiss"] == 16
    monkeypatch.undo()
    with pytest.raises(RuntimeError):
        open_index(cut)


def test_add_reads_hashes_and_decodes_each_file_once(photo_folder: Path, tmp_path: Path, tiny_config, monkeypatch) -> None:
    out = tmp_path / "index"
    build_index(photo_folder, out, tiny_config, progress=False)
    extractor = build_extractor(open_index(out).manifest)
    new = write_variants(tmp_path / "new", 3, size=96)
    duplicate = tmp_path / "new" / "z-coffee-copy.jpg"
    shutil.copy(photo_folder / "coffee.jpg", duplicate)

    hashed: list[int] = []
    decoded: list[int] = []
    opened: list[str] = []

    def counting_sha256(*args):
        hashed.append(1)
        return hashlib.sha256(*args)

    real_decode, real_open = stages_module.decode_image, open

    def counting_decode(data, *args, **kwargs):
        decoded.append(1)
        return real_decode(data, *args, **kwargs)

    def counting_open(file, *args, **kwargs):
        if str(file).startswith(str(tmp_path / "new")):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    # every sha256 of the indexer goes through indexer.files (hash_file and sha256_bytes)
    monkeypatch.setattr(files_module, "hashlib", types.SimpleNamespace(sha256=counting_sha256, file_digest=hashlib.file_digest))
    monkeypatch.setattr(stages_module, "decode_image", counting_decode)
    monkeypatch.setattr("builtins.open", counting_open)
    summary = add_images(out, [tmp_path / "new"], extractor=extractor, progress=False)
    monkeypatch.undo()

    assert summary.ids == [8, 9, 10] and [s.reason for s in summary.skipped] == ["duplicate"]
    assert len(hashed) == 4  # one hash per input file (3 new + 1 duplicate), not 2 or 3 per file
    assert len(decoded) == 3  # the duplicate is never decoded
    assert sorted(opened) == sorted([str(p) for p in new] * 2 + [str(duplicate)])  # hash pass + decode pass
    with open_index(out) as index:
        rows = index.catalog.by_ids([8, 9, 10])
        assert [rows[i].path for i in (8, 9, 10)] == [str(p) for p in new]  # outside source_root: absolute
        assert [rows[i].sha256 for i in (8, 9, 10)] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in new]


def test_add_trusts_the_sha256_its_caller_vouches_for(photo_folder: Path, tmp_path: Path, tiny_config, monkeypatch) -> None:
    # the searcher's AddImages writes each upload from bytes it has hashed: no second hash here
    out = tmp_path / "index"
    build_index(photo_folder, out, tiny_config, progress=False)
    extractor = build_extractor(open_index(out).manifest)
    new = write_variants(tmp_path / "new", 3, size=96)
    vouched = {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in new[:2]}

    hashed: list[int] = []

    def counting_sha256(*args):
        hashed.append(1)
        return hashlib.sha256(*args)

    monkeypatch.setattr(files_module, "hashlib", types.SimpleNamespace(sha256=counting_sha256, file_digest=hashlib.file_digest))
    summary = add_images(out, new, extractor=extractor, progress=False, known_sha256=vouched)
    monkeypatch.undo()

    assert summary.ids == [8, 9, 10] and not summary.skipped
    assert len(hashed) == 1  # only the file nobody vouched for
    with open_index(out) as index:
        rows = index.catalog.by_ids([8, 9, 10])
        assert [rows[i].sha256 for i in (8, 9, 10)] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in new]
    # a vouched hash that is already indexed makes the file a duplicate without reading it
    again = tmp_path / "again.jpg"
    shutil.copy(new[0], again)
    summary = add_images(out, [again], extractor=extractor, progress=False, known_sha256={str(again): vouched[str(new[0])]})
    assert summary.ids == [] and [s.reason for s in summary.skipped] == ["duplicate"]
