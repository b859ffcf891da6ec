"""Factor-level re-ranking: a selective match kernel over the rows of two images (ASMK-style).

An image is its K rows (NMF factors; R-MAC: its regions), each l2-normalized after the index's
post-processing (`row_features`). Two images X, Y score

    K(X, Y) = sum_ij sigma(x_i . y_j) / sqrt(K(X, X) K(Y, Y)),   sigma(u) = u^alpha if u > tau else 0

(Tolias et al., "To aggregate or not to aggregate", 2013: the selective function sigma keeps the
strong row matches and drops the weak ones that a sum of rows averages in; the self-similarity
normalization keeps an image with many rows from winning by count). The re-ranked score of a
candidate is the kernel score; the search re-ranks its top N by it and keeps the rest in order.

Storage: `RowCodec` projects the rows onto the top `dim` directions of their (uncentered) second
moment, learned on the database's rows, and keeps them as float16: `dim * 2` bytes per row.
Dot products between projected rows approximate the originals' (the projection is orthonormal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .aggregate import l2_normalize_rows, row_features  # row_features: the rows the kernel compares

__all__ = ["DEFAULT_DEPTH", "MatchKernel", "RowCodec", "match_scores", "rerank_top", "row_features", "self_similarity"]

# How many first-stage results are re-ranked when nobody says: `dff-serve --rerank`'s default (and
# so dff-query's, dff-web's, the Ray Serve app's) and `dff-eval --rerank`'s, one number so that
# dff-eval scores what the product serves. 100, the depth, measured in docs/results.md
# ("Issue 13"): NMF V +2.1 (landmark-LOO) / +3.9 (box queries) Medium mAP for +10 ms a query
# (1.11x). An index without stored rows is searched without, with a note saying why.
DEFAULT_DEPTH = 100


@dataclass(frozen=True)
class MatchKernel:
    """sigma(u) = u^alpha for u > tau, else 0; `normalize`: divide by the self-similarities."""

    alpha: float = 3.0
    tau: float = 0.0
    normalize: bool = True

    def __post_init__(self) -> None:
        if not (self.alpha > 0 and np.isfinite(self.alpha)):
            raise ValueError(f"MatchKernel.alpha must be a finite number > 0, got {self.alpha!r}")
        if not -1.0 <= self.tau < 1.0:
            raise ValueError(f"MatchKernel.tau must be in [-1, 1), got {self.tau!r}")

    def sigma(self, similarities: np.ndarray) -> np.ndarray:
        s = np.asarray(similarities, dtype=np.float32)
        return np.where(s > self.tau, np.sign(s) * np.abs(s) ** self.alpha, np.float32(0.0))


def self_similarity(rows: np.ndarray, kernel: MatchKernel) -> float:
    """K(X, X) before normalization (0 for no rows)."""
    rows = np.asarray(rows, dtype=np.float32)
    return float(kernel.sigma(rows @ rows.T).sum()) if len(rows) else 0.0


def match_scores(
    query: np.ndarray,
    candidates: Sequence[np.ndarray],
    kernel: MatchKernel,
    candidate_self: Sequence[float] | None = None,
) -> np.ndarray:
    """Kernel score of the query's rows `(n, d)` with each candidate's rows `(n_i, d)` (one
    matrix product for all candidates). A candidate with no rows scores 0. `candidate_self`:
    their `self_similarity`, when known (saves recomputing it per query)."""
    query = np.asarray(query, dtype=np.float32)
    counts = np.array([len(c) for c in candidates], dtype=np.int64)
    scores = np.zeros(len(candidates), dtype=np.float32)
    if not len(candidates) or not counts.sum() or not len(query):
        return scores
    stacked = np.concatenate([np.asarray(c, dtype=np.float32) for c in candidates if len(c)])
    per_row = kernel.sigma(query @ stacked.T).sum(axis=0)  # (sum n_i,)
    starts = np.concatenate([[0], np.cumsum(counts[counts > 0])[:-1]])
    scores[counts > 0] = np.add.reduceat(per_row, starts)
    if kernel.normalize:
        q_self = self_similarity(query, kernel)
        if candidate_self is None:
            candidate_self = [self_similarity(c, kernel) for c in candidates]
        c_self = np.asarray(candidate_self, dtype=np.float64)
        denominator = np.sqrt(np.maximum(q_self, 1e-12) * np.maximum(c_self, 1e-12))
        scores = np.where(c_self > 0, scores / denominator, 0.0).astype(np.float32)
    return scores


def rerank_top(
    ids: np.ndarray,
    query_rows: np.ndarray,
    candidate_rows: Sequence[np.ndarray],
    kernel: MatchKernel,
    candidate_self: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reorder `ids` (the first-stage top N, best first) by kernel score, stable for ties:
    (ids, scores), both reordered."""
    scores = match_scores(query_rows, candidate_rows, kernel, candidate_self)
    order = np.argsort(-scores, kind="stable")
    return np.asarray(ids)[order], scores[order]


