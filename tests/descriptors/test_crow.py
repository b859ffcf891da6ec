import math

import pytest
import torch

from descriptors.crow import crow_channel_weights, crow_spatial_weights


def _example() -> torch.Tensor:
    # C=3, 2x2 grid: channel 0 fires at 2 of 4 positions, channel 1 everywhere, channel 2 never
    return torch.tensor(
        [
            [[1.0, 0.0], [2.0, 0.0]],
            [[1.0, 1.0], [1.0, 1.0]],
            [[0.0, 0.0], [0.0, 0.0]],
        ]
    )


def test_channel_weights_hand_example():
    # Q = (0.5, 1, 0), sum Q = 1.5 -> w = (log 3, log 1.5, 0)
    weights = crow_channel_weights(_example())
    assert weights.shape == (3,)
    assert weights.tolist() == pytest.approx([1.0986122886681098, 0.4054651081081644, 0.0], abs=1e-6)


def test_spatial_weights_hand_example():
    # sum_c A = [[2, 1], [3, 1]], ||.||_2 = sqrt(15) = 3.8729833
    # S = sqrt([[2, 1], [3, 1]] / 3.8729833) = [[0.7186082, 0.5081327], [0.8801117, 0.5081327]]
    spatial = crow_spatial_weights(_example())
    assert spatial.shape == (2, 2)
    expected = [[0.7186082, 0.5081327], [0.8801117, 0.5081327]]
    assert spatial.tolist()[0] == pytest.approx(expected[0], abs=1e-6)
    assert spatial.tolist()[1] == pytest.approx(expected[1], abs=1e-6)
    assert math.isclose(float((spatial**2).square().sum()), 1.0, rel_tol=1e-6)  # S² has unit l2 norm


def test_batched_input_matches_per_image():
    a = _example()
    b = torch.rand(3, 2, 2) * (torch.rand(3, 2, 2) > 0.3)
    batch = torch.stack([a, b])
    assert torch.allclose(
        crow_channel_weights(batch), torch.stack([crow_channel_weights(a), crow_channel_weights(b)])
    )
    assert torch.allclose(
        crow_spatial_weights(batch), torch.stack([crow_spatial_weights(a), crow_spatial_weights(b)])
    )


def test_all_zero_activations_give_zero_weights_not_nan():
    zeros = torch.zeros(4, 3, 3)
    assert torch.equal(crow_channel_weights(zeros), torch.zeros(4))
    assert torch.equal(crow_spatial_weights(zeros), torch.zeros(3, 3))


def test_wrong_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\(C,h,w\)"):
        crow_channel_weights(torch.zeros(3, 3))
