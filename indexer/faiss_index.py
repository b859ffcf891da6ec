"""FAISS indexes from factory strings: creation, training, adding, saving, searching.

Every index is `IndexIDMap2(index_factory(d, factory, METRIC_INNER_PRODUCT))` over l2-normalized
vectors, so scores are cosine similarities and ids are the catalog's ids.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from .errors import FaissTrainingError, IndexerError
from .storage import atomic_write

# faiss's k-means warns below 39 points per centroid and gives poor centroids; we refuse instead.
MIN_POINTS_PER_CENTROID = 39
# past this size a memory-mapped vectors file is read with pread (`large_ivf.VectorShards`), not
# through the map: every page read through a map stays in the process's resident set until it is
# unmapped, so streaming a 10 GB vectors.npy into FAISS showed as a 10 GB RSS
STREAM_VECTORS_BYTES = 1 << 30


def min_training_vectors(factory: str) -> int:
    """Training vectors a factory needs (0 when it needs no training)."""
    need = 0
    for match in re.finditer(r"IVF(\d+)", factory):
        need = max(need, MIN_POINTS_PER_CENTROID * int(match.group(1)))
    for match in re.finditer(r"PQ(\d+)(?:x(\d+))?", factory):
        bits = int(match.group(2) or 8)
        need = max(need, MIN_POINTS_PER_CENTROID * (1 << bits))
    for _ in re.finditer(r"(?:SQ|LSH|PCA|OPQ)", factory):
        need = max(need, 1)
    return need


def suggest_factory(n_vectors: int) -> str:
    if n_vectors < MIN_POINTS_PER_CENTROID * 16:
        return "Flat (or HNSW32)"
    nlist = 1 << int(np.log2(max(16, n_vectors // MIN_POINTS_PER_CENTROID)))
    return f"Flat, HNSW32, or IVF{nlist},Flat"


def new_index(dim: int, factory: str):
    import faiss

    try:
        inner = faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise IndexerError(
            f"FAISS cannot build {factory!r} for dimension {dim}: {str(exc).strip().splitlines()[-1]}; "
            "see https://github.com/facebookresearch/faiss/wiki/The-index-factory"
        ) from exc
    return faiss.IndexIDMap2(inner)


def disable_polysemous_training(index) -> None:
    """Turn off the polysemous training FAISS's factory enables for every PQ (IVF-PQ included).

    It permutes the PQ centroids so that Hamming distances between codes approximate the real
    ones; only a polysemous search (`polysemous_ht`) uses that, and we never set it: the codes'
    ADC distances, hence our results, do not depend on it. Its simulated annealing cost more
    than the k-means itself (docs/scaling.md), at every build.
    """
    import faiss

    index = faiss.downcast_index(index)
    for child in ("index", "base_index"):  # IDMap / PreTransform, Refine
        if hasattr(index, child) and getattr(index, child) is not None:
            disable_polysemous_training(getattr(index, child))
    if hasattr(index, "do_polysemous_training"):
        index.do_polysemous_training = False


def _maybe_gpu(index, device: str):
    """A GPU clone of `index` when faiss-gpu is installed and a CUDA device was asked for."""
    import faiss

    if not str(device).startswith("cuda") or not hasattr(faiss, "StandardGpuResources"):
        return index, False
    if faiss.get_num_gpus() < 1:
        return index, False
    try:
        resources = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(resources, 0, index), True
    except RuntimeError:  # e.g. HNSW has no GPU version: stay on the CPU
        return index, False


def build_faiss_index(
    vectors_by_id: np.ndarray,
    ids: np.ndarray,
    factory: str,
    *,
    train_max: int = 262_144,
    seed: int = 0,
    device: str = "cpu",
    chunk: int = 65_536,
    stream: bool | None = None,
):
    """Create, train (on a seeded sample) and fill an index with `vectors_by_id[ids]` under `ids`.

    `vectors_by_id` (row = id, may be a memmap) is read chunk by chunk: memory stays bounded.
    `stream` (default: a memmapped `.npy` past `STREAM_VECTORS_BYTES`) reads the rows from the
    file with `pread` instead of through the map; the index is the same either way.
    """
    import faiss

    ids = np.asarray(ids, dtype=np.int64)
    n, dim = len(ids), vectors_by_id.shape[1]
    take_rows = _row_reader(vectors_by_id, stream)
    index = new_index(dim, factory)
    disable_polysemous_training(index)
    if not index.is_trained:
        need = min_training_vectors(factory)
        if n < need:
            raise FaissTrainingError(
                f"--faiss {factory!r} needs at least {need:,} training vectors "
                f"({MIN_POINTS_PER_CENTROID} per centroid) but the collection has {n:,}; "
                f"use a smaller factory, e.g. {suggest_factory(n)}"
            )
        rng = np.random.default_rng(seed)
        take = np.sort(rng.choice(n, size=min(n, max(need, train_max)), replace=False))
        sample = take_rows(ids[take])
        work, on_gpu = _maybe_gpu(index, device)
        work.train(sample)
        index = faiss.index_gpu_to_cpu(work) if on_gpu else work
    work, on_gpu = _maybe_gpu(index, device)
    for start in range(0, n, chunk):
        chunk_ids = ids[start:start + chunk]
        block = take_rows(chunk_ids)
        work.add_with_ids(block, chunk_ids)
    return faiss.index_gpu_to_cpu(work) if on_gpu else work


def _row_reader(vectors_by_id: np.ndarray, stream: bool | None):
    """`ids -> float32 rows` of `vectors_by_id`: through the array, or from its file (see `stream`)."""
    filename = getattr(vectors_by_id, "filename", None)
    if stream is None:
        stream = filename is not None and vectors_by_id.nbytes > STREAM_VECTORS_BYTES
    if not stream:
        return lambda ids: np.ascontiguousarray(vectors_by_id[ids], dtype=np.float32)
    if filename is None or vectors_by_id.dtype != np.float32:
        raise ValueError("stream=True needs a float32 memory-mapped .npy (np.load(mmap_mode=...) or open_memmap)")
    from .large_ivf import VectorShards

    if isinstance(vectors_by_id, np.memmap):
        vectors_by_id.flush()  # the rows written through the map must be in the file pread reads
    shards = VectorShards([Path(filename)])
    if shards.count != len(vectors_by_id):
        raise ValueError(f"{filename} holds {shards.count} rows, the array {len(vectors_by_id)}")
    return shards.take


def faiss_writer(index):
    """A `write(temp_path)` for `storage.atomic_write` that raises OSError on I/O failure."""
    import faiss

    def write(temp: str) -> None:
        try:
            faiss.write_index(index, temp)
        except RuntimeError as exc:  # faiss reports I/O failures (ENOSPC, EFBIG) as RuntimeError
            message = str(exc).strip().splitlines()[-1]
            raise OSError(message.split(": ")[-1] if ": " in message else message) from exc

    return write


def write_faiss_index(index, path: str | Path) -> None:
    atomic_write(path, faiss_writer(index))


def read_faiss_index(path: str | Path):
    import faiss

    return faiss.read_index(str(path))


# `faiss.write_index` of an IndexIDMap2 / IndexIDMap starts with its fourcc, then the header of
# every index: d (int32), ntotal (int64), ... (faiss/impl/index_write.cpp, native byte order)
_ID_MAP_FOURCCS = (b"IxM2", b"IxMp")
_HEADER = struct.Struct("=4siq")


def read_faiss_ntotal(path: str | Path) -> int:
    """How many vectors a saved index holds, from the first 16 bytes of the file.

    `dff-index info` uses it so that a multi-GB index is not loaded to be counted. A file that
    does not start with an ID map header (not written by this package) is opened with
    `IO_FLAG_MMAP`, which maps the vectors instead of reading them.
    """
    with open(path, "rb") as handle:
        head = handle.read(_HEADER.size)
    if len(head) == _HEADER.size:
        fourcc, _dim, ntotal = _HEADER.unpack(head)
        if fourcc in _ID_MAP_FOURCCS and ntotal >= 0:
            return int(ntotal)
    import faiss

    return int(faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY).ntotal)


def apply_search_params(index, params: str) -> None:
    if params:
        import faiss

        try:
            faiss.ParameterSpace().set_index_parameters(index, params)
        except RuntimeError as exc:
            raise IndexerError(f"FAISS search parameters {params!r} do not apply to this index: {exc}") from exc


def _params_with_selector(index, sel):
    """Search parameters carrying `index`'s own nprobe / efSearch / k_factor plus selector `sel`
    (a parameters object replaces the index's settings for that search, defaults included)."""
    import faiss

    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        base = _params_with_selector(index.base_index, sel)
        return faiss.IndexRefineSearchParameters(sel=sel, k_factor=index.k_factor, base_index_params=base)
    if isinstance(index, faiss.IndexHNSW):
        return faiss.SearchParametersHNSW(sel=sel, efSearch=index.hnsw.efSearch)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        ivf = None
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nprobe)
    return faiss.SearchParameters(sel=sel)


