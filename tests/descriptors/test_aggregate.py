import numpy as np
import pytest
import torch

from descriptors.aggregate import aggregate_rows
from descriptors.whitening import PCAWhitening


def test_rows_are_normalized_before_summing():
    # [3, 4] -> [0.6, 0.8]; [0, 5] -> [0, 1]; sum [0.6, 1.8] / sqrt(0.36 + 3.24) = [0.3162278, 0.9486833]
    out = aggregate_rows(np.array([[3.0, 4.0], [0.0, 5.0]]), None)
    assert out.dtype == np.float32
    assert out.tolist() == pytest.approx([0.3162278, 0.9486833], abs=1e-6)


def test_zero_row_stays_zero_through_the_whitening():
    # mean (1, 0), projection diag(2, 1): [0.6, 0.8] -> [-0.8, 0.8] -> [-0.7071068, 0.7071068]
    whitening = PCAWhitening(
        mean=np.array([1.0, 0.0], dtype=np.float32),
        projection=np.diag([2.0, 1.0]).astype(np.float32),
        eigenvalues=np.array([0.25, 1.0], dtype=np.float32),
    )
    out = aggregate_rows(np.array([[3.0, 4.0], [0.0, 0.0]]), whitening)
    assert not np.isnan(out).any()
    assert out.tolist() == pytest.approx([-0.7071068, 0.7071068], abs=1e-6)


def test_whitening_can_change_the_dimension_and_torch_input_is_accepted():
    whitening = PCAWhitening(
        mean=np.zeros(3, dtype=np.float32),
        projection=np.array([[1.0], [1.0], [0.0]], dtype=np.float32),
        eigenvalues=np.ones(1, dtype=np.float32),
    )
    out = aggregate_rows(torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]]), whitening)
    # second row whitens to 0 and stays 0; first -> [1] -> l2 -> [1]
    assert out.shape == (1,) and out.tolist() == [1.0]


def test_all_zero_rows_give_a_zero_vector():
    assert aggregate_rows(np.zeros((2, 3)), None).tolist() == [0.0, 0.0, 0.0]


def test_empty_or_bad_rows_are_rejected():
    with pytest.raises(ValueError, match="non-empty"):
        aggregate_rows(np.zeros((0, 3)), None)
    with pytest.raises(ValueError, match="NaN"):
        aggregate_rows(np.array([[np.nan, 1.0]]), None)


def test_aggregate_is_the_normalized_sum_of_the_row_features():
    # one implementation of the per-row part: the re-ranking rows (descriptors.rerank) and the global
    # vector agree bit for bit, with and without whitening, zero rows included
    from descriptors.aggregate import row_features
    from descriptors.rerank import row_features as rerank_row_features

    assert rerank_row_features is row_features
    rng = np.random.default_rng(3)
    rows = np.abs(rng.normal(size=(5, 16))).astype(np.float32)
    rows[2] = 0.0
    whitening = PCAWhitening.fit(np.abs(rng.normal(size=(100, 16))).astype(np.float32), dim=8)
    for w in (None, whitening):
        features = row_features(rows, w)
        assert features.dtype == np.float32 and not features[2].any()
        summed = features.sum(axis=0)
        assert np.array_equal(aggregate_rows(rows, w), (summed / np.linalg.norm(summed)).astype(np.float32))
