"""Incremental changes to an existing index: `add_images` and `remove_images`.

Both hold an exclusive lock on the index directory, write the new `index.faiss` and
`vectors.npy` to temp files that replace the old ones, change the catalog in one SQLite
transaction and update the manifest's counts last. A reader that re-opens the index afterwards
sees the change; one that opened it before keeps a consistent old view (replaced files keep
their old inode).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .catalog import STATUS_INDEXED, Catalog, CatalogRow
from .config import IndexConfig
from .errors import IndexWriteError, NoImagesError
from .extraction import progress_bar, run_extraction
from .faiss_index import faiss_writer, read_faiss_index, remove_ids
from .files import catalog_path, expand_inputs, hash_file, resolve_catalog_path, stat_key
from .manifest import (
    CATALOG_NAME,
    FAISS_NAME,
    MANIFEST_NAME,
    VECTORS_NAME,
    WHITENING_NAME,
    build_extractor,
    check_manifest_matches,
    read_manifest,
)
from .stages import WorkItem
from .storage import AtomicGroup, exclusive_lock
from .summary import BuildSummary, SkippedFile


def _vectors_writer(old: np.ndarray, n_rows: int, updates: dict[int, np.ndarray], chunk: int = 65_536):
    """Writes vectors.npy with `n_rows` rows: the old rows, then `updates` (id -> vector or zeros)."""

    def write(temp: str) -> None:
        new = np.lib.format.open_memmap(temp, mode="w+", dtype=np.float32, shape=(n_rows, old.shape[1]))
        for start in range(0, min(len(old), n_rows), chunk):
            stop = min(start + chunk, len(old), n_rows)
            new[start:stop] = old[start:stop]
        for image_id, vector in updates.items():
            new[image_id] = vector
        new.flush()
        del new

    return write


def _commit(
    index_dir: Path,
    manifest: dict,
    catalog: Catalog,
    index,
    vectors_write,
    next_id: int,
    insert: Sequence[CatalogRow] = (),
    delete_ids: Sequence[int] = (),
) -> None:
    """Write index.faiss, vectors.npy, manifest.json to temp files, commit the catalog, then
    rename the three into place. A failure before the catalog commit changes nothing."""
    deleted = catalog.by_ids(delete_ids)
    skipped = catalog.skipped_reasons()
    for row in deleted.values():
        if not row.indexed:
            skipped[row.status.split(":", 1)[1]] -= 1
    manifest = dict(manifest)
    manifest["counts"] = {
        "files": catalog.count(None) - len(deleted) + len(insert),
        "indexed": int(index.ntotal),
        "skipped": {reason: n for reason, n in skipped.items() if n > 0},
    }
    manifest["next_id"] = next_id
    manifest["updated_at"] = time.time()
    with AtomicGroup() as group:
        group.write(index_dir / FAISS_NAME, faiss_writer(index))
        group.write(index_dir / VECTORS_NAME, vectors_write, suffix=".npy")
        group.write_json(index_dir / MANIFEST_NAME, manifest)
        try:
            catalog.apply(insert=insert, delete_ids=delete_ids)
        except sqlite3.Error as exc:
            raise IndexWriteError(
                f"cannot update {index_dir / CATALOG_NAME}: {exc}; free disk space (nothing was changed)"
            ) from exc
        group.commit()


def add_images(
    index_dir: str | Path,
    paths: Iterable[str | Path],
    *,
    extractor=None,
    progress: bool = True,
    config: IndexConfig | None = None,
    known_sha256: Mapping[str, str] | None = None,
) -> BuildSummary:
    """Add image files (or folders, walked recursively) to an index; returns the new ids.

    Files whose sha256 is already indexed are skipped (reason `duplicate`); a file whose catalog
    path is indexed with other content replaces the old entry (old id removed, new id given).
    Undecodable files are skipped with their reason and not recorded. A passed-in `extractor`
    is reused after `check_manifest_matches` (raises `ManifestMismatchError` naming the setting).
    `known_sha256` maps a file path (as given) to the sha256 of its content, for a caller that has
    just written the file from bytes it hashed (the searcher's AddImages): the file is then not
    hashed again. The caller vouches for it; every other file is hashed here.
    """
    started = time.perf_counter()
    index_dir = Path(os.path.abspath(index_dir))
    runtime = config or IndexConfig()
    manifest = read_manifest(index_dir)
    if extractor is not None:
        check_manifest_matches(manifest, extractor, index_dir)
    files = expand_inputs(paths)
    if not files:
        raise NoImagesError("no image files given to add (looked for .jpg .jpeg .png .webp in folders)")
    summary = BuildSummary(index_dir=str(index_dir))
    with exclusive_lock(index_dir):
        manifest = read_manifest(index_dir)  # re-read under the lock
        source_root = manifest["source_root"]
        with Catalog(index_dir / CATALOG_NAME) as catalog:
            known = catalog.indexed_by_sha256()
            next_id = max(int(manifest.get("next_id", 0)), catalog.max_id() + 1)
            items: list[WorkItem] = []
            replaced_by_path: dict[str, int] = {}
            seen: dict[str, str] = {}
            vouched = {os.path.abspath(p): sha for p, sha in (known_sha256 or {}).items()}
            for path in files:
                try:
                    if os.path.abspath(path) in vouched:
                        sha, hashed_key = vouched[os.path.abspath(path)], stat_key(os.stat(path))
                    else:
                        sha, hashed_key = hash_file(path)  # the reader reuses it: each file hashed once
                except OSError as exc:
                    summary.skipped.append(SkippedFile(str(path), "unreadable", f"{path}: {exc.strerror or exc}"))
                    continue
                if sha in known:
                    summary.skipped.append(SkippedFile(str(path), "duplicate", f"{path}: already indexed as id {known[sha]}"))
                    continue
                if sha in seen:
                    summary.skipped.append(SkippedFile(str(path), "duplicate", f"{path}: same content as {seen[sha]}"))
                    continue
                seen[sha] = str(path)
                stored = catalog_path(path, source_root, index_dir)
                previous = catalog.by_path(stored)
                if previous is not None:
                    replaced_by_path[stored] = previous.id
                items.append(WorkItem(len(items), path, stored, sha, hashed_key))  # provisional id: position
            if not items:
                summary.seconds = time.perf_counter() - started
                summary.total_indexed = catalog.count()
                return summary
            if extractor is None or runtime.threads:  # a server's add keeps the server's settings
                from descriptors.threads import setup_threads

                setup_threads(runtime.threads)
            if extractor is None:
                from descriptors.nmf import set_sparse_solver

                set_sparse_solver(runtime.nmf_solver)
            if extractor is None:
                extractor = build_extractor(manifest, device=runtime.device)
            whitening = None
            if int(manifest["whitening"].get("dim", 0)) > 0:
                from descriptors.whitening import PCAWhitening

                whitening = PCAWhitening.load(index_dir / WHITENING_NAME)
            vectors_by_item, decoded_all = _extract(items, extractor, whitening, manifest, runtime, progress)
            vectors: dict[int, np.ndarray] = {}
            now = time.time()
            new_rows: list[CatalogRow] = []
            for d in decoded_all:
                if d.ok:
                    # ids are given to the images that made it, in input order (failures use none)
                    new_id = next_id + len(new_rows)
                    vectors[new_id] = vectors_by_item.pop(d.item.id)
                    new_rows.append(CatalogRow(new_id, d.item.stored_path, d.sha256, d.width, d.height, STATUS_INDEXED, now))
                else:
                    summary.skipped.append(SkippedFile(str(d.item.path), str(d.reason), d.message or ""))
            new_ids = np.array([r.id for r in new_rows], dtype=np.int64)
            # a path whose new content failed to decode keeps its old entry
            new_paths = {r.path for r in new_rows}
            replaced = sorted(old for path, old in replaced_by_path.items() if path in new_paths)
            index = read_faiss_index(index_dir / FAISS_NAME)
            old_vectors = np.load(index_dir / VECTORS_NAME, mmap_mode="r")
            if replaced:
                keep = np.setdiff1d(catalog.indexed_ids(), replaced)
                index = remove_ids(index, np.array(replaced, np.int64), old_vectors, keep, manifest["faiss"]["factory"])
            if len(new_ids):
                index.add_with_ids(np.ascontiguousarray(np.stack([vectors[i] for i in new_ids.tolist()])), new_ids)
            new_next_id = int(max(next_id, (new_ids.max() + 1) if len(new_ids) else next_id))
            updates = {int(i): vectors[int(i)] for i in new_ids}
            updates |= {int(i): np.zeros(old_vectors.shape[1], np.float32) for i in replaced}
            _commit(
                index_dir, manifest, catalog, index, _vectors_writer(old_vectors, new_next_id, updates), new_next_id,
                insert=new_rows, delete_ids=replaced,
            )
            del old_vectors
            summary.indexed = len(new_rows)
            summary.ids = new_ids.tolist()
            summary.total_indexed = int(index.ntotal)
    summary.seconds = time.perf_counter() - started
    summary.processed_this_run = len(items)
    summary.factory = manifest["faiss"]["factory"]
    summary.dim = int(manifest["dim"])
    return summary


def _extract(items: list[WorkItem], extractor, whitening, manifest: dict, runtime: IndexConfig, progress: bool):
    from descriptors.aggregate import aggregate_rows

    collected: list = []

    def writer(_group: int, decoded, results) -> None:
        collected.extend(zip(decoded, results, strict=True))

    with progress_bar(len(items), 0, progress, "add") as bar:
        run_extraction(
            [(0, items)], extractor, writer, runtime,
            stores_rows=True, max_pixels=int(manifest.get("max_pixels", runtime.max_pixels)), bar=bar,
        )
    vectors = {d.item.id: aggregate_rows(rows, whitening) for d, rows in collected if d.ok}
    return vectors, [d for d, _ in collected]


def remove_images(
    index_dir: str | Path, ids: Sequence[int] | None = None, paths: Sequence[str | Path] | None = None
) -> int:
    """Remove images by id and/or path (absolute, or as stored in the catalog); returns how many
    indexed images were removed. Unknown ids/paths are ignored (they count 0)."""
    index_dir = Path(os.path.abspath(index_dir))
    with exclusive_lock(index_dir):
        manifest = read_manifest(index_dir)
        with Catalog(index_dir / CATALOG_NAME) as catalog:
            wanted: set[int] = {int(i) for i in (ids or [])}
            for path in paths or []:
                for stored in (catalog_path(path, manifest["source_root"], index_dir), str(path)):
                    row = catalog.by_path(stored)
                    if row is not None:
                        wanted.add(row.id)
                        break
            rows = catalog.by_ids(sorted(wanted))
            if not rows:
                return 0
            indexed = np.array(sorted(i for i, r in rows.items() if r.indexed), np.int64)
            index = read_faiss_index(index_dir / FAISS_NAME)
            old_vectors = np.load(index_dir / VECTORS_NAME, mmap_mode="r")
            if len(indexed):
                keep = np.setdiff1d(catalog.indexed_ids(), indexed)
                index = remove_ids(index, indexed, old_vectors, keep, manifest["faiss"]["factory"])
                zeros = np.zeros(old_vectors.shape[1], np.float32)
                updates = {int(i): zeros for i in indexed}
            else:
                updates = {}
            _commit(
                index_dir, manifest, catalog, index, _vectors_writer(old_vectors, len(old_vectors), updates),
                int(manifest.get("next_id", 0)), delete_ids=sorted(rows),
            )
            del old_vectors
            return len(indexed)


def resolve_paths(index_dir: str | Path, stored: Sequence[str]) -> list[str]:
    manifest = read_manifest(index_dir)
    return [resolve_catalog_path(s, manifest["source_root"], index_dir) for s in stored]
