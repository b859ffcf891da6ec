"""Generations: how an index changes with one commit point and O(batch) work.

Generation G is what `manifest.json` names: the FAISS checkpoint file (written by build and
compaction, with the generation it holds), the vector segments (append-only `.npy` files, one per
add, each a contiguous id range: row = id - first_id) and the tombstones (one `.npy` of removed
ids per remove). A writer (under the index lock):

1. `begin_write`: reads the manifest, `Catalog.reconcile`s the catalog with its generation
   (drops rows a crashed writer committed for a later one) and deletes files no manifest names;
2. writes the new segment / tombstone files under new names (nothing refers to them yet);
3. commits the catalog rows, marked with generation G+1 (invisible to readers at G);
4. renames the manifest naming G+1 into place: the single commit point.

A crash before step 4 leaves generation G exactly (the next writer cleans up); after it,
generation G+1 exactly. `Commit` is what a generation changed, for a live reader to apply
(`OpenIndex.apply`) without reopening.

Other per-image arrays ride along as more entries of a segment's `files` (`{"vectors": ...,
"<name>": ...}`, `commit_generation(arrays=...)`), row-aligned with the vectors; variable-length
rows go as `<name>` (concatenated) + `<name>_offsets` (n+1 row offsets): the re-ranking rows
(`indexer/factor_rows.py`: `factor_rows`, `factor_rows_offsets`). Compaction folds them the same
way it folds the vectors. The diffusion k-NN graph (`indexer.graph`), when the index has
one, is updated by every commit here, its delta file written before the manifest that names it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .catalog import SKIPPED_PREFIX, Catalog, CatalogRow
from .config import FORMAT_VERSION
from .graph import graph_entry_after, graph_files
from .manifest import FAISS_NAME, SEGMENTS_DIR, VECTORS_NAME, read_manifest, write_manifest
from .storage import atomic_write


@dataclass
class Commit:
    """What generation `generation` changed: added vectors (ids contiguous from `first_id`) and the
    indexed ids it removed."""

    generation: int
    manifest: dict
    added_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    added_vectors: np.ndarray | None = None
    removed_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # the added segment's other row-aligned arrays (e.g. `factor_rows`, `factor_rows_offsets`)
    added_arrays: dict[str, np.ndarray] = field(default_factory=dict)


def segment_name(generation: int, array: str) -> str:
    return f"{SEGMENTS_DIR}/{generation:08d}.{array}.npy"


def referenced_files(manifest: dict) -> set[str]:
    names = {manifest["faiss"]["file"]}
    if manifest.get("factor_rows", {}).get("codec"):
        names.add(manifest["factor_rows"]["codec"])
    for segment in manifest["segments"]:
        names.update(segment["files"].values())
    names.update(t["file"] for t in manifest["tombstones"])
    names.update(graph_files(manifest))
    return names


def _is_ours(relative: str) -> bool:
    """Files that generations create (so cleanup never touches uploads/, the catalog, locks)."""
    name = relative.rsplit("/", 1)[-1]
    if relative.startswith(SEGMENTS_DIR + "/"):
        return True
    if name.startswith(".") and ".tmp" in name:
        return True  # an atomic write's temp file a crash left behind
    return name in (FAISS_NAME, VECTORS_NAME) or (name.startswith("index.") and name.endswith(".faiss")) or (
        (name.startswith("vectors.") or name.startswith("factor_rows")) and name.endswith(".npy")
    )


def remove_unreferenced(index_dir: Path, manifest: dict) -> list[str]:
    """Delete generation files that `manifest` does not name (what a crash or a compaction left)."""
    keep = referenced_files(manifest)
    removed = []
    candidates = [p for p in index_dir.iterdir() if p.is_file()]
    if (index_dir / SEGMENTS_DIR).is_dir():
        candidates += [p for p in (index_dir / SEGMENTS_DIR).iterdir() if p.is_file()]
    for path in candidates:
        relative = path.relative_to(index_dir).as_posix()
        if relative not in keep and _is_ours(relative):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(relative)
    return removed


def begin_write(index_dir: Path, catalog: Catalog) -> dict:
    """The committed manifest, with the catalog and the folder brought back to it (lock held)."""
    manifest = read_manifest(index_dir)
    catalog.reconcile(int(manifest["generation"]))
    catalog.set_generation(None)  # a writer sees every row that is not removed
    remove_unreferenced(index_dir, manifest)
    return manifest


def _npy_writer(array: np.ndarray):
    def write(temp: str) -> None:
        with open(temp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(array), allow_pickle=False)

    return write


def _segment_rows(index_dir: Path, segment: dict) -> int:
    if segment.get("count") is not None:
        return int(segment["count"])
    return int(np.load(index_dir / segment["files"]["vectors"], mmap_mode="r").shape[0])


def commit_generation(
    index_dir: Path,
    manifest: dict,
    catalog: Catalog,
    *,
    insert: Iterable[CatalogRow] = (),
    vectors: np.ndarray | None = None,
    remove: Mapping[int, CatalogRow] | None = None,
    next_id: int | None = None,
    rebuild_graph_k: int | None = None,
    graph_depth: int | None = None,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> Commit:
    """Write generation G+1: `vectors` (rows of the indexed rows of `insert`, in id order, ids
    contiguous) as a new segment, with `arrays` (the segment's other row-aligned files, by name),
    the indexed ids of `remove` as a tombstone, the catalog, then the manifest. Work and I/O are
    proportional to the batch, not to the index, except for the diffusion graph when the index has
    one (`indexer.graph`: its delta is written in the same commit, one exact search per added
    image) or `rebuild_graph_k` asks for a full build."""
    generation = int(manifest["generation"]) + 1
    insert = list(insert)
    remove = dict(remove or {})
    new = dict(manifest, format_version=FORMAT_VERSION, generation=generation, updated_at=time.time())
    new["segments"] = [dict(s, count=_segment_rows(index_dir, s)) for s in manifest["segments"]]
    new["tombstones"] = list(manifest["tombstones"])
    added_ids = np.array([r.id for r in insert if r.indexed], np.int64)
    if len(added_ids):
        assert vectors is not None and len(vectors) == len(added_ids)
        if np.any(np.diff(added_ids) != 1):
            raise ValueError("a segment's ids must be contiguous")
        (index_dir / SEGMENTS_DIR).mkdir(exist_ok=True)
        files = {"vectors": segment_name(generation, "vectors")}
        atomic_write(index_dir / files["vectors"], _npy_writer(np.asarray(vectors, np.float32)), suffix=".npy")
        for array_name, array in sorted((arrays or {}).items()):
            files[array_name] = segment_name(generation, array_name)
            atomic_write(index_dir / files[array_name], _npy_writer(array), suffix=".npy")
        new["segments"].append(
            {"generation": generation, "first_id": int(added_ids[0]), "count": len(added_ids), "files": files}
        )
    removed_ids = np.array(sorted(i for i, r in remove.items() if r.indexed), np.int64)
    if len(removed_ids):
        (index_dir / SEGMENTS_DIR).mkdir(exist_ok=True)
        name = segment_name(generation, "removed")
        atomic_write(index_dir / name, _npy_writer(removed_ids), suffix=".npy")
        new["tombstones"].append({"generation": generation, "file": name, "count": len(removed_ids)})
    graph = graph_entry_after(
        index_dir, manifest, new, generation, added_ids, vectors, rebuild_k=rebuild_graph_k, depth=graph_depth
    )
    if graph is not None:
        new["graph"] = graph
    catalog.apply(insert=insert, generation=generation, remove_ids=sorted(remove))
    new["counts"] = _counts_after(manifest["counts"], insert, remove.values())
    new["next_id"] = int(next_id if next_id is not None else manifest.get("next_id", 0))
    write_manifest(index_dir, new)  # the commit point
    added = None if vectors is None else np.asarray(vectors, np.float32)
    return Commit(generation, new, added_ids, added, removed_ids, dict(arrays or {}) if len(added_ids) else {})


def _counts_after(counts: dict, inserted: Iterable[CatalogRow], removed: Iterable[CatalogRow]) -> dict:
    files, indexed = int(counts.get("files", 0)), int(counts.get("indexed", 0))
    skipped = dict(counts.get("skipped", {}))
    for row, sign in [*((r, 1) for r in inserted), *((r, -1) for r in removed)]:
        files += sign
        if row.indexed:
            indexed += sign
        else:
            reason = row.status[len(SKIPPED_PREFIX):]
            skipped[reason] = skipped.get(reason, 0) + sign
    return {"files": files, "indexed": indexed, "skipped": {k: v for k, v in sorted(skipped.items()) if v > 0}}


def faiss_count(index_dir: Path, manifest: dict, checkpoint_ntotal: int) -> int:
    """Vectors searchable at the manifest's generation, from the checkpoint's count and the
    segment / tombstone records after it (no index load)."""
    since = int(manifest["faiss"]["generation"])
    added = sum(_segment_rows(index_dir, s) for s in manifest["segments"] if int(s["generation"]) > since)
    removed = sum(int(t["count"]) for t in manifest["tombstones"] if int(t["generation"]) > since)
    return int(checkpoint_ntotal) + added - removed


__all__ = ["Commit", "begin_write", "commit_generation", "faiss_count", "remove_unreferenced"]
