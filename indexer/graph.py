"""The diffusion k-NN graph stored with an index (`descriptors.diffusion` ranks with it).

Each live image's k most similar other images (cosine of the stored float32 vectors, exact),
kept by image id. Storage: `manifest["graph"]` names the files, and every file is written before
the manifest that names it, so the graph always describes the vectors of the generation it is
committed with (`commit_generation` updates it in the same commit; a manifest whose graph says
another generation is refused, never used silently):

    "graph": {"k": 10, "depth": 40, "generation": G,
              "files": [{"generation": G0, "file": "segments/<G0>.graph.npz", "count": n}, ...]}

The first file is a full build (`dff-index build --graph K`, `dff-index graph INDEX`, compaction);
each later add/remove generation appends a delta with the rows it changed, which replace the
earlier rows of the same ids. A file holds `ids (n,)`, `neighbours (n, k)` (ids, -1 padding),
`similarities (n, k)` and `floors (n,)`: row i holds every live image more similar than
`floors[i]` (the k-th similarity when the row is full, -inf when it holds every other image).

Updates, O(batch x search):
- an added image: its k nearest by one exact search over the live vectors;
- an existing image: merged with the added images among the added image's `depth` nearest
  (default 4 k) that beat its floor (`descriptors.diffusion.merge_neighbours`);
- a removed image: its row is dropped, and it is dropped from the lists that hold it when the
  graph is read; those lists are not refilled, so they get shorter.

The bound, what `dff-index compact` (or `dff-index graph`) rebuilds: every row is the exact top
of the live images down to its floor, i.e. a prefix of the row a full rebuild gives, shortened
by the removed images it held; and an existing image x can miss an added image b only when x is
not among b's `depth` nearest. Then (x, b) is not a mutual pair (that needs x among b's K <=
depth nearest), so diffusion's mutual-pair affinity loses no edge with b; what x keeps instead
is the old last neighbour b would have pushed out.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from descriptors.diffusion import exact_neighbours

from .errors import IndexFormatError
from .manifest import SEGMENTS_DIR
from .storage import atomic_write

DEFAULT_GRAPH_K = 10  # as dff-eval's diffusion (evaluation.encode.DIFFUSION_K)
DEPTH_PER_K = 4


class StaleGraphError(IndexFormatError):
    """The stored graph describes another generation than the manifest's."""


@dataclass
class IdGraph:
    """Rows by image id: `ids (n,)` sorted, `neighbours (n, k)` ids, `similarities`, `floors`."""

    ids: np.ndarray
    neighbours: np.ndarray
    similarities: np.ndarray
    floors: np.ndarray

    @classmethod
    def empty(cls, k: int) -> IdGraph:
        return cls(np.zeros(0, np.int64), np.zeros((0, k), np.int64), np.zeros((0, k), np.float32), np.zeros(0, np.float32))

    @property
    def k(self) -> int:
        return int(self.neighbours.shape[1])

    def rows(self, ids: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray, float]]:
        at = {int(i): n for n, i in enumerate(self.ids)}
        return {int(i): (self.neighbours[at[int(i)]], self.similarities[at[int(i)]], float(self.floors[at[int(i)]])) for i in ids if int(i) in at}

    def replaced(self, delta: IdGraph, removed: np.ndarray = np.zeros(0, np.int64)) -> IdGraph:
        """This graph with `delta`'s rows replacing (or adding) rows, `removed` ids dropped (rows and
        list entries; lists keep their order and get shorter)."""
        keep = ~np.isin(self.ids, delta.ids) & ~np.isin(self.ids, removed)
        ids = np.concatenate([self.ids[keep], delta.ids])
        neighbours = np.concatenate([self.neighbours[keep], delta.neighbours])
        similarities = np.concatenate([self.similarities[keep], delta.similarities])
        floors = np.concatenate([self.floors[keep], delta.floors])
        if len(removed):
            gone = np.isin(neighbours, removed)
            neighbours, similarities = _compact_rows(np.where(gone, -1, neighbours), np.where(gone, -np.inf, similarities))
        order = np.argsort(ids, kind="stable")
        return IdGraph(ids[order], neighbours[order], similarities[order].astype(np.float32), floors[order].astype(np.float32))

    def positions(self):
        """(ids, `descriptors.diffusion.DiffusionGraph` over positions 0..n-1 of `ids`)."""
        from descriptors.diffusion import DiffusionGraph

        at = np.searchsorted(self.ids, np.maximum(self.neighbours, 0))
        at = np.minimum(at, max(len(self.ids) - 1, 0))
        known = (self.neighbours >= 0) & (len(self.ids) > 0)
        if len(self.ids):
            known &= self.ids[at] == self.neighbours
        return self.ids, DiffusionGraph(np.where(known, at, -1), np.where(known, self.similarities, 0.0))


