"""What the NMF does around its solver (issue 16: the Python/torch overhead per batch was cut):
the activation matrix, the CroW weights, the seeded initial factors and the relative error stay
what they were, bit for bit where the old code was exact (known answers recorded from it)."""

from __future__ import annotations

import math

import pytest
import torch

from descriptors.crow import crow_channel_weights
from descriptors.nmf import _activation_batch, _initial_factors, factorize_activations, nmf, set_sparse_solver


def _maps() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(16)
    shapes = [(64, 6, 7), (64, 6, 7), (64, 5, 8), (64, 6, 7)]
    return [torch.rand(s, generator=gen) * (torch.rand(s, generator=gen) > 0.85) * 3.0 for s in shapes]


def _old_weights(A: torch.Tensor) -> torch.Tensor:
    """The CroW channel weights as computed before: Q_c = (A > 0).mean over positions."""
    q = (A > 0).flatten(-2).to(A.dtype).mean(dim=-1)
    total = q.sum(dim=-1, keepdim=True)
    positive = q > 0
    ratio = torch.where(positive, total / torch.where(positive, q, torch.ones_like(q)), torch.ones_like(q))
    return torch.where(positive, torch.log(ratio), torch.zeros_like(q))


def _old_rows(A: torch.Tensor) -> torch.Tensor:
    """The per-image formula the batch replaced: X = A^T with columns scaled by the weights."""
    return A.flatten(1).transpose(0, 1) * _old_weights(A).unsqueeze(0)


def _old_initial_factors(X, mask, k, seed):
    """The per-item generator loop the shared draws replaced."""
    B, N, C = X.shape
    U, V = torch.zeros(B, N, k), torch.zeros(B, k, C)
    sums = X.sum(dim=(1, 2)).double()
    for b in range(B):
        n_b = int(mask[b].sum())
        if n_b:
            scale = math.sqrt(float(sums[b]) / (n_b * C) / k)
            gen = torch.Generator().manual_seed(seed)
            U[b, mask[b]] = torch.randn(n_b, k, generator=gen).abs_().mul_(scale)
            V[b] = torch.randn(k, C, generator=gen).abs_().mul_(scale)
    return U, V


def test_the_activation_batch_equals_the_per_image_rows_bit_for_bit():
    maps = [A for A in _maps() if A.shape[1:] == (6, 7)]
    X = _activation_batch(maps, crow_weighting=True)
    assert X.shape == (3, 42, 64) and X.is_contiguous()
    assert torch.equal(X, torch.stack([_old_rows(A) for A in maps]))
    assert torch.equal(_activation_batch(maps, crow_weighting=False), torch.stack([A.flatten(1).T for A in maps]))


def test_crow_weights_from_counts_equal_the_mean_of_the_indicator():
    # count / (h*w) must be what .mean() of the 0/1 floats gave, for every count
    for h, w in ((1, 1), (3, 7), (10, 14), (17, 23)):
        A = torch.zeros(h * w + 1, h * w)
        for c in range(h * w + 1):
            A[c, :c] = 1.0
        A = A[torch.randperm(h * w + 1, generator=torch.Generator().manual_seed(h))].view(-1, h, w)
        assert torch.equal(crow_channel_weights(A), _old_weights(A))
    batch = torch.stack(_maps()[:2])
    channels_last = batch.contiguous(memory_format=torch.channels_last)
    assert torch.equal(crow_channel_weights(channels_last), crow_channel_weights(batch))


def test_initial_factors_are_the_seeded_draws_of_before():
    maps = _maps()
    X = _activation_batch([maps[0], maps[1], maps[3]], crow_weighting=True)
    mask = torch.ones(3, 42, dtype=torch.bool)
    mask[1, 30:] = False
    X = X * mask[..., None]
    U, V = _initial_factors(X, mask, 3, seed=7)
    U_old, V_old = _old_initial_factors(X, mask, 3, seed=7)
    assert torch.equal(U, U_old) and torch.equal(V, V_old)
    # known answers recorded from the code before issue 16's change (float32 bits)
    assert [v.hex() for v in U[0, 0].tolist()] == ["0x1.c839940000000p-2", "0x1.b829f40000000p-3", "0x1.f40b9c0000000p-2"]
    assert [v.hex() for v in U[1, 29].tolist()] == ["0x1.a916580000000p-4", "0x1.ab9f6e0000000p-3", "0x1.0a7b3e0000000p+0"]
    assert U[1, 30:].abs().sum() == 0
    assert [v.hex() for v in V[2, :, 0].tolist()] == ["0x1.f414b20000000p-2", "0x1.d386e20000000p-3", "0x1.8cd74e0000000p-4"]


