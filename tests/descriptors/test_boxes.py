import pytest
import torch

from descriptors.boxes import (
    box_to_grid,
    cell_coverage,
    heatmap_mass_in_box,
    select_factors_in_box,
    select_factors_in_grid_box,
)


def test_box_to_grid_scales_and_clips():
    # 640x480 image, 15x20 grid: 32 pixels per cell both ways
    assert box_to_grid((64, 48, 320, 240), (640, 480), (15, 20)) == (2.0, 1.5, 10.0, 7.5)
    assert box_to_grid((-10, 0, 700, 480), (640, 480), (15, 20)) == (0.0, 0.0, 20.0, 15.0)


def test_box_outside_image_or_empty_is_rejected():
    with pytest.raises(ValueError, match="outside the image"):
        box_to_grid((700, 10, 800, 20), (640, 480), (15, 20))
    with pytest.raises(ValueError, match="empty"):
        box_to_grid((10, 10, 10, 20), (640, 480), (15, 20))


def test_partial_cells_count_with_their_covered_area():
    coverage = cell_coverage((0.5, 0.0, 2.0, 1.5), (2, 2))
    assert coverage.tolist() == [[0.5, 1.0], [0.25, 0.5]]
    U = torch.ones(1, 2, 2)
    assert heatmap_mass_in_box(U, (0.5, 0.0, 2.0, 1.5)).tolist() == [pytest.approx(2.25 / 4)]


def _planted_heatmaps() -> torch.Tensor:
    U = torch.zeros(4, 10, 10)
    U[0, 2:5, 2:5] = 1.0  # entirely inside the box below
    U[1, 6:9, 6:9] = 2.0  # entirely outside
    U[2, 3:5, 3:6] = 1.0  # inside ...
    U[2, 8, 8] = 0.5  # ... with 0.5 / 6.5 = 7.7% outside: still > 75% inside
    U[3, 0:10, 0:10] = 0.1  # spread over the whole map: 9% inside
    return U


def test_select_keeps_exactly_the_factors_inside_the_box():
    U = _planted_heatmaps()
    share = heatmap_mass_in_box(U, (2, 2, 6, 5))
    assert share.tolist() == pytest.approx([1.0, 0.0, 6 / 6.5, 0.12])
    assert select_factors_in_grid_box(U, (2, 2, 6, 5)).tolist() == [0, 2]
    # the same box in pixels of a 320x320 image (32 px per cell)
    chosen = select_factors_in_box(U, (64, 64, 192, 160), (320, 320))
    assert chosen.dtype == torch.long and chosen.tolist() == [0, 2]


def test_fallback_keeps_the_factor_with_the_largest_share():
    U = _planted_heatmaps()
    # box (5,5)-(8,8): factor 1 has 4/9 of its mass inside, factor 3 9%, others ~0 -> none passes 0.75
    chosen = select_factors_in_grid_box(U, (5, 5, 8, 8))
    assert chosen.tolist() == [1]


def test_threshold_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="threshold"):
        select_factors_in_grid_box(torch.ones(1, 2, 2), (0, 0, 1, 1), threshold=1.5)
