"""`open_index`: a read-only, thread-safe view of an index directory for the searcher.

Searches go to FAISS (l2-normalized queries, inner product = cosine); ids map to paths through
the catalog; `.vectors(ids)` reads the exact float32 vectors from `vectors.npy` (memory-mapped),
which query expansion needs even when the FAISS index is compressed (IVF-PQ).
"""

from __future__ import annotations

import os
from datetime import UTC
from pathlib import Path

import numpy as np

from .catalog import Catalog
from .errors import IndexFormatError
from .faiss_index import apply_search_params, read_faiss_index, read_faiss_ntotal
from .files import resolve_catalog_path
from .manifest import (
    CATALOG_NAME,
    FAISS_NAME,
    VECTORS_NAME,
    WHITENING_NAME,
    build_extractor,
    descriptor_config_from,
    read_manifest,
)

SMALL_BATCH = 4
_ALL_THREADS: list[int] = []  # faiss's thread count before we touched it (OMP_NUM_THREADS or all cores)


def _check_complete(index_dir: Path) -> None:
    for name in (FAISS_NAME, CATALOG_NAME, VECTORS_NAME):
        if not (index_dir / name).is_file():
            raise IndexFormatError(f"{index_dir}: {name} is missing; the index is incomplete, rebuild it")


class OpenIndex:
    def __init__(self, index_dir: str | Path) -> None:
        self.index_dir = Path(os.path.abspath(index_dir))
        self.manifest = read_manifest(self.index_dir)
        _check_complete(self.index_dir)
        self.faiss_index = read_faiss_index(self.index_dir / FAISS_NAME)
        apply_search_params(self.faiss_index, self.manifest["faiss"].get("search_params", ""))
        self.whitening = None
        if int(self.manifest["whitening"].get("dim", 0)) > 0:
            from descriptors.whitening import PCAWhitening

            self.whitening = PCAWhitening.load(self.index_dir / WHITENING_NAME)
        self.catalog = Catalog(self.index_dir / CATALOG_NAME, readonly=True)
        self._vectors = np.load(self.index_dir / VECTORS_NAME, mmap_mode="r")
        self.source_root = self.manifest["source_root"]

    @property
    def count(self) -> int:
        return int(self.faiss_index.ntotal)

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
        scores, ids = self.faiss_index.search(queries, int(k))
        return scores, ids

    def paths(self, ids) -> list[str | None]:
        """Absolute paths of `ids` (None for -1 or unknown ids)."""
        wanted = [int(i) for i in np.asarray(ids).ravel()]
        found = self.catalog.by_ids([i for i in wanted if i >= 0])
        return [
            resolve_catalog_path(found[i].path, self.source_root, self.index_dir) if i in found else None
            for i in wanted
        ]

    def vectors(self, ids) -> np.ndarray:
        """Exact stored vectors (n, D) float32; zeros for -1 or unknown ids."""
        wanted = np.asarray(ids, dtype=np.int64).ravel()
        out = np.zeros((len(wanted), self.dim), np.float32)
        valid = (wanted >= 0) & (wanted < len(self._vectors))
        out[valid] = self._vectors[wanted[valid]]
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
    _check_complete(index_dir)
    with Catalog(index_dir / CATALOG_NAME, readonly=True) as catalog:
        info["live"] = {
            "vectors_in_faiss": read_faiss_ntotal(index_dir / FAISS_NAME),
            "catalog_indexed": catalog.count(),
            "catalog_skipped": catalog.skipped_reasons(),
        }
    info["index_dir"] = str(index_dir)
    info["files"] = {
        p.name: p.stat().st_size for p in sorted(index_dir.iterdir()) if p.is_file() and not p.name.startswith(".")
    }
    return info


def list_images(index_dir: str | Path, include_skipped: bool = False) -> list[dict]:
    """Every image of the index (what `dff-index list` prints): id, absolute path, full-resolution
    width and height, status and when it was added (UTC, ISO 8601). Reads the catalog only."""
    from datetime import datetime

    index_dir = Path(os.path.abspath(index_dir))
    manifest = read_manifest(index_dir)
    _check_complete(index_dir)
    with Catalog(index_dir / CATALOG_NAME, readonly=True) as catalog:
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