def test_factorize_activations_gives_the_recorded_factors_with_the_reference_solver():
    """Known answer (torch-sparse, the reference solver), recorded before issue 16's change."""
    set_sparse_solver("torch-sparse")
    try:
        factors = factorize_activations(_maps(), 3, max_iter=50, tol=1e-4, seed=7)
    finally:
        set_sparse_solver(None)
    u_sums = [float(U.double().sum()) for U, _ in factors]
    v_sums = [float(V.double().sum()) for _, V in factors]
    assert u_sums == pytest.approx([76.365931, 76.699821, 65.997672, 75.283217], rel=1e-5)
    assert v_sums == pytest.approx([91.591305, 96.250771, 114.760322, 95.433224], rel=1e-5)
    assert [tuple(U.shape) for U, _ in factors] == [(3, 6, 7), (3, 6, 7), (3, 5, 8), (3, 6, 7)]


def test_rel_error_is_the_recorded_one_and_the_float64_ratio():
    maps = _maps()
    X = _activation_batch([maps[0], maps[1], maps[3]], crow_weighting=True)
    mask = torch.ones(3, 42, dtype=torch.bool)
    mask[1, 30:] = False
    result = nmf(X, 3, max_iter=50, tol=1e-4, seed=7, mask=mask, solver="torch-sparse")
    assert result.item_iters.tolist() == [50, 50, 50]
    assert result.rel_error.tolist() == pytest.approx([0.8624370098, 0.8444494009, 0.8577890396], rel=1e-6)
    Xm = X * mask[..., None]
    exact = torch.linalg.vector_norm((Xm - result.U @ result.V).double().flatten(1), dim=1)
    exact = exact / torch.linalg.vector_norm(Xm.double().flatten(1), dim=1)
    torch.testing.assert_close(result.rel_error.double(), exact, rtol=1e-5, atol=0)


# ---- the activation matrix built in the kernel threads (descriptors/nmf_inputs.py) -----------

numba = pytest.importorskip("numba")


def _reference_factors(maps, k, algorithm, threads):
    """The straightforward path: X with torch on this thread, nmf's initial factors, the dense-X
    kernel (`nmf_numba.multiplicative_updates` / `hals_updates`); U as (K, h, w)."""
    from descriptors import nmf_numba

    X = _activation_batch(maps, crow_weighting=True)
    B, n, _ = X.shape
    U0, V0 = _initial_factors(X, torch.ones(B, n, dtype=torch.bool), k, seed=0)
    kernel = nmf_numba.multiplicative_updates if algorithm == "mu" else nmf_numba.hals_updates
    U, V, iters, errors = kernel(X.numpy(), U0.numpy(), V0.numpy(), 200, 1e-4, threads)
    h, w = maps[0].shape[1:]
    return [torch.from_numpy(U[b].T.copy()).view(k, h, w) for b in range(B)], torch.from_numpy(V), iters, errors


@pytest.fixture(scope="module")
def real_maps(default_backbone, sample_photos):
    """Real activations of one size: 4 sample photos center-cropped to 256 x 256 (8 x 8 x 1280)."""
    images = [default_backbone.preprocess(sample_photos[n], 256)[:, :256, :256] for n in ("chelsea", "coffee", "astronaut", "rocket")]
    maps = default_backbone.extract(images)
    assert len({tuple(A.shape) for A in maps}) == 1
    assert all(float((A > 0).float().mean()) < 0.25 for A in maps)  # sparse: the numba kernel's items
    return maps


