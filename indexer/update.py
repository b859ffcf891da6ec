"""Incremental changes to an existing index: `add_images`, `remove_images` (and `compact`).

Each one is one new generation (`generations.commit_generation`): under an exclusive lock on the
index directory it writes a new vector segment (add) or tombstone (remove) of the batch's size,
commits the catalog rows marked with the new generation, and renames the manifest naming that
generation into place, the one commit point. Nothing proportional to the index's size is read
or written: the FAISS checkpoint is not touched (readers add the segments after it on open, and
`dff-index compact` folds them in). A reader that opened the index before keeps its generation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .catalog import STATUS_INDEXED, Catalog, CatalogRow
from .config import IndexConfig
from .errors import NoImagesError
from .extraction import progress_bar, run_extraction
from .factor_rows import encode_rows, has_factor_rows, load_codec, pack
from .files import catalog_path, expand_inputs, hash_file, resolve_catalog_path, stat_key
from .generations import Commit, begin_write, commit_generation, remove_unreferenced
from .graph import DEFAULT_GRAPH_K
from .manifest import (
    CATALOG_NAME,
    WHITENING_NAME,
    build_extractor,
    check_manifest_matches,
    read_manifest,
)
from .stages import WorkItem
from .storage import exclusive_lock
from .summary import BuildSummary, IdRanges


def _hash_inputs(files: list[Path], vouched: Mapping[str, str], summary: BuildSummary) -> list[tuple[Path, str, tuple[int, int]]]:
    hashed = []
    for path in files:
        try:
            if os.path.abspath(path) in vouched:
                sha, hashed_key = vouched[os.path.abspath(path)], stat_key(os.stat(path))
            else:
                sha, hashed_key = hash_file(path)  # the reader reuses it: each file hashed once
        except OSError as exc:
            summary.skip(path, "unreadable", f"{path}: {exc.strerror or exc}")
            continue
        hashed.append((path, sha, hashed_key))
    return hashed


def add_images(
    index_dir: str | Path,
    paths: Iterable[str | Path],
    *,
    extractor=None,
    progress: bool = True,
    config: IndexConfig | None = None,
    known_sha256: Mapping[str, str] | None = None,
    check: Callable[[], None] | None = None,
) -> BuildSummary:
    """Add image files (or folders, walked recursively) to an index; returns the new ids.

    Files whose sha256 is already indexed are skipped (reason `duplicate`); a file whose catalog
    path is indexed with other content replaces the old entry (old id removed, new id given).
    Undecodable files are skipped with their reason and not recorded. `summary.inputs` says, for
    each input file in order, the id it got, the id it duplicates, or why it was skipped;
    `summary.commit` is the generation written (for a live reader's `OpenIndex.apply`).
    A passed-in `extractor` is reused after `check_manifest_matches` (raises
    `ManifestMismatchError` naming the setting). `known_sha256` maps a file path (as given) to the
    sha256 of its content, for a caller that has just written the file from bytes it hashed (the
    searcher's AddImages): the file is then not hashed again. The caller vouches for it.
    `check` is called after each image is encoded; an exception it raises (the searcher: the
    client's deadline passed) stops the add before anything is committed and propagates.
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
    vouched = {os.path.abspath(p): sha for p, sha in (known_sha256 or {}).items()}
    with exclusive_lock(index_dir), Catalog(index_dir / CATALOG_NAME) as catalog:
        manifest = begin_write(index_dir, catalog)
        source_root = manifest["source_root"]
        next_id = max(int(manifest.get("next_id", 0)), catalog.max_id() + 1)
        hashed = _hash_inputs(files, vouched, summary)
        items: list[WorkItem] = []
        replaced_by_path: dict[str, CatalogRow] = {}
        accepted = _accept_new_content(
            catalog, [(path, sha) for path, sha, _ in hashed], source_root, index_dir, replaced_by_path, summary
        )
        for (path, sha, hashed_key), stored in zip(hashed, accepted, strict=True):
            if stored is not None:
                items.append(WorkItem(len(items), path, stored, sha, hashed_key))  # provisional id: position
        if items:
            _index_items(index_dir, manifest, catalog, items, replaced_by_path, next_id, extractor, runtime, progress, summary, check)
        else:
            summary.total_indexed = int(manifest["counts"]["indexed"])
        summary.order_inputs(files)
    summary.seconds = time.perf_counter() - started
    summary.processed_this_run = len(items)
    summary.factory = manifest["faiss"]["factory"]
    summary.dim = int(manifest["dim"])
    return summary


def _index_items(index_dir, manifest, catalog, items, replaced_by_path, next_id, extractor, runtime, progress, summary, check=None) -> None:
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
    vectors_by_item, decoded_all, rows_by_item = _extract(items, extractor, whitening, manifest, runtime, progress, check)
    accepted, rows = [], []
    for d in decoded_all:
        if d.ok:
            accepted.append((d.item.path, d.item.stored_path, d.sha256, d.width, d.height, vectors_by_item.pop(d.item.id)))
            rows.append(rows_by_item.pop(d.item.id))
        else:
            summary.skip(d.item.path, str(d.reason), d.message or "")
    arrays = _factor_arrays(index_dir, manifest, rows, whitening)
    _commit_accepted(index_dir, manifest, catalog, accepted, replaced_by_path, next_id, summary, arrays)


def _factor_arrays(index_dir: Path, manifest: dict, rows: Sequence[np.ndarray | None] | None, whitening=None) -> dict:
    """The new segment's re-ranking rows (`indexer/factor_rows.py`) from the accepted images' local
    rows, encoded with the index's whitening and codec; {} when the index stores none or no rows
    were given (`add_vectors` without rows: those images have none to re-rank with)."""
    if not has_factor_rows(manifest) or rows is None or not len(rows):
        return {}
    if whitening is None and int(manifest["whitening"].get("dim", 0)) > 0:
        from descriptors.whitening import PCAWhitening

        whitening = PCAWhitening.load(index_dir / WHITENING_NAME)
    codec = load_codec(index_dir, manifest)
    empty = np.zeros((0, codec.dim), np.float16)
    return pack([empty if r is None or not len(r) else encode_rows(r, whitening, codec) for r in rows], codec.dim)


def _commit_accepted(index_dir, manifest, catalog, accepted, replaced_by_path, next_id, summary, arrays=None) -> None:
    """One generation with the `accepted` images ((path, stored path, sha256, width, height,
    vector), in order; ids given in that order) replacing the entries of their paths; `arrays`:
    the new segment's other row-aligned arrays (re-ranking rows), one entry per accepted image."""
    now = time.time()
    new_rows: list[CatalogRow] = []
    for path, stored, sha, width, height, _vector in accepted:
        new_rows.append(CatalogRow(next_id + len(new_rows), stored, sha, width, height, STATUS_INDEXED, now))
        summary.outcome(path, "added", new_rows[-1].id, sha)
    # a path whose new content failed to decode keeps its old entry
    new_paths = {r.path for r in new_rows}
    replaced = {row.id: row for path, row in replaced_by_path.items() if path in new_paths}
    commit = commit_generation(
        index_dir, manifest, catalog,
        insert=new_rows,
        vectors=np.stack([a[-1] for a in accepted]).astype(np.float32) if accepted else None,
        remove=replaced,
        next_id=next_id + len(new_rows),
        arrays=arrays or None,
    )
    summary.commit = commit
    summary.indexed = len(new_rows)
    summary.ids = IdRanges.from_ids([r.id for r in new_rows])
    summary.total_indexed = int(commit.manifest["counts"]["indexed"])


def add_vectors(
    index_dir: str | Path,
    images: Sequence[tuple[str | Path, str, int, int]],
    vectors: np.ndarray,
    rows: Sequence[np.ndarray] | None = None,
) -> BuildSummary:
    """Add images whose global descriptors were computed elsewhere (a Ray job, another machine):
    `images` = (path, sha256, width, height) per row of `vectors` (n, dim). The same duplicate,
    replacement, id and commit rules as `add_images` (which is extraction + this), no extraction.
    `rows`: each image's local rows (`Extractor.local_rows`), stored as its re-ranking rows when
    the index keeps them; without them these images have no rows and score 0 when re-ranked."""
    started = time.perf_counter()
    index_dir = Path(os.path.abspath(index_dir))
    vectors = np.atleast_2d(np.asarray(vectors, np.float32))
    if len(images) != len(vectors) or (rows is not None and len(rows) != len(vectors)):
        raise ValueError(f"{len(images)} images, {len(vectors)} vectors, {'no' if rows is None else len(rows)} rows")
    summary = BuildSummary(index_dir=str(index_dir))
    with exclusive_lock(index_dir), Catalog(index_dir / CATALOG_NAME) as catalog:
        manifest = begin_write(index_dir, catalog)
        if len(vectors) and vectors.shape[1] != int(manifest["dim"]):
            raise ValueError(f"vectors have dimension {vectors.shape[1]}, the index {manifest['dim']}")
        next_id = max(int(manifest.get("next_id", 0)), catalog.max_id() + 1)
        replaced_by_path: dict[str, CatalogRow] = {}
        stored_paths = _accept_new_content(
            catalog, [(path, sha) for path, sha, _, _ in images], manifest["source_root"], index_dir,
            replaced_by_path, summary,
        )
        accepted = [
            (path, stored, sha, int(width), int(height), vector)
            for (path, sha, width, height), vector, stored in zip(images, vectors, stored_paths, strict=True)
            if stored is not None
        ]
        kept_rows = None if rows is None else [r for r, stored in zip(rows, stored_paths, strict=True) if stored is not None]
        if accepted:
            arrays = _factor_arrays(index_dir, manifest, kept_rows)
            _commit_accepted(index_dir, manifest, catalog, accepted, replaced_by_path, next_id, summary, arrays)
        else:
            summary.total_indexed = int(manifest["counts"]["indexed"])
        summary.order_inputs([Path(p) for p, _, _, _ in images])
    summary.seconds = time.perf_counter() - started
    summary.factory, summary.dim = manifest["faiss"]["factory"], int(manifest["dim"])
    return summary


def _accept_new_content(
    catalog: Catalog, candidates: Sequence[tuple], source_root, index_dir: Path,
    replaced_by_path: dict[str, CatalogRow], summary: BuildSummary,
) -> list[str | None]:
    """The one duplicate/replacement rule of add_images and add_vectors: for each (path, sha256),
    its catalog path if it is new content, None (skipped as `duplicate` in `summary`) if the same
    content is indexed already or came earlier in this batch. A catalog path indexed with other
    content is recorded in `replaced_by_path` (its old id is removed by the commit)."""
    known = catalog.indexed_by_sha256(sha for _, sha in candidates)
    first_with: dict[str, object] = {}
    stored_paths: list[str | None] = []
    for path, sha in candidates:
        if sha in known:
            summary.skip(path, "duplicate", f"{path}: already indexed as id {known[sha]}", duplicate_of=known[sha])
            stored_paths.append(None)
            continue
        if sha in first_with:
            summary.skip(path, "duplicate", f"{path}: same content as {first_with[sha]}", duplicate_sha=sha)
            stored_paths.append(None)
            continue
        first_with[sha] = path
        stored = catalog_path(path, source_root, index_dir)
        previous = catalog.by_path(stored)
        if previous is not None:
            replaced_by_path[stored] = previous
        stored_paths.append(stored)
    return stored_paths


class _CheckedBar:
    """A progress bar that also calls `check` per image (run_extraction advances it per image)."""

    def __init__(self, bar, check: Callable[[], None]) -> None:
        self.bar, self.check = bar, check

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.check()


def _extract(items: list[WorkItem], extractor, whitening, manifest: dict, runtime: IndexConfig, progress: bool, check=None):
    from descriptors.aggregate import aggregate_rows

    collected: list = []

    def writer(_group: int, decoded, results) -> None:
        collected.extend(zip(decoded, results, strict=True))

    with progress_bar(len(items), 0, progress, "add") as bar:
        run_extraction(
            [(0, items)], extractor, writer, runtime,
            stores_rows=True, max_pixels=int(manifest.get("max_pixels", runtime.max_pixels)),
            bar=bar if check is None else _CheckedBar(bar, check),
        )
    vectors = {d.item.id: aggregate_rows(rows, whitening) for d, rows in collected if d.ok}
    rows_by_item = {d.item.id: rows for d, rows in collected if d.ok}
    return vectors, [d for d, _ in collected], rows_by_item


def remove_images(
    index_dir: str | Path, ids: Sequence[int] | None = None, paths: Sequence[str | Path] | None = None
) -> int:
    """Remove images by id and/or path (absolute, or as stored in the catalog); returns how many
    indexed images were removed. Unknown ids/paths are ignored (they count 0)."""
    return remove_images_committed(index_dir, ids, paths)[0]


def remove_images_committed(
    index_dir: str | Path, ids: Sequence[int] | None = None, paths: Sequence[str | Path] | None = None
) -> tuple[int, Commit | None]:
    """`remove_images`, also returning the generation written (None when nothing matched)."""
    index_dir = Path(os.path.abspath(index_dir))
    with exclusive_lock(index_dir), Catalog(index_dir / CATALOG_NAME) as catalog:
        manifest = begin_write(index_dir, catalog)
        wanted: set[int] = {int(i) for i in (ids or [])}
        for path in paths or []:
            for stored in (catalog_path(path, manifest["source_root"], index_dir), str(path)):
                row = catalog.by_path(stored)
                if row is not None:
                    wanted.add(row.id)
                    break
        rows = catalog.by_ids(sorted(wanted))
        if not rows:
            return 0, None
        commit = commit_generation(index_dir, manifest, catalog, remove=rows)
        return sum(r.indexed for r in rows.values()), commit


def build_graph(index_dir: str | Path, k: int = DEFAULT_GRAPH_K, depth: int | None = None) -> Commit:
    """(Re)build the diffusion k-NN graph of the live images (`indexer.graph`) as one new
    generation: the graph file, then the manifest naming it. O(N^2 d) exact, in chunks. `depth`:
    how many nearest of an added image later updates search for lists to merge it into
    (default 4 k; see the bound in `indexer.graph`)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"graph k must be an int >= 1, got {k!r}")
    index_dir = Path(os.path.abspath(index_dir))
    with exclusive_lock(index_dir), Catalog(index_dir / CATALOG_NAME) as catalog:
        manifest = begin_write(index_dir, catalog)
        commit = commit_generation(index_dir, manifest, catalog, rebuild_graph_k=int(k), graph_depth=depth)
        remove_unreferenced(index_dir, commit.manifest)  # the graph files it replaced
        return commit


def resolve_paths(index_dir: str | Path, stored: Sequence[str]) -> list[str]:
    manifest = read_manifest(index_dir)
    return [resolve_catalog_path(s, manifest["source_root"], index_dir) for s in stored]
