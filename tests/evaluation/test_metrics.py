"""Metrics against hand-computed rankings and against a verbatim port of revisitop's loop."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.metrics import (
    average_precision_at_k,
    compute_ap,
    compute_map,
    compute_map_revisited,
    iou,
    map_at_k,
    revisited_splits,
)


def _column(ranking: list[int]) -> np.ndarray:
    return np.asarray(ranking, dtype=np.int64)[:, None]


def test_compute_ap_trapezoid_by_hand() -> None:
    # positives at ranks 0 and 2: (1 + 1)/2 * 1/2 + (1/2 + 2/3)/2 * 1/2 = 19/24
    assert compute_ap([0, 2], 2) == pytest.approx(19 / 24)
    # a third positive never retrieved lowers the recall steps to 1/3
    assert compute_ap([0, 2], 3) == pytest.approx(19 / 36)
    assert compute_ap([], 4) == 0.0


def test_compute_ap_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="n_positives"):
        compute_ap([0], 0)
    with pytest.raises(ValueError, match="sorted"):
        compute_ap([3, 1], 2)


def test_junk_is_skipped_without_taking_a_rank() -> None:
    # ranking: junk(7), pos(1), neg(2), pos(3) -> positives at 0 and 2 once junk is removed
    result = compute_map(_column([7, 1, 2, 3]), [{"ok": [1, 3], "junk": [7]}])
    assert result.map == pytest.approx(19 / 24)
    # the same ranking with 7 not junk: positives at 1 and 3
    # (0 + 1/2)/2/2 + (1/3 + 2/4)/2/2 = 1/8 + 5/24 = 1/3
    assert compute_map(_column([7, 1, 2, 3]), [{"ok": [1, 3]}]).map == pytest.approx(1 / 3)


def test_queries_without_positives_are_left_out() -> None:
    ranks = np.array([[0, 0], [1, 1], [2, 2]])
    result = compute_map(ranks, [{"ok": [0], "junk": []}, {"ok": [], "junk": [1]}])
    assert result.map == pytest.approx(1.0)
    assert result.n_evaluated == 1
    assert np.isnan(result.aps[1])


def test_compute_map_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="one column per query"):
        compute_map(np.zeros((5, 3), dtype=int), [{"ok": [1]}])


def test_revisited_easy_medium_hard_by_hand() -> None:
    gnd = [{"easy": [0], "hard": [2], "junk": [4]}]
    splits = revisited_splits(gnd)
    assert splits["easy"][0] == {"ok": [0], "junk": [4, 2]}
    assert splits["medium"][0] == {"ok": [0, 2], "junk": [4]}
    assert splits["hard"][0] == {"ok": [2], "junk": [4, 0]}
    scores = compute_map_revisited(_column([2, 1, 0, 4, 3, 5]), gnd)
    # easy: item 0 at position 2, hard item 2 (junk here) before it -> rank 1: (0 + 1/2)/2 = 1/4
    assert scores["easy"] == pytest.approx(0.25)
    assert scores["medium"] == pytest.approx(19 / 24)
    assert scores["hard"] == pytest.approx(1.0)


def _revisitop_reference(ranks: np.ndarray, gnd: list[dict]) -> float:
    """revisitop python/evaluate.py compute_map, transcribed loop for loop."""
    total, nempty = 0.0, 0
    for i in range(len(gnd)):
        qgnd = np.array(gnd[i]["ok"])
        if qgnd.shape[0] == 0:
            nempty += 1
            continue
        qgndj = np.array(gnd[i].get("junk", []))
        pos = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgnd)]
        junk = np.arange(ranks.shape[0])[np.isin(ranks[:, i], qgndj)]
        k = ij = 0
        if len(junk):
            ip = 0
            while ip < len(pos):
                while ij < len(junk) and pos[ip] > junk[ij]:
                    k += 1
                    ij += 1
                pos[ip] = pos[ip] - k
                ip += 1
        ap = 0.0
        for j in range(len(pos)):
            rank = pos[j]
            p0 = 1.0 if rank == 0 else j / rank
            ap += (p0 + (j + 1) / (rank + 1)) / len(qgnd) / 2.0
        total += ap
    return total / (len(gnd) - nempty)


def test_matches_revisitop_on_random_rankings() -> None:
    rng = np.random.default_rng(0)
    n_db, n_q = 60, 25
    ranks = np.stack([rng.permutation(n_db) for _ in range(n_q)], axis=1)
    gnd = []
    for _ in range(n_q):
        items = rng.permutation(n_db)
        n_ok, n_junk = int(rng.integers(0, 8)), int(rng.integers(0, 8))
        gnd.append({"ok": items[:n_ok].tolist(), "junk": items[n_ok : n_ok + n_junk].tolist()})
    assert compute_map(ranks, gnd).map == pytest.approx(_revisitop_reference(ranks, gnd), abs=1e-12)


def test_precision_at_k_follows_revisitop() -> None:
    # positives at 1-based ranks 1 and 3: P@1 = 1, P@5 = k capped at 3 -> 2/3
    result = compute_map(_column([1, 2, 3, 4, 5]), [{"ok": [1, 3]}], kappas=[1, 5])
    assert result.precision_at == {1: pytest.approx(1.0), 5: pytest.approx(2 / 3)}


def test_average_precision_at_k_by_hand() -> None:
    ranking = [10, 11, 12, 13, 14]
    relevant = {10, 12, 99}
    # hits at 1 (P=1) and 3 (P=2/3), normalised by min(k, 3)
    assert average_precision_at_k(ranking, relevant, 5) == pytest.approx((1 + 2 / 3) / 3)
    assert average_precision_at_k(ranking, relevant, 2) == pytest.approx(1 / 2)
    assert np.isnan(average_precision_at_k(ranking, set(), 5))
    assert map_at_k([ranking, ranking], [relevant, set()], 5) == pytest.approx((1 + 2 / 3) / 3)
    with pytest.raises(ValueError, match="k must be positive"):
        average_precision_at_k(ranking, relevant, 0)


def test_iou_by_hand() -> None:
    assert iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert iou((0, 0, 2, 2), (0, 0, 2, 2)) == pytest.approx(1.0)
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert iou(None, (0, 0, 1, 1)) == 0.0
