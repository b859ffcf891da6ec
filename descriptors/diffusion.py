"""Diffusion on the k-NN graph of the database (Iscen et al., CVPR 2017, global descriptors).

Offline: each database vector's k nearest neighbours with their similarities (`knn_graph`,
stored with the index). Online: the query's top-k similarities seed a random walk on the graph;
images connected to the query through chains of mutual neighbours rise even when their direct
similarity is low. Ranking score f solves (I - alpha S) f = y, S = D^-1/2 W D^-1/2, where
W_ij = s_ij^gamma on mutual k-NN pairs (both directions) and y_j = s(q, j)^gamma on the query's
top-k; solved by conjugate gradient. Images the walk does not reach keep their first-stage order
after every reached one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIFFUSION_K = 10  # neighbours per database image in the graph, and seeds per query (dff-eval)
DIFFUSION_ALPHA = 0.99
DIFFUSION_GAMMA = 3.0

__all__ = ["DIFFUSION_K", "DiffusionGraph", "diffuse", "diffusion_order", "diffusion_rank", "exact_neighbours", "knn_graph", "merge_neighbours"]


@dataclass
class DiffusionGraph:
    """`neighbours (n, k)` database positions and `similarities (n, k)` (self excluded)."""

    neighbours: np.ndarray
    similarities: np.ndarray

    def __post_init__(self) -> None:
        if self.neighbours.shape != self.similarities.shape or self.neighbours.ndim != 2:
            raise ValueError(
                f"DiffusionGraph: neighbours {self.neighbours.shape} and similarities "
                f"{self.similarities.shape} must be equal (n, k) arrays"
            )

    def __len__(self) -> int:
        return int(self.neighbours.shape[0])

    def affinity(self, gamma: float = 3.0):
        """S = D^-1/2 W D^-1/2 as a scipy CSR matrix (W: mutual neighbours, s^gamma)."""
        from scipy import sparse

        n, k = self.neighbours.shape
        rows = np.repeat(np.arange(n), k)
        cols = self.neighbours.reshape(-1)
        values = np.maximum(self.similarities.reshape(-1), 0.0) ** gamma
        keep = (cols >= 0) & (cols != rows)
        w = sparse.csr_matrix((values[keep], (rows[keep], cols[keep])), shape=(n, n))
        w = w.minimum(w.T)  # mutual neighbours only
        degree = np.asarray(w.sum(axis=1)).ravel()
        inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
        d = sparse.diags(inv_sqrt)
        return (d @ w @ d).tocsr()


def knn_graph(vectors: np.ndarray, k: int = 50, block: int = 2048) -> DiffusionGraph:
    """Each l2-normalized vector's k most similar others (inner product), by exact search in
    blocks: the same search (`exact_neighbours`) that the graph stored with an index uses."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    k = max(0, min(int(k), n - 1))
    positions = np.arange(n, dtype=np.int64)
    neighbours = np.empty((n, k), dtype=np.int64)
    similarities = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        rows = slice(start, start + block)
        neighbours[rows], similarities[rows] = exact_neighbours(vectors[rows], positions[rows], [(positions, vectors)], k)
    return DiffusionGraph(neighbours, similarities)


