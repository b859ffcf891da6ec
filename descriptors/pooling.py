"""Baseline global poolings as pure functions on one image's activations ``A (C, h, w)``.

Style of cirtorch's ``layers/functional.py``: each returns a ``(C,)`` vector (R-MAC: one MAC row
per region, aggregated later by ``descriptors.aggregate.aggregate_rows``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .crow import crow_channel_weights, crow_spatial_weights

__all__ = ["crow", "gem", "mac", "rmac_region_vectors", "rmac_regions", "spoc"]

# possible numbers of regions along the long side (Tolias et al. 2016, official code)
_RMAC_STEPS = (2, 3, 4, 5, 6, 7)


def _check(A: Tensor, name: str) -> None:
    if not isinstance(A, Tensor) or A.dim() != 3:
        shape = tuple(A.shape) if isinstance(A, Tensor) else type(A).__name__
        raise ValueError(f"{name}: expected activations of shape (C, h, w), got {shape}")
    if A.shape[1] == 0 or A.shape[2] == 0:
        raise ValueError(f"{name}: empty spatial grid {tuple(A.shape)}")


def mac(A: Tensor) -> Tensor:
    """Maximum activation of convolutions: max over positions, ``(C,)``."""
    _check(A, "mac")
    return A.flatten(1).amax(dim=1)


def spoc(A: Tensor) -> Tensor:
    """Sum-pooled convolutional features, taken as the mean over positions (as cirtorch), ``(C,)``."""
    _check(A, "spoc")
    return A.flatten(1).mean(dim=1)


def gem(A: Tensor, p: float = 3.0, eps: float = 1e-6) -> Tensor:
    """Generalized mean ``(mean_j max(A_j, eps)^p)^(1/p)`` over positions, ``(C,)``."""
    _check(A, "gem")
    if not p > 0:
        raise ValueError(f"gem: p must be > 0, got {p!r}")
    return A.flatten(1).clamp_min(eps).pow(p).mean(dim=1).pow(1.0 / p)


def crow(A: Tensor) -> Tensor:
    """CroW: positions weighted by the spatial weights S, summed, times the channel weights, ``(C,)``."""
    _check(A, "crow")
    spatial = crow_spatial_weights(A)
    return (A * spatial.unsqueeze(0)).flatten(1).sum(dim=1) * crow_channel_weights(A)


def rmac_regions(
    h: int, w: int, levels: int = 3, overlap: float = 0.4, include_full: bool = True
) -> list[tuple[int, int, int, int]]:
    """R-MAC regions of an ``h x w`` grid as ``(x0, y0, x1, y1)`` grid cells (x1/y1 exclusive).

    The region sampling of Tolias et al. 2016 as in their official code and cirtorch's
    ``rmac``/``roipool``: at level ``l`` square regions of side ``floor(2 min(h,w) / (l+1))``,
    ``l`` per short side and ``l + d - 1`` along the long side, where the extra count ``d`` is the
    ``steps`` entry (2..7) whose overlap is closest to ``overlap``. ``include_full`` prepends the
    whole map, as cirtorch does (its first vector is the global MAC).
    """
    for name, value in (("h", h), ("w", w), ("levels", levels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"rmac_regions: {name} must be a positive int, got {value!r}")
    short = min(h, w)
    # steps[idx] regions along the long dimension: the count whose overlap is closest to `overlap`
    gaps = [(max(h, w) - short) / (s - 1) for s in _RMAC_STEPS]
    costs = [abs((short**2 - short * b) / short**2 - overlap) for b in gaps]
    idx = min(range(len(costs)), key=costs.__getitem__)  # first minimum, like torch.min/np.argmin
    extra_w = idx + 1 if h < w else 0
    extra_h = idx + 1 if h > w else 0

    regions: list[tuple[int, int, int, int]] = [(0, 0, w, h)] if include_full else []
    for level in range(1, levels + 1):
        side = math.floor(2 * short / (level + 1))
        if side == 0:
            continue
        half = math.floor(side / 2 - 1)

        def starts(
            length: int, extra: int, side: int = side, half: int = half, level: int = level
        ) -> list[int]:
            count = level + extra
            step = 0.0 if count == 1 else (length - side) / (count - 1)
            # centres floor(half + i*step), shifted back by half to the region's first cell
            return [math.floor(half + i * step) - half for i in range(count)]

        for y0 in starts(h, extra_h):
            for x0 in starts(w, extra_w):
                regions.append((x0, y0, x0 + side, y0 + side))
    return regions


def rmac_region_vectors(A: Tensor, levels: int = 3, include_full: bool = True) -> Tensor:
    """One MAC vector per R-MAC region, ``(R, C)`` (l2/whitening/sum happen in aggregate_rows)."""
    _check(A, "rmac_region_vectors")
    regions = rmac_regions(A.shape[1], A.shape[2], levels=levels, include_full=include_full)
    return torch.stack([A[:, y0:y1, x0:x1].flatten(1).amax(dim=1) for x0, y0, x1, y1 in regions])
