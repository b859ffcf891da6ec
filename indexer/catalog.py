"""The catalog: an embedded SQLite table of every image the index knows about.

`images(id INTEGER PRIMARY KEY, path TEXT UNIQUE, sha256 TEXT, width INT, height INT, status TEXT,
added_at REAL)`. `status` is `indexed` (the id has a vector in the FAISS index) or
`skipped:<reason>` (the file was seen but could not be decoded; kept so that ids stay stable and
the reason is inspectable). Every change happens in one transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STATUS_INDEXED = "indexed"
SKIPPED_PREFIX = "skipped:"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path TEXT UNIQUE NOT NULL,
    sha256 TEXT NOT NULL,
    width INT,
    height INT,
    status TEXT NOT NULL,
    added_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS images_sha256 ON images(sha256);
"""


@dataclass(frozen=True)
class CatalogRow:
    id: int
    path: str
    sha256: str
    width: int | None
    height: int | None
    status: str
    added_at: float

    @property
    def indexed(self) -> bool:
        return self.status == STATUS_INDEXED


class Catalog:
    """A thread-safe handle on `catalog.sqlite` (the searcher calls it from gRPC worker threads)."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"{self.path}: catalog missing")
            uri = f"file:{self.path}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._conn.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writes (each one transaction) -----------------------------------------------------

    def apply(self, insert: Iterable[CatalogRow] = (), delete_ids: Iterable[int] = ()) -> None:
        """Delete then insert, atomically: either all of it is visible afterwards or none."""
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany("DELETE FROM images WHERE id = ?", [(int(i),) for i in delete_ids])
                cur.executemany(
                    "INSERT INTO images (id, path, sha256, width, height, status, added_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(r.id, r.path, r.sha256, r.width, r.height, r.status, r.added_at) for r in insert],
                )
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

    # -- reads -------------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def rows(self, ids: Sequence[int] | None = None) -> list[CatalogRow]:
        if ids is None:
            return [CatalogRow(*r) for r in self._query("SELECT * FROM images ORDER BY id")]
        found = self.by_ids(ids)
        return [found[i] for i in ids if i in found]

    def by_ids(self, ids: Sequence[int]) -> dict[int, CatalogRow]:
        out: dict[int, CatalogRow] = {}
        wanted = sorted({int(i) for i in ids if int(i) >= 0})
        for start in range(0, len(wanted), 900):  # SQLite's bound-parameter limit
            chunk = wanted[start:start + 900]
            marks = ",".join("?" * len(chunk))
            for r in self._query(f"SELECT * FROM images WHERE id IN ({marks})", chunk):
                out[r[0]] = CatalogRow(*r)
        return out

    def by_path(self, path: str) -> CatalogRow | None:
        found = self._query("SELECT * FROM images WHERE path = ?", (path,))
        return CatalogRow(*found[0]) if found else None

    def indexed_by_sha256(self) -> dict[str, int]:
        return {sha: i for i, sha in self._query("SELECT id, sha256 FROM images WHERE status = ?", (STATUS_INDEXED,))}

    def indexed_ids(self) -> np.ndarray:
        found = self._query("SELECT id FROM images WHERE status = ? ORDER BY id", (STATUS_INDEXED,))
        return np.array([r[0] for r in found], dtype=np.int64)

    def max_id(self) -> int:
        value = self._query("SELECT MAX(id) FROM images")[0][0]
        return -1 if value is None else int(value)

    def count(self, status: str | None = STATUS_INDEXED) -> int:
        if status is None:
            return int(self._query("SELECT COUNT(*) FROM images")[0][0])
        return int(self._query("SELECT COUNT(*) FROM images WHERE status = ?", (status,))[0][0])

    def skipped_reasons(self) -> dict[str, int]:
        found = self._query(
            "SELECT status, COUNT(*) FROM images WHERE status LIKE ? GROUP BY status", (SKIPPED_PREFIX + "%",)
        )
        return {status[len(SKIPPED_PREFIX):]: int(n) for status, n in found}
