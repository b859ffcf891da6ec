"""Ranking and average query expansion on hand-made descriptors."""

from __future__ import annotations

import numpy as np

from evaluation.encode import expand_queries, rank_database


def test_rank_database_orders_by_inner_product_with_stable_ties() -> None:
    database = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]])
    ranking = rank_database(np.array([[1.0, 0.0]]), database)
    assert ranking.tolist() == [[0, 3, 2, 1]]


def test_query_expansion_averages_the_top_n_and_skips_the_excluded_entry() -> None:
    database = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    query = np.array([[0.8, 0.6]])
    ranking = rank_database(query, database)  # scores 0.8, 0.6, 0.96 -> [2, 0, 1]
    assert ranking.tolist() == [[2, 0, 1]]
    # n = 1: query + database[2] = (1.4, 1.4) -> l2
    np.testing.assert_allclose(expand_queries(query, database, ranking, 1), [[2**-0.5, 2**-0.5]])
    # excluding entry 2 (e.g. the query's own image): query + database[0] = (1.8, 0.6)
    expected = np.array([1.8, 0.6]) / np.linalg.norm([1.8, 0.6])
    np.testing.assert_allclose(expand_queries(query, database, ranking, 1, exclude=[2])[0], expected)
    assert expand_queries(query, database, ranking, 0) is query