def _top_eigenvectors_from_gram(rows: np.ndarray, dim: int) -> np.ndarray:
    """The top `dim` eigenvectors (C, dim) of rows^T rows for fewer rows n than columns C, from the
    n x n Gram matrix (R R^T w = l w  =>  R^T R (R^T w) = l R^T w): O(n^3 + n^2 C) instead of the
    C x C eigh's O(C^3) (a small build's 1280 x 1280 eigh was 18% of its time on the loaded
    2-core machine). Past the rank of the rows (eigenvalue 0, any orthonormal basis of the rest
    is as good) the columns complete an orthonormal basis from seeded random directions."""
    import torch

    values, w = torch.linalg.eigh(torch.from_numpy(rows @ rows.T))
    values, w = values.numpy()[::-1], w.numpy()[:, ::-1]
    rank = int(np.sum(values > max(float(values[0]), 0.0) * 1e-10)) if len(values) else 0
    rank = min(rank, dim)
    vectors = (rows.T @ w[:, :rank]) / np.sqrt(values[:rank])
    if rank < dim:
        extra = np.random.default_rng(0).normal(size=(rows.shape[1], dim - rank))
        for _ in range(2):  # project out the span twice: orthogonal to float64 rounding
            extra -= vectors @ (vectors.T @ extra)
        extra = torch.linalg.qr(torch.from_numpy(extra))[0].numpy()
        vectors = np.concatenate([vectors, extra], axis=1)
    return np.ascontiguousarray(vectors)


@dataclass
class RowCodec:
    """Rows `(n, C)` -> `(n, dim)` float16 through an orthonormal projection `(C, dim)` (the top
    eigenvectors of the training rows' second moment), re-l2-normalized."""

    projection: np.ndarray  # (C, dim) float32, orthonormal columns

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    @classmethod
    def fit(cls, rows: np.ndarray, dim: int) -> RowCodec:
        rows = np.asarray(rows, dtype=np.float64)
        if rows.ndim != 2 or not len(rows):
            raise ValueError(f"RowCodec.fit: rows must be a non-empty (n, C) array, got shape {rows.shape}")
        if not 1 <= dim <= rows.shape[1]:
            raise ValueError(f"RowCodec.fit: dim must be in [1, {rows.shape[1]}], got {dim}")
        if dim == rows.shape[1]:
            return cls(np.eye(dim, dtype=np.float32))
        import torch

        # torch's eigh follows the caller's torch thread setting; numpy's multi-threaded BLAS
        # spun for minutes on a busy 2-core machine (1280 x 1280)
        if rows.shape[0] < rows.shape[1]:
            return cls(_top_eigenvectors_from_gram(rows, dim).astype(np.float32))
        moment = torch.from_numpy(rows.T @ rows)
        _, vectors = torch.linalg.eigh(moment)
        return cls(np.ascontiguousarray(vectors.numpy()[:, ::-1][:, :dim], dtype=np.float32))

    def encode(self, rows: np.ndarray) -> np.ndarray:
        projected = np.asarray(rows, dtype=np.float32) @ self.projection
        return l2_normalize_rows(projected).astype(np.float16)

    @staticmethod
    def decode(codes: np.ndarray) -> np.ndarray:
        return np.asarray(codes, dtype=np.float32)

    def bytes_per_row(self) -> int:
        return 2 * self.dim
