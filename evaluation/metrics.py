"""Retrieval and localization metrics.

`compute_ap` / `compute_map` reproduce revisitop's `python/evaluate.py` exactly (Radenović et
al. 2018): junk images are skipped without taking a rank, AP is the area under the
precision-recall curve by the trapezoid rule, and queries without positives are left out of
the mean. `compute_map_revisited` builds the Easy / Medium / Hard ground truths the way
revisitop's `compute_map_and_print` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# the one IoU (descriptors.localization), re-exported with the other metrics
from descriptors.localization import iou as iou


def compute_ap(positive_ranks: Sequence[int] | np.ndarray, n_positives: int) -> float:
    """Average precision from the sorted 0-based ranks of the positives that were retrieved.

    `positive_ranks` are ranks after junk removal; `n_positives` counts every positive of the
    query (retrieved or not), so unretrieved positives lower the AP.
    """
    if n_positives <= 0:
        raise ValueError(f"n_positives must be positive, got {n_positives}")
    recall_step = 1.0 / n_positives
    ap = 0.0
    previous = -1
    for j, rank in enumerate(positive_ranks):
        rank = int(rank)
        if rank <= previous:
            raise ValueError(f"positive_ranks must be sorted distinct ranks; got {rank} after {previous}")
        previous = rank
        precision_before = 1.0 if rank == 0 else j / rank
        precision_after = (j + 1) / (rank + 1)
        ap += (precision_before + precision_after) * recall_step / 2.0
    return ap


def _positions_without_junk(ranking: np.ndarray, positives: np.ndarray, junk: np.ndarray) -> np.ndarray:
    """0-based positions of the positives in `ranking`, each lowered by the junk ranked before it."""
    positive_positions = np.flatnonzero(np.isin(ranking, positives))
    junk_positions = np.flatnonzero(np.isin(ranking, junk))
    # a junk item listed as positive too counts as positive (revisitop never has such overlap)
    junk_positions = np.setdiff1d(junk_positions, positive_positions)
    junk_before = np.searchsorted(junk_positions, positive_positions)
    return positive_positions - junk_before


@dataclass(frozen=True)
class MapResult:
    """mAP over the queries that have positives; per-query APs are NaN for the left-out ones."""

    map: float
    aps: np.ndarray
    precision_at: dict[int, float]
    n_evaluated: int


def compute_map(
    ranks: np.ndarray, gnd: Sequence[Mapping[str, Sequence[int]]], kappas: Sequence[int] = ()
) -> MapResult:
    """mAP of a ranking matrix against revisitop-style ground truth.

    ranks: (n_db, n_queries) — column i lists database indices for query i, best first
    (the revisitop layout). gnd[i]['ok'] are the positives, gnd[i].get('junk') the junk.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 2 or ranks.shape[1] != len(gnd):
        raise ValueError(
            f"ranks must have shape (n_db, {len(gnd)}) (one column per query), got {ranks.shape}"
        )
    n_queries = len(gnd)
    aps = np.full(n_queries, np.nan)
    precision_sums = np.zeros(len(kappas))
    total = 0.0
    n_evaluated = 0
    for i in range(n_queries):
        positives = np.asarray(gnd[i]["ok"], dtype=np.int64)
        if positives.size == 0:
            continue
        junk = np.asarray(gnd[i].get("junk", ()), dtype=np.int64)
        positions = _positions_without_junk(ranks[:, i], positives, junk)
        ap = compute_ap(positions, positives.size)
        aps[i] = ap
        total += ap
        n_evaluated += 1
        one_based = positions + 1
        for j, kappa in enumerate(kappas):
            # revisitop's precision@k quirk kept: k is capped at the last positive's rank
            kq = min(int(one_based.max()) if one_based.size else kappa, kappa)
            precision_sums[j] += (one_based <= kq).sum() / kq
    if n_evaluated == 0:
        return MapResult(float("nan"), aps, {int(k): float("nan") for k in kappas}, 0)
    return MapResult(
        total / n_evaluated,
        aps,
        {int(k): float(p / n_evaluated) for k, p in zip(kappas, precision_sums, strict=True)},
        n_evaluated,
    )


def revisited_splits(gnd: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, list[dict[str, list[int]]]]:
    """Easy / Medium / Hard ground truths from revisited `easy` / `hard` / `junk` lists.

    Easy: positives = easy, junk = junk + hard. Medium: positives = easy + hard, junk = junk.
    Hard: positives = hard, junk = junk + easy.
    """
    splits: dict[str, list[dict[str, list[int]]]] = {"easy": [], "medium": [], "hard": []}
    for g in gnd:
        easy, hard, junk = list(g["easy"]), list(g["hard"]), list(g["junk"])
        splits["easy"].append({"ok": easy, "junk": junk + hard})
        splits["medium"].append({"ok": easy + hard, "junk": junk})
        splits["hard"].append({"ok": hard, "junk": junk + easy})
    return splits


def compute_map_revisited(ranks: np.ndarray, gnd: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, float]:
    """{'easy', 'medium', 'hard'} mAP, as revisitop's `compute_map_and_print`."""
    return {name: compute_map(ranks, split).map for name, split in revisited_splits(gnd).items()}


def average_precision_at_k(
    ranking: Sequence[int] | np.ndarray, relevant: Sequence[int] | set[int], k: int
) -> float:
    """AP@k = sum over the top k of precision@i at each relevant hit, / min(k, #relevant).

    Returns NaN when there is nothing relevant (the query is then left out of mAP@k).
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    relevant_set = set(int(r) for r in relevant)
    if not relevant_set:
        return float("nan")
    hits = 0
    total = 0.0
    for i, item in enumerate(list(ranking)[:k]):
        if int(item) in relevant_set:
            hits += 1
            total += hits / (i + 1)
    return total / min(k, len(relevant_set))


def map_at_k(
    rankings: Sequence[Sequence[int]], relevants: Sequence[Sequence[int] | set[int]], k: int
) -> float:
    """Mean of `average_precision_at_k` over queries that have relevant items."""
    if len(rankings) != len(relevants):
        raise ValueError(f"{len(rankings)} rankings but {len(relevants)} relevance sets")
    aps = [average_precision_at_k(r, rel, k) for r, rel in zip(rankings, relevants, strict=True)]
    valid = [a for a in aps if not np.isnan(a)]
    return float(np.mean(valid)) if valid else float("nan")
