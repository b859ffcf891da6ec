"""Weight spectra: the FFT definition equals the explicit operator's SVD; MP fits a random matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from analysis.weights import (
    conv_operator_singular_values,
    explicit_conv_matrix,
    layer_spectrum,
    marchenko_pastur_cdf,
    mp_ks_statistic,
)


@pytest.mark.parametrize(
    "out, inp, kernel, groups, n",
    [(4, 3, 3, 1, 5), (3, 5, 3, 1, 6), (6, 6, 3, 3, 4), (5, 5, 5, 5, 7), (4, 3, 1, 1, 4), (2, 3, 2, 1, 5)],
)
def test_fft_singular_values_equal_the_explicit_convolution_matrix(out, inp, kernel, groups, n):
    gen = torch.Generator().manual_seed(out * 100 + n)
    weight = torch.randn(out, inp // groups, kernel, kernel, generator=gen)
    fast = conv_operator_singular_values(weight, n, groups)
    matrix = explicit_conv_matrix(weight, n, groups)
    assert matrix.shape == (out * n * n, inp * n * n)
    exact = torch.linalg.svdvals(matrix)
    count = min(len(fast), len(exact))
    assert len(fast) == count
    torch.testing.assert_close(fast[:count], exact[:count], atol=1e-5, rtol=0)


def test_explicit_matrix_is_the_circular_convolution():
    weight = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular")
    expected = torch.nn.functional.conv2d(padded, weight).flatten()
    torch.testing.assert_close(explicit_conv_matrix(weight, 5) @ x.flatten(), expected)


def test_gaussian_matrix_passes_ks_against_marchenko_pastur():
    W = np.random.default_rng(0).standard_normal((200, 600)) * 0.3
    statistic, fit = mp_ks_statistic(W)
    assert fit["q"] == pytest.approx(1 / 3)
    # the same statistic by scipy, and its test at 1%: not rejected
    cdf = lambda x: marchenko_pastur_cdf(x, fit["q"], fit["sigma2"])  # noqa: E731
    result = stats.kstest(fit["eigenvalues"], cdf)
    assert result.statistic == pytest.approx(statistic, abs=1e-9)
    assert result.pvalue > 0.01
    assert statistic < 0.05


def test_structured_matrix_fails_ks():
    rng = np.random.default_rng(1)
    W = rng.standard_normal((200, 600)) + 2.0 * np.outer(rng.random(200), rng.random(600)) * rng.standard_t(2, (200, 600))
    statistic, fit = mp_ks_statistic(W)
    assert statistic > 0.2
    assert stats.kstest(fit["eigenvalues"], lambda x: marchenko_pastur_cdf(x, fit["q"], fit["sigma2"])).pvalue < 1e-6


def test_mp_cdf_is_a_distribution():
    q, s2 = 0.25, 2.0
    low, high = s2 * (1 - q**0.5) ** 2, s2 * (1 + q**0.5) ** 2
    assert marchenko_pastur_cdf(np.array([low * 0.99, high * 1.01]), q, s2).tolist() == [0.0, 1.0]
    # MP's mean is sigma^2: integral of x dF = high - integral of F dx
    x = np.linspace(low, high, 20001)
    cdf = marchenko_pastur_cdf(x, q, s2)
    assert np.all(np.diff(cdf) >= 0)
    assert high - float(np.sum((cdf[1:] + cdf[:-1]) / 2 * np.diff(x))) == pytest.approx(s2, rel=1e-3)


def test_layer_spectrum_of_a_conv():
    conv = torch.nn.Conv2d(3, 8, 3)
    reshaped = layer_spectrum("c", conv, "reshaped", n_top=4)
    assert reshaped.shape == (8, 3, 3, 3) and len(reshaped.singular_values) == 8
    assert np.all(np.diff(reshaped.singular_values) <= 0)
    assert reshaped.top_filters.shape == (4, 3, 3, 3)
    fft = layer_spectrum("c", conv, "fft", fft_size=6)
    assert len(fft.singular_values) == 6 * 6 * 3
    json = fft.to_json(top=64)
    assert set(json) >= {"name", "shape", "definition", "singular_values", "mp_ks_statistic"}
    assert len(json["singular_values"]) == 64 and json["definition"] == "fft"
    with pytest.raises(ValueError, match="definition"):
        layer_spectrum("c", conv, "svd")
    with pytest.raises(ValueError, match="smaller than"):
        conv_operator_singular_values(conv.weight, 2)
