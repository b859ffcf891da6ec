"""Local descriptors from NMF factors (design.md "The method", steps 4 and 5).

``nmf_v_rows``: the rows of V. ``nmf_vu_rows``: ``V' = (Ū Ūᵀ) V`` where ``Ū`` are the heatmaps U
blurred with a 2D Gaussian, flattened and l2-normalized, so factors whose heatmaps overlap share
their descriptors in proportion to the overlap.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = ["blurred_heatmap_rows", "gaussian_for_grid", "gaussian_kernel2d", "nmf_v_rows", "nmf_vu_rows"]


def gaussian_kernel2d(
    size: int = 13,
    variance: float = 2.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Normalized (sums to 1) isotropic Gaussian ``exp(-d²/(2·variance))`` on a ``size x size`` grid."""
    profile = _gaussian_profile(size, variance, "gaussian_kernel2d")
    return (profile[:, None] * profile[None, :]).to(dtype=dtype, device=device)


def _check_gaussian(size: int, variance: float, caller: str) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(f"{caller}: size must be a positive odd int, got {size!r}")
    if not variance > 0:
        raise ValueError(f"{caller}: variance must be > 0, got {variance!r}")


def _gaussian_profile(size: int, variance: float, caller: str) -> Tensor:
    """The 1-D factor ``(size,)`` float64, summing to 1, of the separable 2-D Gaussian."""
    _check_gaussian(size, variance, caller)
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    profile = torch.exp(-(offsets**2) / (2.0 * variance))
    return profile / profile.sum()


def gaussian_for_grid(grid_hw: tuple[int, int], sigma_of_grid: float) -> tuple[int, float]:
    """``(size, variance)`` of the Gaussian whose sigma is ``sigma_of_grid`` times the grid's shorter
    side, truncated at 3 sigma: the same blur relative to the image whatever its size or the
    backbone's stride (a fixed 13 x 13, variance-2 kernel covers a 7 x 7 map but a sliver of a 64 x 86 one)."""
    h, w = (int(v) for v in grid_hw)
    if h < 1 or w < 1:
        raise ValueError(f"gaussian_for_grid: the grid must be at least 1 x 1, got {grid_hw!r}")
    if not (isinstance(sigma_of_grid, int | float) and math.isfinite(sigma_of_grid) and sigma_of_grid > 0):
        raise ValueError(f"gaussian_for_grid: sigma_of_grid must be a finite number > 0, got {sigma_of_grid!r}")
    sigma = sigma_of_grid * min(h, w)
    return 2 * math.ceil(3.0 * sigma) + 1, sigma * sigma


def nmf_v_rows(V: Tensor) -> Tensor:
    """The NMF V descriptor's rows: V itself, ``(K, C)``."""
    if not isinstance(V, Tensor) or V.dim() != 2:
        raise ValueError(
            f"nmf_v_rows: V must be a (K, C) tensor, got {getattr(V, 'shape', type(V).__name__)}"
        )
    return V


def blurred_heatmap_rows(U: Tensor, size: int = 13, variance: float = 2.0) -> Tensor:
    """``Ū (K, h*w)``: each heatmap convolved with the Gaussian (same-size output, zero padding),
    flattened and l2-normalized (an all-zero heatmap stays zero)."""
    if not isinstance(U, Tensor) or U.dim() != 3:
        raise ValueError(
            f"blurred_heatmap_rows: U must be a (K, h, w) tensor, got {getattr(U, 'shape', None)}"
        )
    # the Gaussian is separable and zero padding commutes with it: the 2-D 'same' convolution is
    # B_h U B_w^T with B the banded (h, h) and (w, w) matrices of the 1-D profile; on a feature grid
    # (~10 x 14) two small matrix products cost a fraction of conv2d's set-up (wide kernels:
    # gaussian_for_grid gives 31 taps there)
    _check_gaussian(size, variance, "blurred_heatmap_rows")
    h, w = U.shape[1:]
    blurred = _band(size, float(variance), h, U.dtype, str(U.device)) @ U
    rows = (blurred @ _band(size, float(variance), w, U.dtype, str(U.device)).T).flatten(1)
    norms = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    return rows / torch.where(norms > 0, norms, torch.ones_like(norms))


@functools.lru_cache(maxsize=64)
def _band(size: int, variance: float, n: int, dtype: torch.dtype, device: str) -> Tensor:
    """``(n, n)``: ``B[i, j] = profile[j - i + r]`` for ``|j - i| <= r = size // 2``, else 0, so
    that ``B @ x`` is the 'same' convolution of ``x`` with the symmetric 1-D Gaussian profile, zero
    padded. Cached: a collection has a few grid sizes (shared: never modified in place)."""
    profile = _gaussian_profile(size, variance, "blurred_heatmap_rows")
    r = size // 2
    offsets = torch.arange(n)[None, :] - torch.arange(n)[:, None] + r
    inside = (offsets >= 0) & (offsets <= 2 * r)
    band = torch.where(inside, profile[offsets.clamp(0, 2 * r)], torch.zeros((), dtype=profile.dtype))
    return band.to(dtype=dtype, device=device)


def nmf_vu_rows(U: Tensor, V: Tensor, size: int = 13, variance: float = 2.0) -> Tensor:
    """The NMF V·U descriptor's rows ``(Ū Ūᵀ) V``, ``(K, C)``, for ``U (K, h, w)`` and ``V (K, C)``."""
    if not isinstance(V, Tensor) or V.dim() != 2:
        raise ValueError(f"nmf_vu_rows: V must be a (K, C) tensor, got {getattr(V, 'shape', None)}")
    if not isinstance(U, Tensor) or U.dim() != 3 or U.shape[0] != V.shape[0]:
        raise ValueError(
            f"nmf_vu_rows: U must be (K, h, w) with K = V.shape[0] = {V.shape[0]}, got {getattr(U, 'shape', None)}"
        )
    rows = blurred_heatmap_rows(U, size, variance)
    return (rows @ rows.transpose(0, 1)) @ V