def _compact_rows(neighbours: np.ndarray, similarities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Move -1 entries to the end of each row, keeping the order of the others."""
    order = np.argsort(neighbours < 0, axis=1, kind="stable")
    return np.take_along_axis(neighbours, order, axis=1), np.take_along_axis(similarities, order, axis=1)


# ---------------------------------------------------------------- the live vectors


def removed_ids(index_dir: Path, manifest: dict) -> np.ndarray:
    files = [np.load(index_dir / t["file"]) for t in manifest["tombstones"]]
    return np.unique(np.concatenate(files)).astype(np.int64) if files else np.zeros(0, np.int64)


def live_chunks(index_dir: Path, manifest: dict, chunk: int = 16_384) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, float32 vectors) of every image visible at `manifest`'s generation, in chunks: the
    segments' rows minus the tombstoned ids and the zero rows a compaction leaves for removed ids."""
    removed = removed_ids(index_dir, manifest)
    for segment in manifest["segments"]:
        vectors = np.load(index_dir / segment["files"]["vectors"], mmap_mode="r")
        for start in range(0, len(vectors), chunk):
            block = np.asarray(vectors[start : start + chunk], np.float32)
            ids = np.arange(start, start + len(block), dtype=np.int64) + int(segment["first_id"])
            keep = ~np.isin(ids, removed) & (np.einsum("ij,ij->i", block, block) > 0)
            yield ids[keep], block[keep]


def _fresh_rows(ids: np.ndarray, found: np.ndarray, sims: np.ndarray, k: int) -> IdGraph:
    neighbours, similarities = found[:, :k].copy(), sims[:, :k].copy()
    full = neighbours[:, -1] >= 0 if k else np.ones(len(ids), bool)
    floors = np.where(full, similarities[:, -1] if k else np.inf, -np.inf).astype(np.float32)
    return IdGraph(np.asarray(ids, np.int64), neighbours, similarities, floors)


# ---------------------------------------------------------------- build, update, read


def build_rows(index_dir: Path, manifest: dict, k: int) -> IdGraph:
    """The full graph of the live images at `manifest`'s generation (O(N^2 d), in chunks)."""
    parts = [
        _fresh_rows(ids, *exact_neighbours(vectors, ids, live_chunks(index_dir, manifest), k), k)
        for ids, vectors in live_chunks(index_dir, manifest, chunk=2048)
    ]
    graph = IdGraph.empty(k)
    for part in parts:
        graph = graph.replaced(part)
    return graph


def update_rows(
    index_dir: Path, manifest: dict, new_manifest: dict, added_ids: np.ndarray, added: np.ndarray | None,
    graph: IdGraph, depth: int,
) -> IdGraph:
    """The delta of one generation: the added images' rows and the existing rows the added
    images enter (searched in `new_manifest`, whose segments already hold them)."""
    k = graph.k
    if not len(added_ids):
        return IdGraph.empty(k)
    found, sims = exact_neighbours(np.asarray(added, np.float32), added_ids, live_chunks(index_dir, new_manifest), max(depth, k))
    delta = _fresh_rows(added_ids, found, sims, k)
    candidates: dict[int, list[tuple[int, float]]] = {}
    batch = set(added_ids.tolist())
    for new_id, row_ids, row_sims in zip(added_ids.tolist(), found, sims, strict=True):
        for other, sim in zip(row_ids.tolist(), row_sims.tolist(), strict=True):
            if other >= 0 and other not in batch:
                candidates.setdefault(other, []).append((new_id, sim))
    if not candidates:
        return delta
    from descriptors.diffusion import merge_neighbours

    existing = graph.rows(np.array(sorted(candidates), np.int64))
    changed = []
    for node, (neighbours, similarities, floor) in existing.items():
        pairs = candidates[node]
        merged = merge_neighbours(
            neighbours, similarities, floor, np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.float32), k
        )
        if not np.array_equal(merged[0], neighbours) or merged[2] != floor:
            changed.append((node, *merged))
    if changed:
        delta = delta.replaced(
            IdGraph(
                np.array([c[0] for c in changed], np.int64), np.stack([c[1] for c in changed]),
                np.stack([c[2] for c in changed]), np.array([c[3] for c in changed], np.float32),
            )
        )
    return delta


