"""`open_index`: a thread-safe view of one generation of an index directory, for the searcher.

Opening reads the FAISS checkpoint the manifest names, adds the vectors of the segments
appended after it and applies the tombstones after it (`remove_ids` where the index type
supports it, otherwise the removed ids are hidden from every search by an ID selector). Searches
go to FAISS (l2-normalized queries, inner product = cosine); ids map to paths through the
catalog rows of this generation; `.vectors(ids)` reads the exact float32 vectors from the
segments (memory-mapped), which query expansion needs even when the FAISS index is compressed
(IVF-PQ); `.factor_rows(ids)` reads each image's stored re-ranking rows (`indexer/factor_rows.py`)
from the same segments, none for a removed id. `.apply(commit)` moves a live view to the next generation in O(batch) (the caller
keeps searches out while it runs: FAISS is not safe to add to during a search).
"""

from __future__ import annotations

import os
from datetime import UTC
from pathlib import Path

import numpy as np

from .catalog import Catalog
from .errors import IndexFormatError
from .factor_rows import SegmentRows, encode_rows, has_factor_rows, load_codec
from .faiss_index import apply_search_params, excluding_search_params, read_faiss_index, read_faiss_ntotal
from .files import resolve_catalog_path
from .generations import Commit, faiss_count
from .manifest import (
    CATALOG_NAME,
    SEGMENTS_DIR,
    WHITENING_NAME,
    build_extractor,
    descriptor_config_from,
    read_manifest,
)

SMALL_BATCH = 4
_ALL_THREADS: list[int] = []  # faiss's thread count before we touched it (OMP_NUM_THREADS or all cores)


def _check_complete(index_dir: Path, manifest: dict) -> None:
    names = [manifest["faiss"]["file"], CATALOG_NAME]
    names += [f for s in manifest["segments"] for f in s["files"].values()]
    names += [t["file"] for t in manifest["tombstones"]]
    if has_factor_rows(manifest):
        names.append(manifest["factor_rows"]["codec"])
    for name in names:
        if not (index_dir / name).is_file():
            raise IndexFormatError(
                f"{index_dir}: {name} is missing (generation {manifest['generation']} names it); "
                "the index is damaged: restore it from a copy or rebuild it"
            )