def excluding_search_params(index, hidden_ids: np.ndarray):
    """(params, objects to keep alive): searching `index` (an IndexIDMap2) with params never
    returns `hidden_ids`. The ID map translates the top-level selector from ids to its internal
    positions itself; an inner IndexRefine's base index gets the translated one explicitly."""
    import faiss

    batch = faiss.IDSelectorBatch(np.ascontiguousarray(hidden_ids, dtype=np.int64))
    not_hidden = faiss.IDSelectorNot(batch)
    translated = faiss.IDSelectorTranslated(index.id_map, not_hidden)
    params = _params_with_selector(index.index, not_hidden)
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexRefine):
        params.base_index_params.sel = translated
    return params, (batch, not_hidden, translated, params.base_index_params if hasattr(params, "base_index_params") else None)


def remove_ids(index, ids: np.ndarray, vectors_by_id: np.ndarray, keep_ids: np.ndarray, factory: str):
    """Remove ids; indexes without removal support (HNSW) are rebuilt from the kept vectors."""
    try:
        index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))
        return index
    except RuntimeError:
        pass
    import faiss

    rebuilt = new_index(index.d, factory)
    if not rebuilt.is_trained:  # reuse the trained inner index's training by cloning it empty
        rebuilt = faiss.IndexIDMap2(faiss.clone_index(faiss.downcast_index(index.index)))
        rebuilt.index.reset()
    if len(keep_ids):
        rebuilt.add_with_ids(np.ascontiguousarray(vectors_by_id[keep_ids], dtype=np.float32), keep_ids.astype(np.int64))
    return rebuilt
