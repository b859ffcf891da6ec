"""Coupled NMF: a planted shared factor is recovered; the objective never increases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from analysis.coupled import coupled_nmf, normalize_blocks


def planted_blocks(k=4, n=80, dims=(30, 50, 20), seed=0):
    gen = torch.Generator().manual_seed(seed)

    def sparse(rows, cols):
        return torch.rand(rows, cols, generator=gen, dtype=torch.float64) * (
            torch.rand(rows, cols, generator=gen, dtype=torch.float64) < 0.4
        )

    F = sparse(n, k) + torch.eye(k, dtype=torch.float64).repeat(n // k, 1)  # every concept has pure images
    W = [sparse(d, k) + 0.05 for d in dims]
    return F, [Wj @ F.T for Wj in W]


def test_planted_shared_factor_is_recovered_up_to_permutation_and_scale():
    F, blocks = planted_blocks()
    result = coupled_nmf(blocks, 4, max_iter=3000, tol=0, seed=1)
    a = F / F.norm(dim=0)
    b = result.F / result.F.norm(dim=0)
    cosine = (a.T @ b).numpy()  # (planted, recovered)
    rows, cols = linear_sum_assignment(-cosine)
    assert np.all(cosine[rows, cols] > 0.99), cosine
    assert result.rmse < 1e-2 * float(torch.cat([M.flatten() for M in blocks]).square().mean().sqrt())


def test_objective_never_increases():
    _, blocks = planted_blocks(seed=3)
    noisy = [M + 0.1 * torch.rand(M.shape, generator=torch.Generator().manual_seed(j), dtype=M.dtype)
             for j, M in enumerate(blocks)]
    for k in (2, 4, 7):
        result = coupled_nmf(noisy, k, max_iter=300, tol=0, record_objective=True, seed=k)
        history = np.array(result.objective)
        assert len(history) == 301
        increases = np.diff(history)
        assert np.all(increases <= 1e-10 * history[:-1]), increases.max()
        assert history[-1] < 0.5 * history[0]


def test_block_rmse_and_normalization():
    _, blocks = planted_blocks()
    scaled = [blocks[0] * 1000, blocks[1], blocks[2] * 1e-3]
    normalized = normalize_blocks(scaled)
    for M in normalized:
        assert float(M.square().mean().sqrt()) == pytest.approx(1.0)
    result = coupled_nmf(normalized, 4, max_iter=50)
    total = sum(r * r * M.numel() for r, M in zip(result.block_rmse, normalized, strict=True))
    assert result.rmse == pytest.approx((total / sum(M.numel() for M in normalized)) ** 0.5)


def test_bad_blocks_are_clear_errors():
    with pytest.raises(ValueError, match="n = 5 images"):
        coupled_nmf([torch.rand(3, 5), torch.rand(3, 6)], 2)
    with pytest.raises(ValueError, match="negative"):
        coupled_nmf([-torch.rand(3, 5)], 2)
    with pytest.raises(ValueError, match="all zeros"):
        normalize_blocks([torch.zeros(3, 5)])