def exact_neighbours(
    queries: np.ndarray, query_ids: np.ndarray, chunks, depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's `depth` most similar vectors among `chunks` ((ids, vectors) pairs), itself
    excluded: (ids (n, depth), similarities), -1 / -inf padding, best first, ties by id."""
    n = len(queries)
    best_ids = np.full((n, 0), -1, np.int64)
    best_sims = np.full((n, 0), -np.inf, np.float32)
    queries = np.ascontiguousarray(queries, np.float32)
    for ids, vectors in chunks:
        if not len(ids):
            continue
        sims = queries @ vectors.T
        sims[query_ids[:, None] == ids[None, :]] = -np.inf
        if len(ids) > depth:  # the chunk's own best first: the merge below stays (n, 2 depth)
            top = np.argpartition(-sims, depth - 1, axis=1)[:, :depth]
            chunk_ids, sims = ids[top], np.take_along_axis(sims, top, axis=1)
        else:
            chunk_ids = np.broadcast_to(ids, (n, len(ids)))
        all_ids = np.concatenate([best_ids, chunk_ids], axis=1)
        all_sims = np.concatenate([best_sims, sims], axis=1)
        order = np.lexsort((all_ids, -all_sims), axis=1)[:, :depth] if n else np.zeros((0, 0), np.int64)
        best_ids = np.take_along_axis(all_ids, order, axis=1)
        best_sims = np.take_along_axis(all_sims, order, axis=1)
    width = best_ids.shape[1]
    if width < depth:
        best_ids = np.pad(best_ids, ((0, 0), (0, depth - width)), constant_values=-1)
        best_sims = np.pad(best_sims, ((0, 0), (0, depth - width)), constant_values=-np.inf)
    best_ids = np.where(np.isfinite(best_sims), best_ids, -1)
    return best_ids, best_sims.astype(np.float32)


def diffusion_rank(
    query_similarities: np.ndarray,
    affinity,
    *,
    k: int = 10,
    alpha: float = 0.99,
    gamma: float = 3.0,
    iterations: int = 20,
    exclude: int | None = None,
    order: np.ndarray | None = None,
) -> np.ndarray:
    """Database positions, best first, for one query given its similarity to every database
    vector `(n,)` and `DiffusionGraph.affinity(gamma)`. `exclude`: a position that may not seed
    the walk (leave-one-out: the query's own image). `order`: the ranking to take the k seeds
    from (e.g. re-ranked; default: by `query_similarities`); images the walk does not reach
    follow in that order."""
    sims = np.asarray(query_similarities, dtype=np.float64)
    order = np.argsort(-sims, kind="stable") if order is None else np.asarray(order)
    seeds = np.array([j for j in order[: k + 1] if j != exclude][:k], dtype=np.int64)
    f = diffuse(seeds, sims[seeds], affinity, alpha=alpha, gamma=gamma, iterations=iterations)
    return order if f is None else diffusion_order(f, order)


def diffusion_order(f: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Positions the walk reached (f > 0), best f first (ties by position), then the positions of
    `order` (a first-stage ranking, all positions or a top list) it did not reach, in that order."""
    reached = f > 1e-12
    n_reached = int(reached.sum())
    ranked = np.lexsort((np.arange(len(f)), -np.where(reached, f, 0.0), ~reached))[:n_reached]
    order = np.asarray(order)
    return np.concatenate([ranked, order[~reached[order]]])


def diffuse(
    seeds: np.ndarray, seed_similarities: np.ndarray, affinity, *, alpha: float = 0.99, gamma: float = 3.0,
    iterations: int = 20,
) -> np.ndarray | None:
    """The walk's scores f (n,) from `seeds` (database positions) with their similarities to the
    query: f solves (I - alpha S) f = y by conjugate gradient; None when no seed has a positive
    similarity (nothing to diffuse). The one implementation behind dff-eval and the searcher."""
    from scipy.sparse import identity
    from scipy.sparse.linalg import cg

    n = affinity.shape[0]
    y = np.zeros(n)
    seeds = np.asarray(seeds, dtype=np.int64)
    y[seeds] = np.maximum(np.asarray(seed_similarities, dtype=np.float64), 0.0) ** gamma
    if not y.any():
        return None
    system = identity(n, format="csr") - alpha * affinity
    f, _ = cg(system, y, maxiter=iterations)
    return f


def merge_neighbours(
    neighbours: np.ndarray, similarities: np.ndarray, floor: float,
    candidates: np.ndarray, candidate_similarities: np.ndarray, k: int,
) -> tuple[np.ndarray, np.ndarray, float]:
    """One node's list (ids best first, -1 / -inf padding) and its `floor` (the list holds every
    live node more similar than `floor`) merged with `candidates`: the k best, best first, and the
    new floor. Only candidates above the floor enter, so a list that removals shortened stays the
    exact top of the live nodes (it is not refilled past nodes it may be missing)."""
    live = neighbours >= 0
    ids, sims = neighbours[live], similarities[live].astype(np.float32)
    take = (candidate_similarities > floor) & ~np.isin(candidates, ids) & (candidates >= 0)
    ids = np.concatenate([ids, candidates[take]])
    sims = np.concatenate([sims, np.asarray(candidate_similarities, np.float32)[take]])
    order = np.lexsort((ids, -sims))
    if len(order) > k:
        floor = max(float(floor), float(sims[order[k - 1]]))
        order = order[:k]
    out_ids = np.full(k, -1, np.int64)
    out_sims = np.full(k, -np.inf, np.float32)
    out_ids[: len(order)], out_sims[: len(order)] = ids[order], sims[order]
    return out_ids, out_sims, float(floor)
