"""Index shards for serving on several processes: cut an index into S parts, merge their top-k.

Shard `s` of `S` holds the vectors whose id satisfies `id % S == s`. Its FAISS index is an empty
copy of the index's trained inner index (same IVF centroids, PQ codebooks, HNSW/Flat settings)
filled with the exact stored vectors of its ids, so a vector gets the same code as in the whole
index and the S parts together answer like the whole: for an exact (Flat) index the merged top-k
equals the unsharded top-k. No Ray in here (see searcher/ray_serve.py for the deployments).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

CHUNK = 65_536


def shard_of(ids: np.ndarray, shards: int) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64) % int(shards)


def faiss_part(full_index, vectors_of, shard: int, shards: int):
    """A new IndexIDMap2 holding the vectors of `full_index` whose id % shards == shard.

    `vectors_of(ids) -> (n, D) float32` gives the exact vectors (OpenIndex.vectors).
    """
    import faiss

    all_ids = faiss.vector_to_array(full_index.id_map).astype(np.int64)
    mine = all_ids[shard_of(all_ids, shards) == shard]
    inner = faiss.clone_index(faiss.downcast_index(full_index.index))
    inner.reset()  # keeps the training (IVF centroids, PQ codebooks), drops the vectors
    part = faiss.IndexIDMap2(inner)
    for start in range(0, len(mine), CHUNK):
        ids = mine[start:start + CHUNK]
        part.add_with_ids(np.ascontiguousarray(vectors_of(ids), dtype=np.float32), ids)
    return part


def open_index_part(index_dir: str | Path, shard: int, shards: int):
    """`indexer.open_index(index_dir)` whose FAISS index is replaced by shard `shard` of `shards`.

    `.search`, `.count`, `.paths`, `.vectors` keep working (`.search` over this shard only); the
    whole index is read once while the part is cut, then released.
    """
    import indexer
    from indexer.faiss_index import apply_search_params

    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards}: need 0 <= shard < shards")
    index = indexer.open_index(index_dir)
    if shards > 1:
        index.faiss_index = faiss_part(index.faiss_index, index.vectors, shard, shards)
        apply_search_params(index.faiss_index, index.manifest["faiss"].get("search_params", ""))
    return index


def merge_top_k(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best `k` of several shards' (scores (n, k_i), ids (n, k_i)), by score, -1 ids last.

    Equal scores keep the order of `parts` then of each part (a stable sort): deterministic.
    """
    scores = np.concatenate([np.asarray(s, dtype=np.float32) for s, _ in parts], axis=1)
    ids = np.concatenate([np.asarray(i, dtype=np.int64) for _, i in parts], axis=1)
    keyed = np.where(ids >= 0, scores, -np.inf)
    order = np.argsort(-keyed, axis=1, kind="stable")[:, :k]
    top_scores = np.take_along_axis(keyed, order, axis=1)
    top_ids = np.take_along_axis(ids, order, axis=1)
    top_ids[~np.isfinite(top_scores)] = -1
    if top_scores.shape[1] < k:  # fewer candidates than k: pad like FAISS does
        pad = k - top_scores.shape[1]
        top_scores = np.pad(top_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        top_ids = np.pad(top_ids, ((0, 0), (0, pad)), constant_values=-1)
    return top_scores.astype(np.float32), top_ids
