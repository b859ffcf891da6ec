"""searcher.ranking on an exact in-memory index: known answers for the first stage, re-ranking,
average query expansion, and the one range check of a re-ranking depth."""

import numpy as np
import pytest

from searcher.concurrency import StageClock
from searcher.ranking import MAX_RERANK, rank, rerank_problem


class ExactIndex:
    """The index interface `rank` needs, over unit vectors; factor rows are the vectors themselves."""

    def __init__(self, vectors: np.ndarray, rows: dict[int, np.ndarray]) -> None:
        self.data, self.rows = vectors.astype(np.float32), rows

    @property
    def count(self) -> int:
        return len(self.data)

    def search(self, queries: np.ndarray, k: int):
        scores = queries @ self.data.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), order.astype(np.int64)

    def vectors(self, ids) -> np.ndarray:
        return self.data[np.asarray(ids, dtype=np.int64)]

    def factor_rows(self, ids) -> list[np.ndarray]:
        return [self.rows[int(i)] for i in ids]

    def encode_query_rows(self, rows: np.ndarray) -> np.ndarray:
        return rows


def unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def index() -> ExactIndex:
    vectors = np.stack([unit(1, 0, 0), unit(0.9, 0.1, 0), unit(0.5, 0.5, 0), unit(0, 0, 1)])
    # image 2's one factor row equals the query's: the kernel moves it to the top
    rows = {0: np.stack([unit(0, 1, 0)]), 1: np.stack([unit(0, 0, 1)]), 2: np.stack([unit(1, 0, 0)]), 3: np.stack([unit(0, 1, 1)])}
    return ExactIndex(vectors, rows)


def test_first_stage_is_exact_and_cut_to_top_k(index: ExactIndex) -> None:
    scores, ids = rank(index, unit(1, 0, 0), top_k=3, depth=0, clock=StageClock(None))
    assert ids.tolist() == [0, 1, 2]
    assert scores[0] == pytest.approx(1.0) and np.all(np.diff(scores) <= 0)


def test_rerank_reorders_the_head_by_the_factor_rows_only(index: ExactIndex) -> None:
    clock = StageClock(None)
    scores, ids = rank(index, unit(1, 0, 0), top_k=4, depth=0, clock=clock, rows=np.stack([unit(1, 0, 0)]), rerank=3)
    assert ids[0] == 2 and scores[0] == pytest.approx(1.0)  # the same row as the query's
    assert ids[3] == 3  # past the re-ranked head: first-stage order kept
    assert "rerank" in clock.ms


def test_average_expansion_re_searches_with_the_expanded_query(index: ExactIndex) -> None:
    _, plain = rank(index, unit(0.6, 0.4, 0), top_k=4, depth=0, clock=StageClock(None))
    _, expanded = rank(index, unit(0.6, 0.4, 0), top_k=4, depth=3, clock=StageClock(None))
    assert sorted(expanded.tolist()) == [0, 1, 2, 3] and expanded[-1] == plain[-1] == 3


@pytest.mark.parametrize("depth", [-1, MAX_RERANK + 1, True, 2.5])
def test_out_of_range_depths_are_named(depth) -> None:
    problem = rerank_problem(depth, MAX_RERANK)
    assert problem is not None and f"rerank={depth}" in problem and "--max-rerank" in problem


@pytest.mark.parametrize("depth", [0, 100, MAX_RERANK, np.int64(5)])
def test_depths_in_range_pass(depth) -> None:
    assert rerank_problem(depth, MAX_RERANK) is None
