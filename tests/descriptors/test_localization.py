import numpy as np
import pytest
import torch

from descriptors.localization import (
    binarize_relative_max,
    binarize_top_fraction,
    colocalize,
    heatmap_to_box,
    iou,
    largest_component_box,
    mask_box,
)

TOP_30_LARGEST = {"binarize": "top-fraction", "fraction": 0.3, "components": "largest"}  # the former rule


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
    assert heatmap_to_box(heatmap, **TOP_30_LARGEST) == (5.0, 4.0, 20.0, 14.0)


def test_upsampled_box_is_in_image_pixels():
    heatmap = torch.zeros(4, 4)
    heatmap[1:3, 2:4] = 1.0  # cells x 2..4, y 1..3 -> pixels x 20..40, y 10..30 at 10 px per cell
    box = heatmap_to_box(heatmap, out_wh=(40, 40), **TOP_30_LARGEST)
    # bilinear ramps widen the top 30% (480 of 1600 pixels) a little around the 400-pixel block
    assert box[0] <= 20 and box[1] <= 10 and box[2] == 40 and box[3] >= 30
    assert max(20 - box[0], 10 - box[1], box[3] - 30) <= 3


def test_binarize_relative_max_keeps_values_from_the_threshold_up():
    heatmap = np.arange(10, dtype=np.float32).reshape(2, 5)  # max 9: 0.5 * 9 = 4.5 -> 5..9 kept
    mask = binarize_relative_max(heatmap, 0.5)
    assert mask.tolist() == [[False] * 5, [True] * 5]
    # the cut is inclusive: 0.2 * 10 = 2 keeps the 2
    assert binarize_relative_max(np.array([[0.0, 1.0, 2.0, 10.0]]), 0.2).tolist() == [
        [False, False, True, True]
    ]
    # an all-zero (or non-positive) map gives an empty mask, never everything
    assert not binarize_relative_max(np.zeros((3, 3))).any()
    assert not binarize_relative_max(-np.ones((3, 3))).any()
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="threshold_of_max"):
            binarize_relative_max(heatmap, bad)


def test_mask_box_encloses_every_component():
    mask = np.zeros((8, 10), dtype=bool)
    mask[1:3, 1:3] = True
    mask[4:7, 5:9] = True
    assert mask_box(mask) == (1.0, 1.0, 9.0, 7.0)
    assert mask_box(np.zeros((3, 3), dtype=bool)) is None


def test_default_box_grows_with_the_object():
    # 20x30 map: a large object (16x24 cells = 64% of the map) on a background of 0.1, its values
    # falling from 2.0 at the centre to 1.0 at the rim. Default rule: >= 0.2 * max (about 0.4) -> the
    # whole object, whatever its size; the former top-30% rule keeps only the 180 central cells.
    heatmap = np.full((20, 30), 0.1, dtype=np.float32)
    ys, xs = np.mgrid[2:18, 3:27]
    distance = np.hypot((ys - 9.5) / 8, (xs - 14.5) / 12)
    heatmap[2:18, 3:27] = 2.0 - distance / distance.max()
    assert heatmap_to_box(heatmap) == (3.0, 2.0, 27.0, 18.0)
    x0, y0, x1, y1 = heatmap_to_box(heatmap, **TOP_30_LARGEST)
    assert x0 > 3 and y0 > 2 and x1 < 27 and y1 < 18
    # a small object is boxed tightly too: 4x5 cells of 1.0 on the same background
    small = np.full((20, 30), 0.1, dtype=np.float32)
    small[10:14, 20:25] = 1.0
    assert heatmap_to_box(small) == (20.0, 10.0, 25.0, 14.0)


def test_default_box_takes_all_components_and_threshold_of_max_is_applied():
    heatmap = np.zeros((20, 30), dtype=np.float32)
    heatmap[4:14, 5:20] = 1.0
    heatmap[16:18, 25:28] = 5.0  # max 5: the default cut 0.2 * 5 = 1.0 keeps both blobs
    assert heatmap_to_box(heatmap) == (5.0, 4.0, 28.0, 18.0)
    assert heatmap_to_box(heatmap, components="largest") == (5.0, 4.0, 20.0, 14.0)
    # cut 0.5 * 5 = 2.5: only the bright blob
    assert heatmap_to_box(heatmap, threshold_of_max=0.5) == (25.0, 16.0, 28.0, 18.0)
    assert heatmap_to_box(np.zeros((4, 4))) is None


def test_default_box_in_image_pixels():
    heatmap = torch.zeros(4, 4)
    heatmap[1:3, 2:4] = 1.0  # cells x 2..4, y 1..3 -> pixels x 20..40, y 10..30 at 10 px per cell
    x0, y0, x1, y1 = heatmap_to_box(heatmap, out_wh=(40, 40))
    # bilinear ramps fall from 0.45 to 0.05 over the 5 pixels outside the block: the 0.2 cut keeps 3 of them
    assert (x0, y0, x1, y1) == (17.0, 7.0, 40.0, 33.0)


def test_binarization_arguments_are_validated():
    heatmap = np.ones((3, 3))
    with pytest.raises(ValueError, match="binarize must be one of relative-max, top-fraction"):
        heatmap_to_box(heatmap, binarize="otsu")
    with pytest.raises(ValueError, match="components must be one of all, largest"):
        heatmap_to_box(heatmap, components="biggest")
    with pytest.raises(ValueError, match=r"fraction=0\.5 only applies to binarize='top-fraction'"):
        heatmap_to_box(heatmap, 0.5)  # an old-style call: the default rule has no fraction
    with pytest.raises(ValueError, match=r"threshold_of_max=0\.2 only applies to binarize='relative-max'"):
        heatmap_to_box(heatmap, binarize="top-fraction", threshold_of_max=0.2)
    with pytest.raises(ValueError, match="threshold_of_max must be in"):
        heatmap_to_box(heatmap, threshold_of_max=0.0)
    with pytest.raises(ValueError, match="fraction must be in"):
        heatmap_to_box(heatmap, binarize="top-fraction", fraction=1.5)
    with pytest.raises(ValueError, match="binarize must be one of"):
        colocalize(
            torch.rand(4, 3, 3),
            (0, 0, 10, 10),
            (96, 96),
            [torch.rand(4, 3, 3)],
            [(96, 96)],
            k=2,
            binarize="top",
        )


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
    # the former rule is still available and finds them as well
    boxes = colocalize(
        query,
        (64, 96, 256, 288),
        (384, 384),
        [match, other],
        [(384, 384), (384, 384)],
        k=4,
        seed=0,
        **TOP_30_LARGEST,
    )
    assert iou(boxes[0], (160, 128, 352, 320)) > 0.7
    assert iou(boxes[1], (0, 32, 192, 256)) > 0.7


def test_colocalize_checks_its_arguments():
    with pytest.raises(ValueError, match="match sizes"):
        colocalize(torch.rand(4, 3, 3), (0, 0, 10, 10), (96, 96), [torch.rand(4, 3, 3)], [], k=2)
    with pytest.raises(ValueError, match="C = 4"):
        colocalize(torch.rand(4, 3, 3), (0, 0, 10, 10), (96, 96), [torch.rand(5, 3, 3)], [(96, 96)], k=2)
