"""Ranking of one query over an index: FAISS search, factor re-ranking, query expansion (average,
alpha, diffusion) and applying a localization result, as pure functions of an index object.

One implementation for every server: `SearchEngine` (an `OpenIndex`) and the Ray Serve ingress
(a `ShardedIndex` fanning out to shard deployments) both call `rank`; dff-eval's order
(`evaluation.encode.rank_pipeline`) is the reference a test holds them to. `index` is anything
with `.count`, `.search(queries, k)` and `.vectors(ids)`, plus `.factor_rows(ids)` and
`.encode_query_rows(rows)` to re-rank.
"""

from __future__ import annotations

import numpy as np

from descriptors.query_expansion import ALPHA_QE, expand_query
from descriptors.rerank import MatchKernel, rerank_top

from .concurrency import StageClock

__all__ = ["MAX_RERANK", "apply_localization", "diffuse_from", "rank", "rerank_head", "rerank_problem"]

# the deepest re-ranking a server allows unless told otherwise (dff-serve --max-rerank)
MAX_RERANK = 1000


def rerank_problem(depth, max_rerank: int) -> str | None:
    """Why `depth` is not a re-ranking depth this server takes, or None when it is."""
    if isinstance(depth, bool) or not isinstance(depth, int | np.integer) or not 0 <= depth <= max_rerank:
        return f"rerank={depth} is out of range; use 0 (off) to {max_rerank} (dff-serve --max-rerank)"
    return None


def rerank_head(index, rows: np.ndarray, scores: np.ndarray, ids: np.ndarray, depth: int, clock: StageClock):
    """The first `depth` of (scores, ids) reordered by the match kernel of the query's `rows`
    with each one's stored rows (`descriptors.rerank.rerank_top`, as dff-eval); their scores
    become kernel scores (1: the same rows), the rest keep their place and cosine score.
    Returns (scores, ids, each one's first-stage cosine), the cosines for diffusion's seeds."""
    keep = ids >= 0
    scores, ids = scores[keep], ids[keep]
    if not depth or not len(ids):
        return scores, ids, scores
    head = ids[:depth]
    with clock.stage("rerank"):
        reordered, kernel_scores = rerank_top(head, index.encode_query_rows(rows), index.factor_rows(head), MatchKernel())
    position = {int(i): at for at, i in enumerate(head)}
    cosines = np.concatenate([scores[[position[int(i)] for i in reordered]], scores[depth:]])
    return np.concatenate([kernel_scores, scores[depth:]]).astype(np.float32), np.concatenate([reordered, ids[depth:]]), cosines


def rank(
    index, query: np.ndarray, top_k: int, depth: int, clock: StageClock, expansion: str = "average", graph=None,
    rows: np.ndarray | None = None, rerank: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """FAISS search, re-ranking and query expansion, in dff-eval's order (evaluation.encode.
    rank_pipeline): the first `rerank` results (with the query's local `rows`) re-ranked by
    the match kernel; then query expansion over the first `depth` of that list when `depth` > 0
    (descriptors.query_expansion / descriptors.diffusion), whose ranking is not re-ranked again:
    `expansion` average or alpha re-searches with the expanded query; diffusion walks the
    index's stored k-NN graph (`graph`: an `indexer.graph.GraphAffinity`) from them and returns
    what it reaches, best first, then the rest of the first stage. The first search asks for
    max(top_k, depth, rerank) so that a short list cuts neither short."""
    count = max(1, int(index.count))
    k = min(top_k, count)
    rerank = min(int(rerank), count) if rows is not None else 0
    with clock.stage("faiss"):
        scores, ids = index.search(query[None, :], max(k, min(depth, count), rerank))
    scores, ids, cosines = rerank_head(index, rows, scores[0], ids[0], rerank, clock)
    if depth > 0:
        with clock.stage("expansion"):
            top = [int(i) for i in ids[:depth] if i >= 0]
            if top and expansion == "diffusion":  # seeds weighted by their cosine, as dff-eval
                scores, ids = diffuse_from(index, query, cosines, ids, depth, k, graph)
            elif top:
                neighbours = np.asarray(index.vectors(top), dtype=np.float32)
                expanded = expand_query(query, neighbours, depth, alpha=ALPHA_QE if expansion == "alpha" else 0.0)
                # not re-ranked again: a second re-ranking by the query's own rows undid the
                # expansion in dff-eval (CroW box queries, QE 5: 87.8 -> 79.5 Medium)
                scores, ids = index.search(expanded[None, :].astype(np.float32), k)
                scores, ids = scores[0], ids[0]
    return scores[:k], ids[:k]


def diffuse_from(index, query: np.ndarray, scores: np.ndarray, ids: np.ndarray, depth: int, k: int, graph):
    """Diffusion on the stored k-NN graph seeded by the first `depth` of (scores, ids): the `k`
    images it reaches, best first, with their cosine to `query`."""
    from descriptors.diffusion import diffuse, diffusion_order

    graph_ids, affinity = graph.get(index)
    valid = ids >= 0
    scores, ids = scores[valid], ids[valid]
    at = np.minimum(np.searchsorted(graph_ids, ids), max(len(graph_ids) - 1, 0))
    known = graph_ids[at] == ids if len(graph_ids) else np.zeros(len(ids), bool)
    seeds = at[:depth][known[:depth]]
    f = diffuse(seeds, scores[:depth][known[:depth]], affinity)
    if f is None:
        return scores, ids
    ranked = graph_ids[diffusion_order(f, at[known])][:k]
    cosines = np.asarray(index.vectors(ranked), np.float32) @ query.astype(np.float32)
    return cosines, ranked


def apply_localization(outcome, result, with_heatmaps: bool) -> None:
    """Copy a `LocalizationResult`'s boxes, heatmaps and concepts onto a `SearchOutcome`'s hits."""
    for hit, match in zip(outcome.hits, result.matches, strict=True):
        hit.box = match.box
        hit.image_missing = match.missing
        hit.width, hit.height = match.size
        if with_heatmaps:
            hit.heatmap = match.heatmap
        hit.shared_concept, hit.shared_concept_heatmap = match.shared_concept, match.shared_concept_heatmap
    if with_heatmaps:
        outcome.query_heatmap = result.query_heatmap
    outcome.concepts = result.concepts
