import numpy as np
import pytest
import torch

from descriptors.localization import (
    binarize_top_fraction,
    colocalize,
    heatmap_to_box,
    iou,
    largest_component_box,
)


def test_binarize_keeps_the_top_30_percent():
    heatmap = np.arange(10, dtype=np.float32).reshape(2, 5)
    mask = binarize_top_fraction(heatmap, 0.3)
    assert mask.tolist() == [[False] * 5, [False, False, True, True, True]]
    # zeros never count, even when they would fall in the top fraction
    assert not binarize_top_fraction(np.zeros((3, 3))).any()


def test_largest_component_wins_over_the_highest_values():
    mask = np.zeros((8, 10), dtype=bool)
    mask[1:3, 1:3] = True  # 4 cells
    mask[4:7, 5:9] = True  # 12 cells
    assert largest_component_box(mask) == (5.0, 4.0, 9.0, 7.0)
    assert largest_component_box(np.zeros((3, 3), dtype=bool)) is None


def test_components_are_eight_connected():
    mask = np.eye(4, dtype=bool)  # a diagonal line is one component with 8-connectivity
    assert largest_component_box(mask) == (0.0, 0.0, 4.0, 4.0)


def test_planted_box_is_returned():
    heatmap = np.zeros((20, 30), dtype=np.float32)
    heatmap[4:14, 5:20] = 1.0  # 150 cells = 25% of the map: all of it is in the top 30%
    heatmap[16:18, 25:28] = 5.0  # a brighter but smaller blob
    assert heatmap_to_box(heatmap) == (5.0, 4.0, 20.0, 14.0)


def test_upsampled_box_is_in_image_pixels():
    heatmap = torch.zeros(4, 4)
    heatmap[1:3, 2:4] = 1.0  # cells x 2..4, y 1..3 -> pixels x 20..40, y 10..30 at 10 px per cell
    box = heatmap_to_box(heatmap, out_wh=(40, 40))
    # bilinear ramps widen the top 30% (480 of 1600 pixels) a little around the 400-pixel block
    assert box[0] <= 20 and box[1] <= 10 and box[2] == 40 and box[3] >= 30
    assert max(20 - box[0], 10 - box[1], box[3] - 30) <= 3


def test_iou_known_values():
    assert iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert iou((0, 0, 2, 2), (0, 0, 2, 2)) == 1.0
    assert iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert iou((0, 0, 4, 2), (0, 0, 2, 2)) == 0.5
    assert iou(None, (0, 0, 1, 1)) == 0.0


def _scene(object_cells: tuple[int, int, int, int], seed: int, size: int = 12) -> torch.Tensor:
    """16 channels: 8 'background texture' channels everywhere, 4 'object' channels only inside
    ``object_cells`` (x0, y0, x1, y1), 4 silent channels."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.zeros(16, size, size)
    A[:8] = 0.5 + 0.3 * torch.rand(8, size, size, generator=gen)
    x0, y0, x1, y1 = object_cells
    A[8:12, y0:y1, x0:x1] = 2.0 + torch.rand(4, y1 - y0, x1 - x0, generator=gen)
    return A


def test_colocalize_finds_the_planted_object_in_the_match():
    # 6x6-cell objects (25% of a 12x12 grid, so the top-30% rule fits them); 32 px per cell
    query = _scene((2, 3, 8, 9), seed=0)
    match = _scene((5, 4, 11, 10), seed=1)
    other = _scene((0, 1, 6, 8), seed=2)
    boxes = colocalize(
        query, (64, 96, 256, 288), (384, 384), [match, other], [(384, 384), (384, 384)], k=4, seed=0
    )
    assert len(boxes) == 2
    assert iou(boxes[0], (160, 128, 352, 320)) > 0.7
    assert iou(boxes[1], (0, 32, 192, 256)) > 0.7


def test_colocalize_checks_its_arguments():
    with pytest.raises(ValueError, match="match sizes"):
        colocalize(torch.rand(4, 3, 3), (0, 0, 10, 10), (96, 96), [torch.rand(4, 3, 3)], [], k=2)
    with pytest.raises(ValueError, match="C = 4"):
        colocalize(torch.rand(4, 3, 3), (0, 0, 10, 10), (96, 96), [torch.rand(5, 3, 3)], [(96, 96)], k=2)