class OpenIndex:
    def __init__(self, index_dir: str | Path) -> None:
        self.index_dir = Path(os.path.abspath(index_dir))
        self.manifest = read_manifest(self.index_dir)
        _check_complete(self.index_dir, self.manifest)
        self.generation = int(self.manifest["generation"])
        self.faiss_index = read_faiss_index(self.index_dir / self.manifest["faiss"]["file"])
        apply_search_params(self.faiss_index, self.manifest["faiss"].get("search_params", ""))
        self.whitening = None
        if int(self.manifest["whitening"].get("dim", 0)) > 0:
            from descriptors.whitening import PCAWhitening

            self.whitening = PCAWhitening.load(self.index_dir / WHITENING_NAME)
        self.catalog = Catalog(self.index_dir / CATALOG_NAME, readonly=True, generation=self.generation)
        self.source_root = self.manifest["source_root"]
        self._first_ids: list[int] = []
        self._segments: list[np.ndarray] = []
        self._segment_rows: list[SegmentRows | None] = []  # re-ranking rows, per segment
        # re-ranking rows (indexer/factor_rows.py): absent in indexes built before them
        self.row_codec = load_codec(self.index_dir, self.manifest) if has_factor_rows(self.manifest) else None
        self._hidden = np.zeros(0, np.int64)  # removed, still in FAISS, kept out of searches
        self._removed = np.zeros(0, np.int64)  # removed since the checkpoint (no vector any more)
        self._exclude = None
        since = int(self.manifest["faiss"]["generation"])
        for segment in self.manifest["segments"]:
            vectors = np.load(self.index_dir / segment["files"]["vectors"], mmap_mode="r")
            rows = SegmentRows.load(self.index_dir, segment["files"]) if self.row_codec is not None else None
            self._add_segment(int(segment["first_id"]), vectors, replay=int(segment["generation"]) > since, rows=rows)
        removed = [np.load(self.index_dir / t["file"]) for t in self.manifest["tombstones"] if int(t["generation"]) > since]
        if removed:
            self._remove(np.concatenate(removed), in_place=True)

    @property
    def faiss_index(self):
        return self._faiss

    @faiss_index.setter
    def faiss_index(self, index) -> None:
        """Replace the FAISS index (searcher/shards.py cuts a part); removed ids stay hidden."""
        self._faiss = index
        hidden = getattr(self, "_hidden", None)
        self._exclude = excluding_search_params(index, hidden) if hidden is not None and len(hidden) else None

    def _add_segment(self, first_id: int, vectors: np.ndarray, replay: bool, rows: SegmentRows | None = None) -> None:
        at = int(np.searchsorted(self._first_ids, first_id))
        self._first_ids.insert(at, first_id)
        self._segments.insert(at, vectors)
        self._segment_rows.insert(at, rows)
        if replay and len(vectors):
            ids = np.arange(first_id, first_id + len(vectors), dtype=np.int64)
            self.faiss_index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)

    def _remove(self, ids: np.ndarray, in_place: bool) -> None:
        """Remove from FAISS (`in_place`, where supported: O(N), done once on open) or hide."""
        ids = np.unique(np.asarray(ids, np.int64))
        self._removed = np.union1d(self._removed, ids)
        if in_place:
            try:
                self.faiss_index.remove_ids(ids)
                return
            except RuntimeError:  # HNSW, IndexRefine: no removal; hide instead
                pass
        self._hidden = np.union1d(self._hidden, ids)
        self._exclude = excluding_search_params(self.faiss_index, self._hidden)

    def apply(self, commit: Commit) -> None:
        """Move to `commit.generation` (the next one) without reopening: O(batch)."""
        if commit.generation != self.generation + 1:
            raise ValueError(f"generation {commit.generation} does not follow {self.generation}; reopen the index")
        if len(commit.added_ids):
            assert commit.added_vectors is not None
            rows = None
            if self.row_codec is not None and "factor_rows" in commit.added_arrays:
                rows = SegmentRows(commit.added_arrays["factor_rows"], commit.added_arrays["factor_rows_offsets"])
            self._add_segment(int(commit.added_ids[0]), commit.added_vectors, replay=True, rows=rows)
        if len(commit.removed_ids):
            self._remove(commit.removed_ids, in_place=False)
        self.manifest = commit.manifest
        self.generation = commit.generation
        self.catalog.set_generation(commit.generation)

    @property
    def hidden_ids(self) -> np.ndarray:
        """Removed ids still in the FAISS index (kept out of searches by a selector)."""
        return self._hidden

    @property
    def count(self) -> int:
        return int(self.faiss_index.ntotal) - len(self._hidden)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> OpenIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def extractor_config(self):
        """(backbone name, DescriptorConfig, image_size) of the extractor that made the vectors."""
        return (
            self.manifest["backbone"]["name"],
            descriptor_config_from(self.manifest),
            int(self.manifest["image_size"]),
        )

    def build_extractor(self, device: str = "cpu"):
        return build_extractor(self.manifest, device=device)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by cosine similarity: (scores (n, k) float32, ids (n, k) int64, -1 where fewer)."""
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if queries.shape[1] != self.dim:
            raise ValueError(f"query vectors have dimension {queries.shape[1]}, the index {self.dim}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        norms = np.linalg.norm(queries, axis=1, keepdims=True)
        queries = np.ascontiguousarray(queries / np.where(norms > 0, norms, 1.0))
        if self.count == 0:
            n = len(queries)
            return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
        import faiss

        # One or a few queries: one thread. OpenMP spin-waiting made 2-thread single-query search
        # ~20x slower on a loaded 2-core machine (1.4 ms -> 32 ms, Flat 20k x 256); batches use all.
        # omp_set_num_threads applies to the calling thread only (each gRPC worker sets its own).
        if not _ALL_THREADS:
            _ALL_THREADS.append(faiss.omp_get_max_threads())
        faiss.omp_set_num_threads(1 if len(queries) <= SMALL_BATCH else _ALL_THREADS[0])
        if self._exclude is None:
            return self.faiss_index.search(queries, int(k))
        params, _keep_alive = self._exclude
        return self.faiss_index.search(queries, int(k), params=params)

    def paths(self, ids) -> list[str | None]:
        """Absolute paths of `ids` (None for -1 or unknown ids)."""
        wanted = [int(i) for i in np.asarray(ids).ravel()]
        found = self.catalog.by_ids([i for i in wanted if i >= 0])
        return [
            resolve_catalog_path(found[i].path, self.source_root, self.index_dir) if i in found else None
            for i in wanted
        ]

    @property
    def has_factor_rows(self) -> bool:
        """Whether the index stores re-ranking rows (built with them: `--rerank-dim` > 0)."""
        return self.row_codec is not None

    def factor_rows(self, ids) -> list[np.ndarray]:
        """Each id's stored re-ranking rows `(n_i, dim)` float32 (decoded float16); no rows for
        -1, unknown and removed ids, or for an image added without rows (`add_vectors`)."""
        wanted = np.asarray(ids, dtype=np.int64).ravel()
        empty = np.zeros((0, self.row_codec.dim if self.row_codec is not None else 0), np.float32)
        if self.row_codec is None or not self._segments:
            return [empty for _ in wanted]
        which = np.searchsorted(self._first_ids, wanted, side="right") - 1
        hidden = np.isin(wanted, self._removed)
        out = []
        for image_id, seg, gone in zip(wanted.tolist(), which.tolist(), hidden.tolist(), strict=True):
            rows = self._segment_rows[seg] if seg >= 0 and image_id >= 0 and not gone else None
            out.append(empty if rows is None else rows.of(image_id - self._first_ids[seg]))
        return out

    def encode_query_rows(self, rows: np.ndarray) -> np.ndarray:
        """A query's local rows in the stored rows' space (whitening, projection, float16 like the
        stored ones), as float32."""
        if self.row_codec is None:
            raise ValueError(f"{self.index_dir} stores no re-ranking rows")
        return encode_rows(rows, self.whitening, self.row_codec).astype(np.float32)

    def vectors(self, ids) -> np.ndarray:
        """Exact stored vectors (n, D) float32; zeros for -1 or unknown ids."""
        wanted = np.asarray(ids, dtype=np.int64).ravel()
        out = np.zeros((len(wanted), self.dim), np.float32)
        if not self._segments:
            return out
        which = np.searchsorted(self._first_ids, wanted, side="right") - 1
        hidden = np.isin(wanted, self._removed)
        for row, (image_id, seg) in enumerate(zip(wanted.tolist(), which.tolist(), strict=True)):
            if image_id < 0 or seg < 0 or hidden[row]:
                continue
            offset = image_id - self._first_ids[seg]
            if offset < len(self._segments[seg]):
                out[row] = self._segments[seg][offset]
        return out


def open_index(index_dir: str | Path) -> OpenIndex:
    return OpenIndex(index_dir)


def index_info(index_dir: str | Path) -> dict:
    """Manifest plus live counts and file sizes (what `dff-index info` prints).

    Answers from the manifest, the catalog, file sizes and the FAISS file's header: the index
    itself is not loaded (`open_index` would read all of a multi-GB `index.faiss`).
    """
    index_dir = Path(os.path.abspath(index_dir))
    info = read_manifest(index_dir)
    _check_complete(index_dir, info)
    checkpoint = read_faiss_ntotal(index_dir / info["faiss"]["file"])
    with Catalog(index_dir / CATALOG_NAME, readonly=True, generation=int(info["generation"])) as catalog:
        info["live"] = {
            "vectors_in_faiss": faiss_count(index_dir, info, checkpoint),
            "catalog_indexed": catalog.count(),
            "catalog_skipped": catalog.skipped_reasons(),
        }
    info["index_dir"] = str(index_dir)
    info["files"] = {
        p.relative_to(index_dir).as_posix(): p.stat().st_size
        for p in sorted([*index_dir.iterdir(), *_segment_files(index_dir)])
        if p.is_file() and not p.name.startswith(".")
    }
    if has_factor_rows(info):
        info["factor_rows_on_disk"] = _factor_rows_on_disk(info)
    return info


def _factor_rows_on_disk(info: dict) -> dict:
    """Bytes of re-ranking rows on disk (rows + offsets files, headers included; removed images'
    rows until a compaction), in all and per indexed image."""
    files = [f for s in info["segments"] for key, f in s["files"].items() if key.startswith("factor_rows")]
    total = sum(info["files"].get(f, 0) for f in files)
    return {"bytes": total, "bytes_per_image": round(total / max(1, int(info["live"]["catalog_indexed"])), 1)}


def _segment_files(index_dir: Path) -> list[Path]:
    folder = index_dir / SEGMENTS_DIR
    return list(folder.iterdir()) if folder.is_dir() else []


def list_images(index_dir: str | Path, include_skipped: bool = False) -> list[dict]:
    """Every image of the index (what `dff-index list` prints): id, absolute path, full-resolution
    width and height, status and when it was added (UTC, ISO 8601). Reads the catalog only."""
    from datetime import datetime

    index_dir = Path(os.path.abspath(index_dir))
    manifest = read_manifest(index_dir)
    _check_complete(index_dir, manifest)
    with Catalog(index_dir / CATALOG_NAME, readonly=True, generation=int(manifest["generation"])) as catalog:
        rows = catalog.rows()
    return [
        {
            "id": row.id,
            "path": resolve_catalog_path(row.path, manifest["source_root"], index_dir),
            "width": row.width,
            "height": row.height,
            "status": row.status,
            "added": datetime.fromtimestamp(row.added_at, tz=UTC).isoformat(timespec="seconds"),
        }
        for row in sorted(rows, key=lambda r: r.id)
        if include_skipped or row.indexed
    ]
