"""Pure parts: finding files, the catalog path convention, the SQLite catalog."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from indexer.catalog import Catalog, CatalogRow
from indexer.files import catalog_path, expand_inputs, iter_image_files, resolve_catalog_path


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_iter_image_files_is_recursive_case_insensitive_sorted_and_skips_hidden_and_excluded(tmp_path: Path) -> None:
    for rel in ["b.JPG", "a.jpeg", "z/c.png", "z/y/d.WebP", "notes.txt", ".hidden.jpg", ".cache/e.jpg", "out/f.jpg", "g.gif"]:
        _touch(tmp_path / rel)
    found = [p.relative_to(tmp_path).as_posix() for p in iter_image_files(tmp_path, exclude=[tmp_path / "out"])]
    assert found == ["a.jpeg", "b.JPG", "z/c.png", "z/y/d.WebP"]


def test_iter_image_files_refuses_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        list(iter_image_files(tmp_path / "nope"))


def test_expand_inputs_mixes_files_and_folders_without_duplicates(tmp_path: Path) -> None:
    a = _touch(tmp_path / "d" / "a.jpg")
    b = _touch(tmp_path / "b.png")
    assert expand_inputs([tmp_path / "d", b, a]) == sorted([a, b], key=lambda p: str(p.absolute()))
    with pytest.raises(FileNotFoundError, match="no such file"):
        expand_inputs([tmp_path / "missing.jpg"])


def test_catalog_paths_round_trip_for_collection_upload_and_outside_files(tmp_path: Path) -> None:
    root, index = tmp_path / "photos", tmp_path / "index"
    cases = {
        root / "sub" / "a.jpg": "sub/a.jpg",
        index / "uploads" / "u.jpg": "@index/uploads/u.jpg",
        tmp_path / "elsewhere" / "e.jpg": str(tmp_path / "elsewhere" / "e.jpg"),
    }
    for path, stored in cases.items():
        assert catalog_path(path, root, index) == stored
        assert resolve_catalog_path(stored, root, index) == str(path)


def _row(i: int, path: str, sha: str = "s", status: str = "indexed") -> CatalogRow:
    return CatalogRow(i, path, sha, 10, 20, status, 0.0)


def test_catalog_changes_are_all_or_nothing(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.sqlite") as catalog:
        catalog.apply(insert=[_row(0, "a", "h0"), _row(1, "b", "h1"), _row(2, "c", "h2", "skipped:truncated")])
        with pytest.raises(sqlite3.IntegrityError):
            # deleting 0 and inserting a duplicate id in one transaction: neither happens
            catalog.apply(insert=[_row(3, "d", "h3"), _row(1, "e", "h4")], delete_ids=[0])
        assert [r.id for r in catalog.rows()] == [0, 1, 2]
        assert catalog.indexed_by_sha256() == {"h0": 0, "h1": 1}
        assert catalog.skipped_reasons() == {"truncated": 1}
        assert catalog.count() == 2 and catalog.count(None) == 3 and catalog.max_id() == 2
        np.testing.assert_array_equal(catalog.indexed_ids(), [0, 1])
        assert catalog.by_path("b").id == 1 and catalog.by_path("zz") is None
        assert sorted(catalog.by_ids([2, 0, 99, -1])) == [0, 2]


def test_catalog_rows_are_seen_by_generation_reconciled_and_format_1_is_migrated(tmp_path: Path) -> None:
    with Catalog(tmp_path / "c.sqlite") as catalog:
        catalog.apply(insert=[_row(0, "a", "h0"), _row(1, "b", "h1")], generation=1)
        # generation 2 replaces "b" (same path, new content) and adds "c"
        catalog.apply(insert=[_row(2, "b", "h2"), _row(3, "c", "h3")], generation=2, remove_ids=[1])
        catalog.set_generation(1)
        assert catalog.by_path("b").id == 1 and catalog.count() == 2 and catalog.indexed_by_sha256(["h1", "h2"]) == {"h1": 1}
        catalog.set_generation(2)
        assert catalog.by_path("b").id == 2 and catalog.count() == 3 and sorted(catalog.by_ids([0, 1, 2, 3])) == [0, 2, 3]
        # generation 2's manifest never made it: reconcile brings back exactly generation 1
        catalog.reconcile(1)
        catalog.set_generation(None)
        assert [(r.id, r.path) for r in catalog.rows()] == [(0, "a"), (1, "b")]
    # a format-1 catalog (unique paths, no generations) reads as it is and migrates in place
    legacy = tmp_path / "legacy.sqlite"
    conn = sqlite3.connect(legacy)
    conn.executescript(
        "CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL, sha256 TEXT NOT NULL, width INT, "
        "height INT, status TEXT NOT NULL, added_at REAL NOT NULL); INSERT INTO images VALUES (0, 'a', 'h0', 1, 2, 'indexed', 0.0);"
    )
    conn.commit()
    conn.close()
    with Catalog(legacy, readonly=True, generation=0) as reader, Catalog(legacy) as writer:
        assert [r.path for r in reader.rows()] == ["a"]
        writer.apply(insert=[_row(1, "a", "h1")], generation=1, remove_ids=[0])  # migrates first
        reader.set_generation(0)
        assert [(r.id, r.generation) for r in reader.rows()] == [(0, 0)]
        reader.set_generation(1)
        assert [(r.id, r.generation) for r in reader.rows()] == [(1, 1)]
