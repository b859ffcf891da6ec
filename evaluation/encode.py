"""Cached activations -> every method's global descriptors, from one forward per image.

The database and whitening images are encoded from their cached full-image activations. A
query with a box is encoded the way each method uses a box: NMF methods select the factors
inside the box on the *full* image's activations; the baselines crop the *image* to the box,
which costs one more (cached) forward per query. A full-image query that is also a database
image (leave-one-out) reuses its database descriptor (`queries_reusing_database`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from descriptors.aggregate import aggregate_rows, l2_normalize_rows
from descriptors.encode import rows_by_method
from descriptors.nmf import chosen_algorithm
from descriptors.pipeline import NMF_METHODS, DescriptorConfig, local_descriptors_by_method
from descriptors.query_expansion import ALPHA_QE, EXPANSIONS, expand_query
from descriptors.rerank import RowCodec, row_features
from descriptors.whitening import PCAWhitening
from evaluation.cache import ActivationCache, Box, ImageRequest

# PCA on more rows than this adds time, not accuracy (1280-D); a fixed-seed subsample keeps memory bounded
MAX_WHITENING_ROWS = 60_000


class MethodEncoder:
    """Global descriptors of several methods from the same cached activations."""

    def __init__(
        self,
        cache: ActivationCache,
        methods: Sequence[str],
        k: int = 4,
        progress: bool | None = None,
        row_dim: int | None = None,
    ) -> None:
        self.cache = cache
        self.methods = list(methods)
        algorithm = chosen_algorithm()  # the algorithm of --nmf-solver (auto: the product's, mu)
        self.configs = {m: DescriptorConfig(method=m, k=k, nmf_algorithm=algorithm) for m in self.methods}
        self.progress = progress
        self.whitenings: dict[str, PCAWhitening | None] = dict.fromkeys(self.methods)
        # re-ranking rows (descriptors.rerank), kept when row_dim is set (0: uncompressed):
        # compressed as the index stores them, by a RowCodec fitted on the database's rows
        self.row_dim = row_dim
        self.codecs: dict[str, RowCodec | None] = dict.fromkeys(self.methods)
        self.database_rows: dict[str, list[np.ndarray]] = {}
        self.query_rows: dict[str, list[np.ndarray]] = {}

    def _kernel_rows(self, method: str, rows: list[np.ndarray], fit: bool = False) -> list[np.ndarray]:
        feats = [row_features(r, self.whitenings[method]) for r in rows]
        if fit:
            dim = min(self.row_dim or 0, feats[0].shape[1]) if feats else 0
            self.codecs[method] = RowCodec.fit(np.concatenate(feats), dim) if dim else None
        codec = self.codecs[method]
        return [codec.decode(codec.encode(f)) for f in feats] if codec is not None else feats

    @property
    def needs_crops(self) -> bool:
        return any(m not in NMF_METHODS for m in self.methods)

    def _bar(self, total: int, label: str) -> tqdm:
        import sys

        show = sys.stderr.isatty() if self.progress is None else self.progress
        return tqdm(total=total, desc=label, disable=not show)

    def local_rows(
        self, requests: Sequence[ImageRequest], label: str = "descriptors"
    ) -> dict[str, list[np.ndarray]]:
        """Full-image local rows of every request for every method (chunked: bounded memory)."""
        self.cache.ensure(requests, progress=self.progress, label=f"{label}: activations")
        out: dict[str, list[np.ndarray]] = {m: [] for m in self.methods}
        with self._bar(len(requests), f"{label}: rows") as bar:
            for chunk in self.cache.iter_chunks(requests):
                acts = [c.activation for c in chunk]
                # one NMF per chunk serves both nmf-v and nmf-vu
                by_method = local_descriptors_by_method(acts, [self.configs[m] for m in self.methods])
                for m, rows in zip(self.methods, by_method, strict=True):
                    out[m].extend(rows)
                bar.update(len(chunk))
        return out

    def fit_whitening(self, requests: Sequence[ImageRequest], dim: int | None = None) -> None:
        """PCA-whitening per method, learned on the l2-normalized rows of `requests`."""
        rows = self.local_rows(requests, label="whitening set")
        rng = np.random.default_rng(0)
        for m in self.methods:
            stacked = l2_normalize_rows(np.concatenate(rows[m], axis=0))
            stacked = stacked[np.any(stacked != 0, axis=1)]
            if len(stacked) > MAX_WHITENING_ROWS:
                stacked = stacked[np.sort(rng.choice(len(stacked), MAX_WHITENING_ROWS, replace=False))]
            self.whitenings[m] = PCAWhitening.fit(stacked, dim, allow_clamp=dim is None)

    def _aggregate(self, method: str, rows: list[np.ndarray]) -> np.ndarray:
        return np.stack([aggregate_rows(r, self.whitenings[method]) for r in rows])

    def database(self, requests: Sequence[ImageRequest], label: str = "database") -> dict[str, np.ndarray]:
        rows = self.local_rows(requests, label)
        if self.row_dim is not None:
            self.database_rows = {m: self._kernel_rows(m, rows[m], fit=True) for m in self.methods}
        return {m: self._aggregate(m, rows[m]) for m in self.methods}

    def queries(self, requests: Sequence[ImageRequest], boxes: Sequence[Box | None]) -> dict[str, np.ndarray]:
        """Query descriptors; `boxes` in pixels of each (EXIF-transposed) query image, or None."""
        crops = [ImageRequest(r.path, b) for r, b in zip(requests, boxes, strict=True) if b is not None]
        self.cache.ensure(
            list(requests) + (crops if self.needs_crops else []), progress=self.progress, label="queries"
        )
        full = [self.cache.load(r) for r in requests]
        acts = [c.activation for c in full]
        nmf_methods = [m for m in self.methods if m in NMF_METHODS]
        baselines = [m for m in self.methods if m not in NMF_METHODS]
        rows: dict[str, list[np.ndarray]] = {}
        # one encoding with the searcher's (descriptors.encode): NMF methods keep the factors
        # inside the box on the full image's activations; baselines forward the image cropped to
        # the box (backbone_input's crop, cached as its own request, loaded once for all)
        if nmf_methods:
            by_method = rows_by_method(
                acts, [c.image_wh for c in full], boxes, [self.configs[m] for m in nmf_methods]
            )
            rows.update(zip(nmf_methods, by_method, strict=True))
        if baselines:
            cropped: list[torch.Tensor] = [
                a if b is None else self.cache.load(ImageRequest(r.path, b)).activation
                for a, r, b in zip(acts, requests, boxes, strict=True)
            ]
            by_method = local_descriptors_by_method(cropped, [self.configs[m] for m in baselines])
            rows.update(zip(baselines, by_method, strict=True))
        if self.row_dim is not None:
            self.query_rows = {m: self._kernel_rows(m, rows[m]) for m in self.methods}
        return {m: self._aggregate(m, rows[m]) for m in self.methods}

    def queries_reusing_database(
        self,
        requests: Sequence[ImageRequest],
        boxes: Sequence[Box | None],
        db_requests: Sequence[ImageRequest],
        database: dict[str, np.ndarray],
    ) -> dict[str, np.ndarray]:
        """`queries`, except that a full-image query (no box) whose image is a database image takes
        that image's descriptor from `database` (the encoding of `db_requests`) instead of being
        encoded again: same cached activations, same NMF (seeded per image), same vector. Leave-one-
        out protocols, whose every query is a database image, then run no query NMF at all."""
        position = {self.cache.file_for(r): i for i, r in enumerate(db_requests) if r.crop is None}
        reuse = [
            position.get(self.cache.file_for(r)) if b is None and r.crop is None else None
            for r, b in zip(requests, boxes, strict=True)
        ]
        todo = [i for i, j in enumerate(reuse) if j is None]
        encoded = self.queries([requests[i] for i in todo], [boxes[i] for i in todo]) if todo else {}
        reused = [(i, j) for i, j in enumerate(reuse) if j is not None]
        if self.row_dim is not None:
            encoded_rows = dict(self.query_rows) if todo else {}
            self.query_rows = {}
            for m in self.methods:
                merged: list = [None] * len(requests)
                for at, i in enumerate(todo):
                    merged[i] = encoded_rows[m][at]
                for i, j in reused:
                    merged[i] = self.database_rows[m][j]
                self.query_rows[m] = merged
        out = {}
        for m in self.methods:
            vectors = np.empty((len(requests), database[m].shape[1]), dtype=database[m].dtype)
            if todo:
                vectors[todo] = encoded[m]
            if reused:
                at, source = zip(*reused, strict=True)
                vectors[list(at)] = database[m][list(source)]
            out[m] = vectors
        return out


def rank_database(queries: np.ndarray, database: np.ndarray) -> np.ndarray:
    """(n_q, n_db) database indices by decreasing inner product (ties: lower index first)."""
    return np.argsort(-(queries @ database.T), axis=1, kind="stable")


def expand_queries(
    queries: np.ndarray,
    database: np.ndarray,
    ranking: np.ndarray,
    n: int,
    exclude: Sequence[int | None] | None = None,
    alpha: float = 0.0,
) -> np.ndarray:
    """Average query expansion (alpha 0): query + its top-n database descriptors, l2-normalized;
    alpha-QE (Radenovic et al. 2018): each neighbour weighted by its similarity^alpha (negative
    similarities weigh 0).

    `exclude[i]` (a database index, e.g. the query's own image in leave-one-out) is skipped.
    """
    if n == 0:
        return queries
    expanded = np.empty_like(queries)
    for i in range(len(queries)):
        skip = None if exclude is None else exclude[i]
        top = [j for j in ranking[i, : n + 1] if j != skip][:n]
        expanded[i] = expand_query(queries[i], database[top], n, alpha=alpha)
    return expanded


def rerank_rankings(
    ranking: np.ndarray,
    query_rows: Sequence[np.ndarray],
    database_rows: Sequence[np.ndarray],
    depth: int,
    kernel,
) -> np.ndarray:
    """Each query's top `depth` database indices reordered by the match kernel of its rows with
    theirs (`descriptors.rerank`); the rest of the ranking unchanged."""
    from descriptors.rerank import rerank_top, self_similarity

    if depth <= 0:
        return ranking
    out = ranking.copy()
    self_sims = np.array([self_similarity(r, kernel) for r in database_rows])
    for i, q_rows in enumerate(query_rows):
        top = ranking[i, :depth]
        out[i, : len(top)], _ = rerank_top(top, q_rows, [database_rows[j] for j in top], kernel, self_sims[top])
    return out


# query expansions dff-eval measures: the searcher's (descriptors.query_expansion.EXPANSIONS):
# average QE, alpha-QE (ALPHA_QE), diffusion on the k-NN graph (k-NN DIFFUSION_K)


def rank_pipeline(
    queries: np.ndarray,
    database: np.ndarray,
    *,
    qe: int = 0,
    expansion: str = "average",
    rerank: int = 0,
    kernel=None,
    query_rows: Sequence[np.ndarray] | None = None,
    database_rows: Sequence[np.ndarray] | None = None,
    exclude: Sequence[int | None] | None = None,
    affinity=None,
) -> np.ndarray:
    """(n_q, n_db) ranking: first stage (inner product), re-ranking of the top `rerank` by the
    match kernel, then query expansion whose neighbours are the re-ranked top `qe` (average /
    alpha-QE: the expanded query's ranking; diffusion: the walk seeded by them on `affinity`).
    The expanded ranking is not re-ranked again: a second re-ranking by the query's own rows
    undid the expansion (measured: CroW box queries QE 5 87.8 -> 79.5 Medium)."""
    if expansion not in EXPANSIONS:
        raise ValueError(f"unknown query expansion {expansion!r}; choose from {', '.join(EXPANSIONS)}")

    ranking = rank_database(queries, database)
    if rerank:
        ranking = rerank_rankings(ranking, query_rows, database_rows, rerank, kernel)
    if not qe:
        return ranking
    if expansion == "diffusion":
        from descriptors.diffusion import diffusion_rank

        sims = queries @ database.T
        return np.stack(
            [
                diffusion_rank(sims[i], affinity, k=qe, exclude=None if exclude is None else exclude[i], order=ranking[i])
                for i in range(len(queries))
            ]
        )
    alpha = ALPHA_QE if expansion == "alpha" else 0.0
    return rank_database(expand_queries(queries, database, ranking, qe, exclude, alpha=alpha), database)
