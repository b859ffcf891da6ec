"""NMF error vs rank: a matrix of planted non-negative rank r has error ~0 from K = r on."""

from __future__ import annotations

import pytest
import torch

from analysis.layers import activation_matrix, capture_layers, resolve_layers
from analysis.rank import randomize_weights, rank_curve


def planted(rank: int, n=300, c=60, seed=0, scale=1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # sparse factors: a unique (separable) NMF, so the multiplicative updates find it
    W = torch.rand(n, rank, generator=gen) * (torch.rand(n, rank, generator=gen) < 0.5)
    H = torch.rand(rank, c, generator=gen) * (torch.rand(rank, c, generator=gen) < 0.5)
    return scale * (W @ H)


def test_planted_rank_error_vanishes_from_k_equal_r():
    r = 4
    ks = [1, 2, 3, 4, 6, 8]
    errors = rank_curve(planted(r), ks, max_iter=1500, tol=0, restarts=2)
    for k, error in zip(ks, errors, strict=True):
        if k >= r:
            assert error < 0.02, (k, errors)
        else:
            assert error > 0.05, (k, errors)
    assert errors == sorted(errors, reverse=True) or all(e < 0.02 for e in errors[3:])


def test_tiny_activations_do_not_stall_the_solver():
    # deep layers at random initialization are ~1e-6: the error is relative, so the curve must not change
    X = planted(3)
    big = rank_curve(X, [1, 3], max_iter=800, tol=0)
    tiny = rank_curve(X * 1e-6, [1, 3], max_iter=800, tol=0)
    assert tiny == pytest.approx(big, abs=1e-3)
    assert tiny[1] < 0.02


def test_bad_ks():
    with pytest.raises(ValueError, match="positive ints"):
        rank_curve(planted(2), [0, 2])


def test_capture_layers_and_positive_part():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    maps = capture_layers(net, torch.randn(2, 3, 6, 6), ["1", "2"])
    assert maps["1"].shape == (2, 4, 4, 4) and float(maps["1"].min()) >= 0
    X, negative = activation_matrix([maps["2"]])
    assert X.shape == (2 * 4 * 4, 2) and float(X.min()) >= 0
    assert negative  # a linear conv output has negative values: analysed as its positive part
    with pytest.raises(ValueError, match="unknown layer"):
        resolve_layers(net, ["nope"])


def test_randomize_weights_changes_weights_reproducibly():
    a = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    b = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    b.load_state_dict(a.state_dict())
    before = a[0].weight.clone()
    randomize_weights(a, seed=1)
    randomize_weights(b, seed=1)
    assert not torch.equal(a[0].weight, before)
    assert torch.equal(a[0].weight, b[0].weight)
