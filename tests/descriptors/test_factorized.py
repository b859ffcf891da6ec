import math

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from descriptors.factorized import (
    blurred_heatmap_rows,
    gaussian_for_grid,
    gaussian_kernel2d,
    nmf_v_rows,
    nmf_vu_rows,
)


def test_gaussian_kernel_is_normalized_and_has_the_variance():
    kernel = gaussian_kernel2d(13, 2.0)
    assert kernel.shape == (13, 13)
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.equal(kernel, kernel.T) and int(kernel.argmax()) == 6 * 13 + 6
    # neighbouring values differ by exp(-(d1² - d0²) / (2 variance)): centre / next = exp(1/4)
    assert float(kernel[6, 6] / kernel[6, 7]) == pytest.approx(math.exp(0.25), rel=1e-5)


def test_nmf_v_rows_are_v():
    V = torch.rand(4, 9)
    assert nmf_v_rows(V) is V


def test_heatmaps_that_never_overlap_leave_v_unchanged():
    # blurred supports of a spike are 13 cells wide: spikes 20 cells apart stay disjoint
    U = torch.zeros(2, 5, 30)
    U[0, 2, 0], U[1, 2, 20] = 1.0, 3.0
    V = torch.rand(2, 7)
    rows = blurred_heatmap_rows(U)
    assert torch.allclose(rows @ rows.T, torch.eye(2), atol=1e-6)
    assert torch.allclose(nmf_vu_rows(U, V), V, atol=1e-6)


def test_overlapping_heatmaps_mix_rows_by_their_blurred_overlap():
    U = torch.zeros(2, 5, 30)
    U[0, 2, 10], U[1, 2, 12] = 1.0, 2.0
    V = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    # independent computation of the overlap with scipy's 'same' convolution (zero padding)
    kernel = gaussian_kernel2d(13, 2.0, dtype=torch.float64).numpy()
    blurred = [convolve2d(u.double().numpy(), kernel, mode="same").ravel() for u in U]
    blurred = [b / np.linalg.norm(b) for b in blurred]
    overlap = float(blurred[0] @ blurred[1])
    assert 0.3 < overlap < 0.9  # two cells apart with variance 2: a real but partial overlap
    expected = torch.tensor([[1.0, overlap, 0.0], [overlap, 1.0, 0.0]])
    assert torch.allclose(nmf_vu_rows(U, V), expected, atol=1e-5)


def test_zero_heatmap_gives_zero_row():
    U = torch.zeros(2, 6, 6)
    U[1, 3, 3] = 1.0
    out = nmf_vu_rows(U, torch.ones(2, 4))
    assert torch.equal(out[0], torch.zeros(4)) and torch.allclose(out[1], torch.ones(4))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel2d(12, 2.0)
    with pytest.raises(ValueError, match=r"K = V\.shape"):
        nmf_vu_rows(torch.zeros(3, 4, 4), torch.zeros(2, 5))


def test_gaussian_for_grid_scales_with_the_shorter_side():
    # sigma = 0.5 x 10 = 5 cells -> truncated at 3 sigma: 2 * 15 + 1 = 31 taps, variance 25
    assert gaussian_for_grid((10, 14), 0.5) == (31, 25.0)
    assert gaussian_for_grid((14, 10), 0.5) == (31, 25.0)
    assert gaussian_for_grid((20, 28), 0.5) == (61, 100.0)  # twice the grid, twice the sigma
    assert gaussian_for_grid((7, 7), 0.1) == (7, pytest.approx(0.49))
    for bad in (0.0, -1.0, float("inf"), "0.5"):
        with pytest.raises(ValueError, match="sigma_of_grid"):
            gaussian_for_grid((7, 7), bad)
    with pytest.raises(ValueError, match="grid"):
        gaussian_for_grid((0, 7), 0.5)


def test_wide_separable_blur_equals_the_2d_convolution():
    # the 31-tap kernel of a 10 x 14 grid at sigma_of_grid 0.5, against scipy's direct 2-D 'same' convolution
    size, variance = gaussian_for_grid((10, 14), 0.5)
    U = torch.rand(3, 10, 14, dtype=torch.float64)
    kernel = gaussian_kernel2d(size, variance, dtype=torch.float64).numpy()
    expected = np.stack([convolve2d(u.numpy(), kernel, mode="same").ravel() for u in U])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(blurred_heatmap_rows(U, size, variance).numpy(), expected, atol=1e-12)


def test_the_same_layout_at_twice_the_resolution_gives_the_same_mixing():
    # two blobs in the left and right thirds of a 6 x 9 grid, and the same picture on a 12 x 18 grid:
    # with a grid-relative Gaussian the overlap of the two blurred heatmaps is (nearly) the same
    def overlap(h, w):
        U = torch.zeros(2, h, w, dtype=torch.float64)
        U[0, : h // 2, : w // 3] = 1.0
        U[1, h // 2 :, 2 * w // 3 :] = 1.0
        size, variance = gaussian_for_grid((h, w), 0.5)
        rows = blurred_heatmap_rows(U, size, variance)
        return float(rows[0] @ rows[1])

    small, large = overlap(6, 9), overlap(12, 18)
    assert 0.1 < small < 0.95 and large == pytest.approx(small, abs=0.03)


@pytest.mark.parametrize(("h", "w", "sigma_of_grid"), [(10, 14, 0.5), (14, 10, 0.5), (5, 8, 0.2), (1, 7, 0.5)])
def test_banded_blur_equals_the_2d_convolution_on_every_grid_and_dtype(h, w, sigma_of_grid):
    # the blur is two banded matrix products (cached per grid side): the same 'same' convolution
    # with zero padding as scipy's, for each grid shape, in float64 and float32 (to its rounding)
    size, variance = gaussian_for_grid((h, w), sigma_of_grid)
    U = torch.rand(4, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(h * w))
    kernel = gaussian_kernel2d(size, variance, dtype=torch.float64).numpy()
    expected = np.stack([convolve2d(u.numpy(), kernel, mode="same").ravel() for u in U])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    for _ in range(2):  # the second call reads the cached bands
        assert np.allclose(blurred_heatmap_rows(U, size, variance).numpy(), expected, atol=1e-12)
        rows32 = blurred_heatmap_rows(U.float(), size, variance)
        assert rows32.dtype == torch.float32 and np.allclose(rows32.numpy(), expected, atol=1e-6)
