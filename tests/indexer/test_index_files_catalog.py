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
            # deleting 0 and inserting a duplicate path in one transaction: neither happens
            catalog.apply(insert=[_row(3, "b", "h3")], delete_ids=[0])
        assert [r.id for r in catalog.rows()] == [0, 1, 2]
        assert catalog.indexed_by_sha256() == {"h0": 0, "h1": 1}
        assert catalog.skipped_reasons() == {"truncated": 1}
        assert catalog.count() == 2 and catalog.count(None) == 3 and catalog.max_id() == 2
        np.testing.assert_array_equal(catalog.indexed_ids(), [0, 1])
        assert catalog.by_path("b").id == 1 and catalog.by_path("zz") is None
        assert sorted(catalog.by_ids([2, 0, 99, -1])) == [0, 2]
