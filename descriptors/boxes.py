"""Query boxes on the feature grid and the choice of NMF factors inside them (design step 7).

Choice documented here (design.md leaves it open): the box is mapped onto the feature grid
(continuous coordinates, scaled by grid size / image size) rather than the heatmaps upsampled to
image size; a grid cell partly covered by the box counts with the covered fraction of its area.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "box_to_grid",
    "cell_coverage",
    "grid_cells",
    "heatmap_mass_in_box",
    "select_factors_in_box",
    "select_factors_in_grid_box",
]

Box = tuple[float, float, float, float]


def _check_box(box: Sequence[float], name: str) -> Box:
    if len(box) != 4:
        raise ValueError(f"{name}: a box is (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"{name}: box {box!r} is empty (need x1 > x0 and y1 > y0)")
    return x0, y0, x1, y1


def box_to_grid(box: Sequence[float], image_wh: tuple[int, int], grid_hw: tuple[int, int]) -> Box:
    """Map an image-pixel box ``(x0, y0, x1, y1)`` onto a ``(h, w)`` feature grid: continuous cell
    coordinates scaled by ``w / image_w`` and ``h / image_h``, clipped to the grid."""
    x0, y0, x1, y1 = _check_box(box, "box_to_grid")
    img_w, img_h = image_wh
    grid_h, grid_w = grid_hw
    if img_w <= 0 or img_h <= 0 or grid_h <= 0 or grid_w <= 0:
        raise ValueError(f"box_to_grid: image_wh {image_wh!r} and grid_hw {grid_hw!r} must be positive")
    sx, sy = grid_w / img_w, grid_h / img_h
    gx0, gx1 = min(max(x0 * sx, 0.0), grid_w), min(max(x1 * sx, 0.0), grid_w)
    gy0, gy1 = min(max(y0 * sy, 0.0), grid_h), min(max(y1 * sy, 0.0), grid_h)
    if not (gx1 > gx0 and gy1 > gy0):
        raise ValueError(
            f"box_to_grid: box {tuple(box)!r} lies outside the image of size {tuple(image_wh)!r}"
        )
    return gx0, gy0, gx1, gy1


def grid_cells(grid_box: Sequence[float]) -> tuple[int, int, int, int]:
    """The whole cells ``(x0, y0, x1, y1)`` (x1/y1 exclusive) that a continuous grid box touches,
    at least one cell: how the baselines crop an activation map to a box."""
    x0, y0 = math.floor(grid_box[0]), math.floor(grid_box[1])
    x1, y1 = max(math.ceil(grid_box[2]), x0 + 1), max(math.ceil(grid_box[3]), y0 + 1)
    return x0, y0, x1, y1


def cell_coverage(
    grid_box: Sequence[float], grid_hw: tuple[int, int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """``(h, w)`` share of each grid cell's area covered by ``grid_box`` (1 inside, fractions on its edges)."""
    x0, y0, x1, y1 = _check_box(grid_box, "cell_coverage")
    h, w = grid_hw
    cols = torch.arange(w, dtype=torch.float64)
    rows = torch.arange(h, dtype=torch.float64)
    cover_x = (torch.minimum(cols + 1, torch.tensor(x1)) - torch.maximum(cols, torch.tensor(x0))).clamp_min(0)
    cover_y = (torch.minimum(rows + 1, torch.tensor(y1)) - torch.maximum(rows, torch.tensor(y0))).clamp_min(0)
    return (cover_y[:, None] * cover_x[None, :]).to(dtype)


def heatmap_mass_in_box(U: Tensor, grid_box: Sequence[float]) -> Tensor:
    """``(K,)`` share of each heatmap's mass inside ``grid_box`` (grid cells, partial cells weighted
    by their covered area); 0 for an all-zero heatmap."""
    if not isinstance(U, Tensor) or U.dim() != 3:
        raise ValueError(
            f"heatmap_mass_in_box: U must be a (K, h, w) tensor, got {getattr(U, 'shape', None)}"
        )
    coverage = cell_coverage(grid_box, (U.shape[1], U.shape[2]), dtype=U.dtype).to(U.device)
    inside = (U * coverage).flatten(1).sum(dim=1)
    total = U.flatten(1).sum(dim=1)
    return torch.where(
        total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(total)
    )


def select_factors_in_grid_box(U: Tensor, grid_box: Sequence[float], threshold: float = 0.75) -> Tensor:
    """Indices (LongTensor, ascending) of the factors with more than ``threshold`` of their heatmap
    mass inside ``grid_box``; if none qualifies, the one factor with the largest share (fallback)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"select_factors_in_grid_box: threshold must be in [0, 1], got {threshold!r}")
    share = heatmap_mass_in_box(U, grid_box)
    chosen = torch.nonzero(share > threshold).flatten()
    if chosen.numel() == 0:
        chosen = share.argmax().reshape(1)
    return chosen.to(torch.long)


def select_factors_in_box(
    U: Tensor, box: Sequence[float], image_wh: tuple[int, int], threshold: float = 0.75
) -> Tensor:
    """As ``select_factors_in_grid_box`` for a box in pixels of an image of size ``image_wh``."""
    if not isinstance(U, Tensor) or U.dim() != 3:
        raise ValueError(
            f"select_factors_in_box: U must be a (K, h, w) tensor, got {getattr(U, 'shape', None)}"
        )
    grid_box = box_to_grid(box, image_wh, (U.shape[1], U.shape[2]))
    return select_factors_in_grid_box(U, grid_box, threshold)
