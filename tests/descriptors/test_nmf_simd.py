"""descriptors.nmf_simd: the SIMD sparse product equals the dense product, for every row length
(the 4-entry steps and the remainder), both vector widths, and int32 / int64 indices."""

import numpy as np
import pytest
from numba import njit

from descriptors.nmf_numba import _csr, _gather_product
from descriptors.nmf_simd import ACCUMULATORS, row_block_product_4, row_block_product_8


@njit(cache=False)
def _both_blocks(indptr, indices, values, B, rows):
    for blk in range(0, B.shape[1] - 7, 8):
        row_block_product_8(indptr, indices, values, B, rows, blk)
    if B.shape[1] % 8:
        row_block_product_4(indptr, indices, values, B, rows, B.shape[1] - 4)


def _sparse_with_row_lengths(lengths: list[int], c: int, rng: np.random.Generator) -> np.ndarray:
    S = np.zeros((len(lengths), c), dtype=np.float32)
    for i, length in enumerate(lengths):
        S[i, rng.choice(c, size=length, replace=False)] = rng.random(length, dtype=np.float32) + 0.1
    return S


@pytest.mark.parametrize("width", [4, 8, 12, 16])
@pytest.mark.parametrize("index_dtype", [np.int64, np.int32])
def test_row_block_product_equals_the_dense_product(width, index_dtype):
    rng = np.random.default_rng(width)
    # every row length from 0 to 3 x ACCUMULATORS + 1: empty rows, remainders of every size
    lengths = [*range(3 * ACCUMULATORS + 2), 90, 200]
    S = _sparse_with_row_lengths(lengths, 300, rng)
    B = rng.random((300, width), dtype=np.float32)
    indptr, indices, values = _csr(S)
    rows = np.full((len(lengths), width), np.nan, dtype=np.float32)
    _both_blocks(indptr, indices.astype(index_dtype), values, B, rows)
    expected = S.astype(np.float64) @ B.astype(np.float64)
    np.testing.assert_allclose(rows, expected, rtol=2e-6, atol=1e-6)
    assert np.all(rows[0] == 0.0)  # an empty row is an exact zero, not left unset


def test_row_block_product_writes_only_its_block():
    rng = np.random.default_rng(1)
    S = _sparse_with_row_lengths([5, 0, 9], 40, rng)
    B = rng.random((40, 12), dtype=np.float32)
    indptr, indices, values = _csr(S)
    rows = np.full((3, 12), -1.0, dtype=np.float32)
    row_block_product_4_only = njit(lambda p, i, v, b, r: row_block_product_4(p, i, v, b, r, 4))
    row_block_product_4_only(indptr, indices, values, B, rows)
    np.testing.assert_allclose(rows[:, 4:8], S @ B[:, 4:8], rtol=2e-6, atol=1e-6)
    assert np.all(rows[:, :4] == -1.0) and np.all(rows[:, 8:] == -1.0)


def test_gather_product_is_k_major_and_drops_the_padding():
    rng = np.random.default_rng(2)
    S = _sparse_with_row_lengths([3, 17, 0, 64], 100, rng)
    k, kp = 5, 8
    B = np.zeros((100, kp), dtype=np.float32)
    B[:, :k] = rng.random((100, k), dtype=np.float32)
    indptr, indices, values = _csr(S)
    out = np.empty((k, 4), dtype=np.float32)
    _gather_product(indptr, indices, values, B, np.empty((4, kp), dtype=np.float32), out)
    np.testing.assert_allclose(out, (S @ B[:, :k]).T, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("k", [3, 4, 5, 8, 12, 16, 20, 24, 28, 32, 35])
def test_mu_update_rows_equals_the_update_and_its_gram(k):
    """Every unrolled width (kp = 4 ... 32) and the plain loops above (k = 35 -> kp = 36): the
    Lee-Seung update with its floor and flush, the padded columns kept at 0, and out^T out."""
    from descriptors.nmf_simd import mu_update_rows

    rng = np.random.default_rng(k)
    m, kp = 300, (k + 3) // 4 * 4
    F = np.zeros((m, kp), dtype=np.float32)
    P = np.zeros((m, kp), dtype=np.float32)
    F[:, :k] = rng.random((m, k), dtype=np.float32)
    P[:, :k] = rng.random((m, k), dtype=np.float32)
    F[:5, :k] = 0.0  # rows whose denominator is below the floor
    P[5:10, :k] = 1e-32  # updates below the flush threshold
    G = np.zeros((kp, kp), dtype=np.float32)
    half = rng.random((k, k), dtype=np.float32)
    G[:k, :k] = half @ half.T
    out = np.full((m, kp), np.nan, dtype=np.float32)
    gram = np.full((kp, kp), np.nan, dtype=np.float32)
    mu_update_rows(F, P, G, out, gram)

    denominator = np.maximum(F.astype(np.float64) @ G, 1e-7)
    expected = F * P / denominator
    expected[expected < 1e-30] = 0.0
    np.testing.assert_allclose(out, expected, rtol=2e-6, atol=0)
    assert np.all(out[:, k:] == 0.0) and np.all(out[5:10] == 0.0)
    np.testing.assert_allclose(gram, out.astype(np.float64).T @ out, rtol=2e-6, atol=1e-6)
