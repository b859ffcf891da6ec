"""`compact_index` (`dff-index compact INDEX`): fold segments and tombstones into a fresh checkpoint.

One new generation: the vectors of every image visible now go into one dense segment
(`vectors.<G>.npy`, row = id; its re-ranking rows, when the index has them, into
`factor_rows.<G>.npy` + `factor_rows_offsets.<G>.npy`, removed images with no rows), the FAISS index with the segments added and the removed ids
physically gone (rebuilt from the kept vectors where the index type cannot remove) into
`index.<G>.faiss`, and the manifest naming both is renamed into place, the commit point. Then
the catalog forgets the rows removed before, and the files no manifest names are deleted. A
diffusion graph (`indexer.graph`) is rebuilt from scratch in the same commit (O(N^2 d)). O(N)
work otherwise, done when the user asks, so that adds and removes stay O(batch) and opening stays fast.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .catalog import Catalog
from .config import FORMAT_VERSION
from .factor_rows import OFFSETS, ROWS, dense_writers
from .faiss_index import faiss_writer, remove_ids
from .generations import begin_write, remove_unreferenced
from .graph import graph_entry_after
from .manifest import CATALOG_NAME, write_manifest
from .open_index import OpenIndex
from .storage import atomic_write, crash_point, exclusive_lock


def _dense_vectors_writer(index: OpenIndex, n_rows: int, chunk: int = 65_536):
    def write(temp: str) -> None:
        out = np.lib.format.open_memmap(temp, mode="w+", dtype=np.float32, shape=(n_rows, index.dim))
        for start in range(0, n_rows, chunk):
            stop = min(start + chunk, n_rows)
            out[start:stop] = index.vectors(np.arange(start, stop))
        out.flush()
        del out

    return write


def compact_index(index_dir: str | Path) -> dict:
    """Compact the index (see module docstring); returns what it did."""
    started = time.perf_counter()
    index_dir = Path(os.path.abspath(index_dir))
    with exclusive_lock(index_dir), Catalog(index_dir / CATALOG_NAME) as catalog:
        manifest = begin_write(index_dir, catalog)
        before = {"generation": int(manifest["generation"]), "segments": len(manifest["segments"]), "tombstones": len(manifest["tombstones"])}
        generation = int(manifest["generation"]) + 1
        with OpenIndex(index_dir) as index:
            n_rows = int(manifest.get("next_id", 0))
            vectors_name, faiss_name = f"vectors.{generation:08d}.npy", f"index.{generation:08d}.faiss"
            atomic_write(index_dir / vectors_name, _dense_vectors_writer(index, n_rows), suffix=".npy")
            files = {"vectors": vectors_name}
            if index.has_factor_rows:
                files[ROWS], files[OFFSETS] = f"{ROWS}.{generation:08d}.npy", f"{OFFSETS}.{generation:08d}.npy"
                write_rows, write_offsets = dense_writers(index.factor_rows, n_rows, index.row_codec.dim)
                atomic_write(index_dir / files[ROWS], write_rows, suffix=".npy")
                atomic_write(index_dir / files[OFFSETS], write_offsets, suffix=".npy")
            faiss_index = index.faiss_index
            hidden = index.hidden_ids
            if len(hidden):
                vectors = np.load(index_dir / vectors_name, mmap_mode="r")
                keep = index.catalog.indexed_ids()
                faiss_index = remove_ids(faiss_index, hidden, vectors, keep, manifest["faiss"]["factory"])
            atomic_write(index_dir / faiss_name, faiss_writer(faiss_index))
        new = dict(manifest, format_version=FORMAT_VERSION, generation=generation, updated_at=time.time())
        new["faiss"] = dict(manifest["faiss"], file=faiss_name, generation=generation)
        new["segments"] = [{"generation": generation, "first_id": 0, "count": n_rows, "files": files}]
        new["tombstones"] = []
        if manifest.get("graph"):  # rebuilt: the lists that removals shortened are full again
            new["graph"] = graph_entry_after(
                index_dir, manifest, new, generation, np.zeros(0, np.int64), None, rebuild_k=int(manifest["graph"]["k"]),
                depth=int(manifest["graph"]["depth"]),
            )
        write_manifest(index_dir, new)  # the commit point
        catalog.purge_removed(generation)
        crash_point("compact: catalog purged")
        deleted = remove_unreferenced(index_dir, new)
    return before | {
        "generation_after": generation,
        "files_deleted": deleted,
        "indexed": int(new["counts"]["indexed"]),
        "seconds": time.perf_counter() - started,
    }
