"""Sliding-window MAC baseline on planted activations (no backbone)."""

from __future__ import annotations

import pytest
import torch

from evaluation.localize import sliding_window_mac


def _planted(h: int, w: int, cells: tuple[int, int, int, int], channels: tuple[int, ...]) -> torch.Tensor:
    A = torch.full((6, h, w), 0.05)
    A[5] = 0.5  # background channel everywhere
    x0, y0, x1, y1 = cells
    for c in channels:
        A[c, y0:y1, x0:x1] = 1.0 + c
    return A


def test_finds_the_planted_window_and_maps_it_to_pixels() -> None:
    query = _planted(6, 6, (1, 1, 3, 3), channels=(0, 1, 2))
    match = _planted(7, 8, (4, 2, 6, 4), channels=(0, 1, 2))
    # the query box (pixels of a 192x192 image, 32 px cells) covers cells (1,1)-(3,3)
    box = sliding_window_mac(query, (32.0, 32.0, 96.0, 96.0), (192, 192), match, (256, 224))
    # any window containing one planted cell has the same MAC; ties keep the first (smallest) found
    x0, y0, x1, y1 = box
    assert 4 * 32 <= x0 < 6 * 32 and 2 * 32 <= y0 < 4 * 32
    assert x1 <= 6 * 32 and y1 <= 4 * 32


def test_prefers_the_window_with_the_query_channels() -> None:
    query = _planted(5, 5, (0, 0, 2, 2), channels=(3,))
    match = _planted(5, 5, (3, 3, 5, 5), channels=(3,))
    match[1, 0:2, 0:2] = 4.0  # a distractor in another channel, top left
    x0, y0, x1, y1 = sliding_window_mac(query, (0.0, 0.0, 20.0, 20.0), (50, 50), match, (50, 50))
    assert x0 >= 30 and y0 >= 30 and (x1, y1) <= (50, 50)


def test_query_box_outside_the_image_is_an_error() -> None:
    A = _planted(4, 4, (0, 0, 1, 1), channels=(0,))
    with pytest.raises(ValueError, match="outside"):
        sliding_window_mac(A, (100.0, 100.0, 120.0, 120.0), (64, 64), A, (64, 64))
