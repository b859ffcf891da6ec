import math

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from descriptors.factorized import blurred_heatmap_rows, gaussian_kernel2d, nmf_v_rows, nmf_vu_rows


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
