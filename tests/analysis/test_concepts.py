"""Concept co-segmentation: planted concepts in synthetic activations are recovered as masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from analysis.concepts import co_segment, concept_masks, mask_iou


def planted_set(n_images=4, k=3, channels=24, grid=(12, 14), seed=0):
    """Activations (C, h, w) where concept j (its own 8 channels) fills a random rectangle of each image."""
    rng = np.random.default_rng(seed)
    h, w = grid
    profiles = np.zeros((k, channels))
    for j in range(k):
        profiles[j, j * 8 : (j + 1) * 8] = rng.uniform(0.5, 1.5, 8)
    acts, masks = [], []
    for _ in range(n_images):
        image_masks = np.zeros((k, h, w), bool)
        A = np.zeros((channels, h, w))
        for j in range(k):
            y0, x0 = rng.integers(0, h - 5), rng.integers(0, w - 5)
            y1, x1 = y0 + rng.integers(4, h - y0 + 1), x0 + rng.integers(4, w - x0 + 1)
            image_masks[j, y0:y1, x0:x1] = True
            A += np.einsum("c,hw->chw", profiles[j], image_masks[j] * rng.uniform(0.8, 1.2))
        A += rng.uniform(0, 0.02, A.shape)  # background noise
        acts.append(torch.tensor(A, dtype=torch.float32))
        masks.append(image_masks)
    return acts, masks


def test_planted_concepts_are_recovered_as_masks():
    acts, planted = planted_set()
    result = co_segment(acts, 3, max_iter=500, seed=0)
    recovered = concept_masks(result.heatmaps)
    # match recovered concepts to planted ones (permutation) by mean IoU over the set
    score = np.array([[np.mean([mask_iou(r[a], p[b]) for r, p in zip(recovered, planted, strict=True)])
                       for b in range(3)] for a in range(3)])
    rows, cols = linear_sum_assignment(-score)
    for a, b in zip(rows, cols, strict=True):
        for r, p in zip(recovered, planted, strict=True):
            assert mask_iou(r[a], p[b]) >= 0.9
    assert result.strengths.shape == (4, 3)
    np.testing.assert_allclose(result.strengths.sum(axis=1), 1.0, atol=1e-9)
    assert result.rel_error < 0.05


def test_absent_concept_gives_empty_mask():
    acts, _ = planted_set(n_images=3)
    # remove concept 0 (channels 0-7) from the last image entirely
    acts[2] = acts[2].clone()
    acts[2][:8] = 0.0
    result = co_segment(acts, 3, max_iter=500)
    masks = concept_masks(result.heatmaps)
    concept = int(np.argmax([result.concepts[j, :8].sum() for j in range(3)]))
    assert not masks[2][concept].any()
    assert result.strengths[2, concept] < 0.05


def test_images_of_different_sizes():
    acts, _ = planted_set(n_images=2)
    acts.append(torch.rand(24, 7, 9))
    result = co_segment(acts, 2)
    assert [tuple(h.shape) for h in result.heatmaps] == [(2, 12, 14), (2, 12, 14), (2, 7, 9)]


@pytest.mark.parametrize(
    "acts, message",
    [([], "no activations"), ([torch.rand(4, 3, 3), torch.rand(5, 3, 3)], "C = 4"), ([torch.rand(3, 3)], "(C, h, w)")],
)
def test_bad_input_is_a_clear_error(acts, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        co_segment(acts, 2)


def test_mask_iou():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    b = np.zeros((4, 4), bool)
    b[1:3] = True
    assert mask_iou(a, b) == pytest.approx(4 / 12)
    assert mask_iou(a, a) == 1.0