def graph_file_name(generation: int) -> str:
    return f"{SEGMENTS_DIR}/{generation:08d}.graph.npz"


def write_rows(index_dir: Path, generation: int, rows: IdGraph) -> dict:
    """Write one graph file (atomically); returns its manifest entry."""
    name = graph_file_name(generation)
    (index_dir / SEGMENTS_DIR).mkdir(exist_ok=True)

    def write(temp: str) -> None:
        with open(temp, "wb") as handle:
            np.savez(handle, ids=rows.ids, neighbours=rows.neighbours, similarities=rows.similarities, floors=rows.floors)

    atomic_write(index_dir / name, write, suffix=".npz")
    return {"generation": int(generation), "file": name, "count": len(rows.ids)}


def _read_file(index_dir: Path, name: str) -> IdGraph:
    with np.load(index_dir / name) as data:
        return IdGraph(data["ids"], data["neighbours"], data["similarities"], data["floors"])


def read_graph(index_dir: str | Path, manifest: dict) -> IdGraph:
    """The graph of `manifest`'s generation; `StaleGraphError` when it describes another one,
    `IndexFormatError` when the index has none."""
    index_dir = Path(index_dir)
    entry = manifest.get("graph")
    if not entry:
        raise IndexFormatError(
            f"{index_dir} has no diffusion graph; build it with `dff-index graph {index_dir}` "
            "(or `dff-index build --graph K`)"
        )
    if int(entry["generation"]) != int(manifest["generation"]):
        raise StaleGraphError(
            f"{index_dir}: the diffusion graph describes generation {entry['generation']}, the index is at "
            f"{manifest['generation']} (written by a program that does not update it); rebuild it with "
            f"`dff-index graph {index_dir}`"
        )
    graph = IdGraph.empty(int(entry["k"]))
    since = None
    for file in entry["files"]:
        if since is None:
            graph = _read_file(index_dir, file["file"])
            since = int(file["generation"])
            continue
        graph = graph.replaced(_read_file(index_dir, file["file"]))
    after = [t for t in manifest["tombstones"] if since is not None and int(t["generation"]) > since]
    removed = np.unique(np.concatenate([np.load(index_dir / t["file"]) for t in after])) if after else np.zeros(0, np.int64)
    return graph.replaced(IdGraph.empty(graph.k), removed.astype(np.int64))


def graph_entry_after(
    index_dir: Path, manifest: dict, new_manifest: dict, generation: int, added_ids: np.ndarray,
    added: np.ndarray | None, rebuild_k: int | None = None, depth: int | None = None,
) -> dict | None:
    """The `graph` entry of generation `generation` (files written, manifest not yet): a full
    build when `rebuild_k`, else the old graph plus this generation's delta; None: no graph."""
    entry = manifest.get("graph")
    if rebuild_k is None and not entry:
        return None
    if rebuild_k is not None:
        k = int(rebuild_k)
        depth = int(depth or DEPTH_PER_K * k)
        files = [write_rows(index_dir, generation, build_rows(index_dir, new_manifest, k))]
    else:
        k, depth = int(entry["k"]), int(entry["depth"])
        graph = read_graph(index_dir, manifest)
        delta = update_rows(index_dir, manifest, new_manifest, added_ids, added, graph, depth)
        files = list(entry["files"])
        if len(delta.ids):
            files.append(write_rows(index_dir, generation, delta))
    return {"k": k, "depth": depth, "generation": int(generation), "files": files}


def graph_files(manifest: dict) -> list[str]:
    entry = manifest.get("graph") or {}
    return [f["file"] for f in entry.get("files", [])]


__all__ = [
    "DEFAULT_GRAPH_K", "GraphAffinity", "IdGraph", "StaleGraphError", "build_rows", "exact_neighbours", "graph_entry_after",
    "graph_files", "live_chunks", "read_graph", "update_rows",
]


class GraphAffinity:
    """An open index's graph as diffusion's affinity over positions (`(ids, S)`), loaded on first
    use and again when the index moves to another generation (a live add/remove: O(N k) once)."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._value: tuple | None = None

    def get(self, index) -> tuple[np.ndarray, object]:
        from descriptors.diffusion import DIFFUSION_GAMMA

        key = (str(index.index_dir), int(index.generation))
        with self._lock:
            if key != self._key:
                ids, graph = read_graph(index.index_dir, index.manifest).positions()
                self._value, self._key = (ids, graph.affinity(DIFFUSION_GAMMA)), key
            return self._value
