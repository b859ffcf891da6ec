"""The catalog: an embedded SQLite table of every image the index knows about.

`images(id INTEGER PRIMARY KEY, path TEXT, sha256 TEXT, width INT, height INT, status TEXT,
added_at REAL, generation INT, removed_generation INT)`. `status` is `indexed` (the id has a
vector) or `skipped:<reason>` (the file was seen but could not be decoded; kept so that ids stay
stable and the reason is inspectable).

Rows carry the generation that wrote them and, once removed, the generation that removed them.
A `Catalog` opened at generation G (the manifest's) sees exactly the rows with
`generation <= G` that were not removed at or before G, so rows a writer committed for a
generation whose manifest never reached the disk stay invisible, and `reconcile(G)` (run by the
next writer under the index lock) drops them. Every change happens in one transaction.

Catalogs written before generations existed (format 1: no generation columns, `path UNIQUE`)
are read as they are (every row visible) and rebuilt in one transaction by `migrate()`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .storage import crash_point

STATUS_INDEXED = "indexed"
SKIPPED_PREFIX = "skipped:"
_COLUMNS = "id, path, sha256, width, height, status, added_at, generation"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    width INT,
    height INT,
    status TEXT NOT NULL,
    added_at REAL NOT NULL,
    generation INT NOT NULL DEFAULT 0,
    removed_generation INT
);
CREATE INDEX IF NOT EXISTS images_sha256 ON images(sha256);
CREATE INDEX IF NOT EXISTS images_path ON images(path);
CREATE INDEX IF NOT EXISTS images_generation ON images(generation);
CREATE INDEX IF NOT EXISTS images_removed_generation ON images(removed_generation);
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
    generation: int = 0

    @property
    def indexed(self) -> bool:
        return self.status == STATUS_INDEXED


class Catalog:
    """A thread-safe handle on `catalog.sqlite` (the searcher calls it from gRPC worker threads).

    `generation`: the committed generation whose rows this handle shows (None: every row that is
    not marked removed, what a writer that has just reconciled sees).
    """

    def __init__(self, path: str | Path, readonly: bool = False, generation: int | None = None) -> None:
        self.path = Path(path)
        if readonly:
            if not self.path.is_file():
                raise FileNotFoundError(f"{self.path}: catalog missing")
            uri = f"file:{self.path}?mode=ro"
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self.generation = generation
        self._has_generations = self._detect_generations()
        if not readonly and self._has_generations:
            # a new catalog gets its table; an existing one the indexes reconcile() needs (O(log N));
            # in one transaction: one sync instead of one per statement (~75 -> ~15 ms per build)
            self._conn.executescript(f"BEGIN;{_SCHEMA}COMMIT;")

    def _detect_generations(self) -> bool:
        names = {r[1] for r in self._conn.execute("PRAGMA table_info(images)").fetchall()}
        if not names:
            return True
        return "generation" in names

    def set_generation(self, generation: int | None) -> None:
        """Show the rows of another committed generation (a migration may have happened since)."""
        with self._lock:
            self.generation = generation
            self._has_generations = self._detect_generations()

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- visibility ----------------------------------------------------------------------------

    def _visible(self) -> tuple[str, tuple]:
        """SQL condition (and its parameters) for the rows this handle shows."""
        # unary + keeps SQLite from using the generation indexes for these terms: "IS NULL" on
        # removed_generation matches almost every row, and that plan scanned the whole table
        # (measured: 2.5 s per add at 1M rows); lookups go by id, path or sha256 instead
        if not self._has_generations:
            return "1", ()
        if self.generation is None:
            return "+removed_generation IS NULL", ()
        g = int(self.generation)
        return "+generation <= ? AND (+removed_generation IS NULL OR +removed_generation > ?)", (g, g)

    def _columns(self) -> str:
        return _COLUMNS if self._has_generations else _COLUMNS.replace(", generation", ", 0")

    # -- writes (each one transaction) -----------------------------------------------------

    def _transaction(self, statements: Iterable[tuple[str, Sequence | list]]) -> None:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    if params and isinstance(params, list):
                        cur.executemany(sql, params)
                    elif not isinstance(params, list):
                        cur.execute(sql, params)
                crash_point("catalog: before commit")
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        crash_point("catalog: after commit")

    def apply(
        self,
        insert: Iterable[CatalogRow] = (),
        delete_ids: Iterable[int] = (),
        *,
        generation: int | None = None,
        remove_ids: Iterable[int] = (),
    ) -> None:
        """In one transaction: delete `delete_ids` (gone for every generation), mark `remove_ids`
        removed at `generation`, insert `insert` (written by `generation`, or by their own)."""
        self.migrate()
        rows = [(r.id, r.path, r.sha256, r.width, r.height, r.status, r.added_at,
                 r.generation if generation is None else int(generation)) for r in insert]
        marks = [(int(generation or 0), int(i)) for i in remove_ids]
        self._transaction([
            ("DELETE FROM images WHERE id = ?", [(int(i),) for i in delete_ids]),
            ("UPDATE images SET removed_generation = ? WHERE id = ?", marks),
            (f"INSERT INTO images ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows),
        ])

    def reconcile(self, generation: int) -> None:
        """Undo what a writer committed for a generation after `generation` (a crash before its
        manifest was renamed into place): its rows go, its removal marks are lifted."""
        self.migrate()
        g = int(generation)
        found = self._query("SELECT COUNT(*) FROM images WHERE generation > ? OR removed_generation > ?", (g, g))
        if found[0][0]:
            self._transaction([
                ("DELETE FROM images WHERE generation > ?", (g,)),
                ("UPDATE images SET removed_generation = NULL WHERE removed_generation > ?", (g,)),
            ])

    def purge_removed(self, up_to_generation: int) -> None:
        """Forget rows removed at or before `up_to_generation` (compaction; invisible already)."""
        self._transaction([("DELETE FROM images WHERE removed_generation <= ?", (int(up_to_generation),))])

    def migrate(self) -> None:
        """Rebuild a format-1 table (no generation columns, unique paths) in one transaction."""
        if self._has_generations:
            return
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.execute("ALTER TABLE images RENAME TO images_v1")
                cur.execute("DROP INDEX IF EXISTS images_sha256")
                for statement in _SCHEMA.strip().split(";"):
                    if statement.strip():
                        cur.execute(statement)
                cur.execute(
                    f"INSERT INTO images ({_COLUMNS}) SELECT id, path, sha256, width, height, status, added_at, 0 FROM images_v1"
                )
                cur.execute("DROP TABLE images_v1")
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            self._has_generations = True

    # -- reads -------------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _select(self, where: str, params: Sequence[object] = (), tail: str = "") -> list[CatalogRow]:
        visible, vparams = self._visible()
        sql = f"SELECT {self._columns()} FROM images WHERE ({where}) AND {visible} {tail}"
        return [CatalogRow(*r) for r in self._query(sql, (*params, *vparams))]

    def rows(self, ids: Sequence[int] | None = None) -> list[CatalogRow]:
        if ids is None:
            return self._select("1", (), "ORDER BY id")
        found = self.by_ids(ids)
        return [found[i] for i in ids if i in found]

    def by_ids(self, ids: Sequence[int]) -> dict[int, CatalogRow]:
        out: dict[int, CatalogRow] = {}
        wanted = sorted({int(i) for i in ids if int(i) >= 0})
        for start in range(0, len(wanted), 900):  # SQLite's bound-parameter limit
            chunk = wanted[start:start + 900]
            for r in self._select(f"id IN ({','.join('?' * len(chunk))})", chunk):
                out[r.id] = r
        return out

    def by_path(self, path: str) -> CatalogRow | None:
        found = self._select("path = ?", (path,))
        return found[0] if found else None

    def indexed_by_sha256(self, shas: Iterable[str] | None = None) -> dict[str, int]:
        """sha256 -> id of the indexed images (only those with the given `shas`: an index lookup
        per value instead of a scan of the whole table)."""
        if shas is None:
            return {r.sha256: r.id for r in self._select("status = ?", (STATUS_INDEXED,))}
        wanted = sorted(set(shas))
        out: dict[str, int] = {}
        for start in range(0, len(wanted), 900):
            chunk = wanted[start:start + 900]
            for r in self._select(f"status = ? AND sha256 IN ({','.join('?' * len(chunk))})", (STATUS_INDEXED, *chunk)):
                out[r.sha256] = r.id
        return out

    def indexed_ids(self) -> np.ndarray:
        return np.array([r.id for r in self._select("status = ?", (STATUS_INDEXED,), "ORDER BY id")], dtype=np.int64)

    def max_id(self) -> int:
        value = self._query("SELECT MAX(id) FROM images")[0][0]
        return -1 if value is None else int(value)

    def count(self, status: str | None = STATUS_INDEXED) -> int:
        visible, vparams = self._visible()
        if status is None:
            return int(self._query(f"SELECT COUNT(*) FROM images WHERE {visible}", vparams)[0][0])
        sql = f"SELECT COUNT(*) FROM images WHERE status = ? AND {visible}"
        return int(self._query(sql, (status, *vparams))[0][0])

    def skipped_reasons(self) -> dict[str, int]:
        visible, vparams = self._visible()
        found = self._query(
            f"SELECT status, COUNT(*) FROM images WHERE status LIKE ? AND {visible} GROUP BY status",
            (SKIPPED_PREFIX + "%", *vparams),
        )
        return {status[len(SKIPPED_PREFIX):]: int(n) for status, n in found}
