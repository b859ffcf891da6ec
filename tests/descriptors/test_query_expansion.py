"""Average query expansion on hand-made vectors."""

from __future__ import annotations

import numpy as np
import pytest

from descriptors.query_expansion import expand_query


def test_the_query_plus_its_first_depth_neighbours_l2_normalized() -> None:
    query = np.array([0.8, 0.6], dtype=np.float32)
    neighbours = np.array([[0.6, 0.8], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(expand_query(query, neighbours, 1), [2**-0.5, 2**-0.5], rtol=1e-6)
    two = np.array([2.4, 1.4]) / np.linalg.norm([2.4, 1.4])
    np.testing.assert_allclose(expand_query(query, neighbours, 2), two, rtol=1e-6)
    assert expand_query(query, neighbours, 2).dtype == np.float32


def test_depth_zero_is_the_query_and_a_short_list_uses_what_there_is() -> None:
    query = np.array([1.0, 0.0])
    assert expand_query(query, np.empty((0, 2)), 0) is query
    neighbours = np.array([[0.0, 1.0]])
    np.testing.assert_allclose(expand_query(query, neighbours, 5), expand_query(query, neighbours, 1))


@pytest.mark.parametrize("depth", [-1, 1.5, True])
def test_a_bad_depth_is_refused(depth) -> None:
    with pytest.raises(ValueError, match="depth"):
        expand_query(np.ones(2), np.ones((1, 2)), depth)


def test_alpha_qe_weights_neighbours_by_similarity_power():
    import numpy as np

    from descriptors.query_expansion import expand_query

    query = np.array([1.0, 0.0, 0.0])
    close = np.array([0.8, 0.6, 0.0])  # cos 0.8
    far = np.array([0.0, 0.0, 1.0])  # cos 0: weight 0 under alpha-QE
    expected = query + 0.8**3 * close
    np.testing.assert_allclose(expand_query(query, np.stack([close, far]), 2, alpha=3.0), expected / np.linalg.norm(expected))
    average = query + close + far
    np.testing.assert_allclose(expand_query(query, np.stack([close, far]), 2), average / np.linalg.norm(average))
