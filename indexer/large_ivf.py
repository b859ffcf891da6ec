"""IVF/PQ indexes over more vectors than one process can hold: train on a sample, add shard by
shard in chunks, merge the inverted lists on disk (faiss.contrib.ondisk), re-rank from a memmap.

Input: vector shards, i.e. `.npy` files of float32 rows in id order (shard i holds the ids
`offsets[i] .. offsets[i] + len(shard i) - 1`), read chunk by chunk. Memory stays bounded by
the chunk and the training sample, not by the collection:

1. train the IVF centroids and the PQ codebooks on a seeded uniform sample of `train_n` rows;
2. per chunk of `chunk` rows: a copy of the trained (empty) index takes the chunk's codes and is
   written to `blocks/block-NNNNN.index`; the chunk is then dropped;
3. `merge_ondisk` concatenates the blocks' inverted lists into one `lists.ivfdata` file that
   the index memory-maps, so neither the raw vectors nor the codes have to fit in RAM (the index
   file records that file's absolute path: the folder stays where it was built);
4. search: `search_reranked` takes `k * k_factor` PQ candidates and re-scores them with the
   exact vectors read from the shards (what `RFlat` does, without the vectors in RAM).

`dff-index build` keeps its in-memory FAISS format but reads its training sample and its adds
through `VectorShards` once `vectors.npy` passes `faiss_index.STREAM_VECTORS_BYTES`
(`faiss_index.build_faiss_index`), so the raw vectors never sit in its resident set; the on-disk
inverted lists below are the path for collections whose codes do not fit one machine's memory
(docs/scaling.md).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .faiss_index import disable_polysemous_training

INDEX_NAME = "large.index"
IVFDATA_NAME = "lists.ivfdata"


@dataclass
class VectorShards:
    """Row-major float32 `.npy` shards, addressed by global id, read with `pread`.

    Not memory-mapped on purpose: pages of a mapped file that were read stay in the process's
    resident set until unmapped, so streaming a 10 GB memmap shows as a 10 GB RSS.
    """

    paths: list[Path]
    offsets: np.ndarray = field(init=False)
    _heads: list[tuple[int, int]] = field(init=False)  # (data offset in the file, rows)
    _dim: int = field(init=False)

    def __post_init__(self) -> None:
        self.paths = [Path(p) for p in self.paths]
        self._heads, dims = [], set()
        for path in self.paths:
            with open(path, "rb") as handle:
                major, _ = np.lib.format.read_magic(handle)
                read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(handle)
                if fortran or dtype != np.float32 or len(shape) != 2:
                    raise ValueError(f"{path}: need a C-order float32 (n, D) array, got {dtype} {shape}")
                self._heads.append((handle.tell(), int(shape[0])))
                dims.add(int(shape[1]))
        if len(dims) != 1:
            raise ValueError(f"vector shards disagree on the dimension: {sorted(dims)}")
        self._dim = dims.pop()
        self.offsets = np.concatenate([[0], np.cumsum([n for _, n in self._heads])]).astype(np.int64)

    @property
    def count(self) -> int:
        return int(self.offsets[-1])

    @property
    def dim(self) -> int:
        return self._dim

    def _read(self, shard: int, start: int, n: int) -> np.ndarray:
        row_bytes = 4 * self._dim
        with open(self.paths[shard], "rb") as handle:
            data = os.pread(handle.fileno(), n * row_bytes, self._heads[shard][0] + start * row_bytes)
        return np.frombuffer(data, dtype=np.float32).reshape(n, self._dim).copy()

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Exact rows of global `ids` (any order), float32."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self._dim), np.float32)
        shard = np.searchsorted(self.offsets, ids, side="right") - 1
        row_bytes = 4 * self._dim
        for s in np.unique(shard):
            where = np.nonzero(shard == s)[0]
            with open(self.paths[s], "rb") as handle:
                base = self._heads[s][0]
                for position, local in zip(where, ids[where] - self.offsets[s], strict=True):
                    data = os.pread(handle.fileno(), row_bytes, base + int(local) * row_bytes)
                    out[position] = np.frombuffer(data, dtype=np.float32)
        return out

    def span(self, first: int, stop: int) -> np.ndarray:
        """Rows of the global ids `first .. stop - 1`, read with one `pread` per shard they touch."""
        if not 0 <= first <= stop <= self.count:
            raise IndexError(f"rows {first}..{stop} outside 0..{self.count}")
        parts = []
        for s in range(int(np.searchsorted(self.offsets, first, side="right")) - 1, len(self.paths)):
            if self.offsets[s] >= stop:
                break
            lo, hi = max(first, self.offsets[s]), min(stop, self.offsets[s + 1])
            if hi > lo:
                parts.append(self._read(s, int(lo - self.offsets[s]), int(hi - lo)))
        return np.concatenate(parts) if parts else np.empty((0, self._dim), np.float32)

    def take(self, ids: np.ndarray) -> np.ndarray:
        """Rows of `ids`: one read of their span when the ids are sorted and dense in it
        (`dff-index build`'s chunks), one read per row otherwise."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and np.all(ids[1:] > ids[:-1]) and ids[-1] + 1 - ids[0] <= 2 * len(ids):
            return self.span(int(ids[0]), int(ids[-1]) + 1)[ids - ids[0]]
        return self.rows(ids)

    def chunks(self, chunk: int):
        """(first global id, rows) for consecutive chunks of at most `chunk` rows."""
        for s, (_, n) in enumerate(self._heads):
            for start in range(0, n, chunk):
                yield int(self.offsets[s] + start), self._read(s, start, min(chunk, n - start))


@dataclass
class LargeBuildStats:
    train_s: float = 0.0
    add_s: float = 0.0
    merge_s: float = 0.0
    vectors: int = 0
    blocks: int = 0


def train_index(shards: VectorShards, factory: str, train_n: int, seed: int = 0):
    """A trained, empty inner-product IVF index, trained on `train_n` rows sampled uniformly."""
    import faiss

    index = faiss.index_factory(shards.dim, factory, faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(index)  # raises for non-IVF factories
    disable_polysemous_training(index)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(shards.count, size=min(train_n, shards.count), replace=False))
    index.train(shards.rows(take))
    return index


def build_large_ivf(
    shard_paths: Sequence[str | Path],
    out_dir: str | Path,
    factory: str = "IVF1024,PQ64",
    *,
    train_n: int = 262_144,
    chunk: int = 262_144,
    seed: int = 0,
    progress=None,
) -> LargeBuildStats:
    """Write `out_dir/large.index` + `out_dir/lists.ivfdata` (see module docstring)."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    shards = VectorShards(list(shard_paths))
    out = Path(out_dir)
    blocks_dir = out / "blocks"
    shutil.rmtree(out, ignore_errors=True)
    blocks_dir.mkdir(parents=True)
    stats = LargeBuildStats(vectors=shards.count)
    started = time.perf_counter()
    trained = train_index(shards, factory, train_n, seed)
    stats.train_s = time.perf_counter() - started
    trained_bytes = faiss.serialize_index(trained)

    started = time.perf_counter()
    block_paths = []
    for first, rows in shards.chunks(chunk):
        block = faiss.deserialize_index(trained_bytes)  # the trained, empty index
        block.add_with_ids(rows, np.arange(first, first + len(rows), dtype=np.int64))
        path = blocks_dir / f"block-{len(block_paths):05d}.index"
        faiss.write_index(block, str(path))
        block_paths.append(str(path))
        del block, rows
        if progress is not None:
            progress(first, shards.count)
    stats.add_s = time.perf_counter() - started
    stats.blocks = len(block_paths)

    started = time.perf_counter()
    merged = faiss.deserialize_index(trained_bytes)
    # the index file records the .ivfdata path as given and opens it lazily, relative to the
    # working directory of the search: absolute, so the folder must stay where it was built
    merge_ondisk(merged, block_paths, str((out / IVFDATA_NAME).resolve()))
    faiss.write_index(merged, str(out / INDEX_NAME))
    del merged
    shutil.rmtree(blocks_dir)
    stats.merge_s = time.perf_counter() - started
    return stats


def open_large_ivf(out_dir: str | Path, nprobe: int = 16):
    """The index of `build_large_ivf`; its inverted lists stay on disk (memory-mapped)."""
    import faiss

    # no IO flags: OnDiskInvertedLists map their file anyway; IO_FLAG_MMAP or IO_FLAG_READ_ONLY
    # made searches segfault here (faiss-cpu from PyPI)
    index = faiss.read_index(str(Path(out_dir) / INDEX_NAME))
    faiss.extract_index_ivf(index).nprobe = nprobe
    return index


def search_reranked(index, shards: VectorShards, queries: np.ndarray, k: int, k_factor: int = 16):
    """Top-k by exact inner product among the index's `k * k_factor` candidates per query."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    _, candidates = index.search(queries, k * k_factor)
    scores = np.full((len(queries), k), -np.inf, np.float32)
    ids = np.full((len(queries), k), -1, np.int64)
    for q, row in enumerate(candidates):
        row = row[row >= 0]
        if not len(row):
            continue
        exact = shards.rows(row) @ queries[q]
        top = np.argsort(-exact, kind="stable")[:k]
        scores[q, :len(top)], ids[q, :len(top)] = exact[top], row[top]
    return scores, ids
