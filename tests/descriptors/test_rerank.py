"""Selective match kernel and row codec: known answers."""

from __future__ import annotations

import numpy as np
import pytest

from descriptors.rerank import MatchKernel, RowCodec, match_scores, rerank_top, row_features


def _unit(*rows) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_kernel_known_values_and_selectivity():
    q = _unit([1, 0, 0], [0, 1, 0])
    same = _unit([1, 0, 0], [0, 1, 0])
    half = _unit([1, 0, 0], [0, 0, 1])  # one of the two rows matches
    weak = _unit([1, 1, 1])  # cos 0.577 with both rows
    raw = MatchKernel(alpha=3.0, tau=0.0, normalize=False)
    scores = match_scores(q, [same, half, weak], raw)
    np.testing.assert_allclose(scores, [2.0, 1.0, 2 * (1 / np.sqrt(3)) ** 3], rtol=1e-5)
    # normalized: an image identical to the query scores 1, whatever its row count
    normed = match_scores(q, [same, half, weak, np.zeros((0, 3), np.float32)], MatchKernel())
    np.testing.assert_allclose(normed[:3], [1.0, 0.5, (2 / 3**1.5) / np.sqrt(2)], rtol=1e-5)
    assert normed[3] == 0
    # tau drops the weak matches entirely
    assert match_scores(q, [weak], MatchKernel(alpha=3.0, tau=0.6))[0] == 0
    with pytest.raises(ValueError, match="alpha"):
        MatchKernel(alpha=0)


def test_rerank_top_reorders_by_kernel_and_is_stable():
    q = _unit([1, 0, 0], [0, 1, 0])
    candidates = [_unit([0, 0, 1]), _unit([1, 0, 0], [0, 1, 0]), _unit([0, 0, 1])]
    ids, scores = rerank_top(np.array([7, 8, 9]), q, candidates, MatchKernel())
    assert ids.tolist() == [8, 7, 9] and scores[0] == pytest.approx(1.0)


def test_row_codec_keeps_dot_products_in_the_training_subspace_and_halves_storage():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(64, 8)))[0]  # rows live in an 8-d subspace of 64-d
    rows = row_features(rng.normal(size=(200, 8)) @ basis.T)
    codec = RowCodec.fit(rows, 8)
    codes = codec.encode(rows)
    assert codes.dtype == np.float16 and codes.shape == (200, 8) and codec.bytes_per_row() == 16
    decoded = codec.decode(codes)
    np.testing.assert_allclose(decoded @ decoded.T, rows @ rows.T, atol=2e-3)
    with pytest.raises(ValueError, match="dim"):
        RowCodec.fit(rows, 65)


def test_row_codec_with_fewer_rows_than_columns_matches_the_full_eigh():
    # a small collection (rows < C) is fitted from the rows' Gram matrix; past its rank the
    # projection is completed to an orthonormal basis
    import torch

    rows = row_features(np.abs(np.random.default_rng(1).normal(size=(20, 64))) ** 3)
    codec = RowCodec.fit(rows, 32)
    projection = codec.projection.astype(np.float64)
    np.testing.assert_allclose(projection.T @ projection, np.eye(32), atol=1e-6)
    _, vectors = torch.linalg.eigh(torch.from_numpy(rows.T.astype(np.float64) @ rows))
    reference = vectors.numpy()[:, ::-1][:, :20]  # the rows' span, largest eigenvalues first
    np.testing.assert_allclose(np.abs(rows @ projection[:, :20]), np.abs(rows @ reference), atol=1e-5)
    decoded = codec.decode(codec.encode(rows))
    np.testing.assert_allclose(decoded @ decoded.T, rows @ rows.T, atol=2e-3)