@pytest.mark.parametrize("k", [4, 8, 16])
@pytest.mark.parametrize("threads", [1, 2])
def test_maps_factorized_in_the_kernel_threads_equal_the_reference_bit_for_bit(real_maps, k, threads):
    from descriptors.nmf_inputs import factorize_maps

    for size in (1, 3, 8):
        maps = (real_maps * 2)[:size]
        U_ref, V_ref, iters, errors = _reference_factors(maps, k, "mu", threads)
        done = factorize_maps(maps, k, 200, 1e-4, 0, True, "mu", threads)
        assert done.iterations == iters.tolist() and done.errors == errors.tolist()
        for b, (U, V) in enumerate(done.factors):
            assert torch.equal(U, U_ref[b]) and torch.equal(V, V_ref[b])
        torch.set_num_threads(threads)
        try:
            public = factorize_activations(maps, k, max_iter=200, tol=1e-4, seed=0)
        finally:
            torch.set_num_threads(1)
        assert all(torch.equal(U, U_ref[b]) and torch.equal(V, V_ref[b]) for b, (U, V) in enumerate(public))


def test_hals_in_the_kernel_threads_equals_the_reference_bit_for_bit(real_maps):
    from descriptors.nmf_inputs import factorize_maps

    U_ref, V_ref, iters, errors = _reference_factors(real_maps, 8, "hals", 2)
    set_sparse_solver("numba-hals")
    try:
        done = factorize_maps(real_maps, 8, 200, 1e-4, 0, True, "hals", 2)
    finally:
        set_sparse_solver(None)
    assert done.iterations == iters.tolist() and done.errors == errors.tolist()
    assert all(torch.equal(U, U_ref[b]) and torch.equal(V, V_ref[b]) for b, (U, V) in enumerate(done.factors))


@pytest.mark.parametrize("crow_weighting", [True, False])
def test_the_threads_build_the_activation_batch_bit_for_bit(crow_weighting):
    from descriptors.nmf_inputs import activation_batch

    gen = torch.Generator().manual_seed(3)
    # 1001 channels: torch's vectorized loops leave a tail, which must not change the weights
    maps = [torch.rand(1001, 7, 9, generator=gen) * (torch.rand(1001, 7, 9, generator=gen) > 0.9) for _ in range(3)]
    maps[1][5] = 0.0  # an all-zero channel
    maps[2][7, 0, 0] = 1e-44  # a subnormal: its weighted product may underflow to 0
    for threads in (1, 2):
        batch = activation_batch(maps, crow_weighting, threads)
        X = _activation_batch(maps, crow_weighting)
        assert torch.equal(batch.X, X)
        assert batch.nonzeros == [int(torch.count_nonzero(x)) for x in X]


def test_unusual_maps_take_the_torch_path_with_its_errors_and_results():
    from descriptors.nmf_inputs import activation_batch

    maps = _maps()[:2]
    negative_zero = [maps[0].clone(), maps[1]]
    c, i, j = (maps[0] == 0).nonzero()[0].tolist()
    negative_zero[0][c, i, j] = -0.0  # where maps[0] has +0: the same factors, through torch
    assert activation_batch(negative_zero, True, 1) is None
    assert torch.equal(factorize_activations(negative_zero, 3, max_iter=20)[0][1], factorize_activations(maps, 3, max_iter=20)[0][1])
    for value, message in ((float("nan"), "NaN or infinite"), (float("inf"), "NaN or infinite"), (-1.0, "negative entries")):
        bad = [maps[0].clone(), maps[1]]
        bad[0][3, 2, 1] = value
        with pytest.raises(ValueError, match=message):
            factorize_activations(bad, 3)
    with pytest.raises(ValueError, match="k must be a positive int"):
        factorize_activations(maps, 0)


def test_dense_maps_in_the_batch_go_to_the_dense_solver_as_before():
    gen = torch.Generator().manual_seed(9)
    maps = [torch.rand(32, 5, 6, generator=gen) * (torch.rand(32, 5, 6, generator=gen) > p) for p in (0.9, 0.2, 0.9)]
    X = _activation_batch(maps, crow_weighting=True)
    expected = nmf(X, 3, max_iter=40, tol=1e-4, seed=0)
    for b, (U, V) in enumerate(factorize_activations(maps, 3, max_iter=40, tol=1e-4, seed=0)):
        assert torch.equal(V, expected.V[b]) and torch.equal(U, expected.U[b].T.reshape(3, 5, 6))
