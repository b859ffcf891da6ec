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

__all__ = ["DiffusionGraph", "diffusion_rank", "knn_graph"]


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


def knn_graph(vectors: np.ndarray, k: int = 50, block: int = 4096) -> DiffusionGraph:
    """Each l2-normalized vector's k most similar others (inner product), by exact search in blocks."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(vectors)
    k = max(0, min(int(k), n - 1))
    neighbours = np.empty((n, k), dtype=np.int64)
    similarities = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        sims = vectors[start : start + block] @ vectors.T
        sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf  # self
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k else np.empty((len(sims), 0), dtype=np.int64)
        top_sims = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-top_sims, axis=1, kind="stable")
        neighbours[start : start + len(sims)] = np.take_along_axis(top, order, axis=1)
        similarities[start : start + len(sims)] = np.take_along_axis(top_sims, order, axis=1)
    return DiffusionGraph(neighbours, similarities)


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
    from scipy.sparse import identity
    from scipy.sparse.linalg import cg

    sims = np.asarray(query_similarities, dtype=np.float64).copy()
    order = np.argsort(-sims, kind="stable") if order is None else np.asarray(order)
    seeds = [j for j in order[: k + 1] if j != exclude][:k]
    y = np.zeros(len(sims))
    y[seeds] = np.maximum(sims[seeds], 0.0) ** gamma
    if not y.any():
        return order
    system = identity(len(sims), format="csr") - alpha * affinity
    f, _ = cg(system, y, maxiter=iterations)
    # reached images by f, then the rest in first-stage order
    reached = f > 1e-12
    ranked = np.lexsort((np.arange(len(sims)), -np.where(reached, f, 0.0), ~reached))
    unreached = order[~reached[order]]
    return np.concatenate([ranked[: int(reached.sum())], unreached])
