import pytest
import torch

from descriptors.crow import crow_channel_weights
from descriptors.nmf import factorize_activations, nmf


def _planted(
    n: int = 48, c: int = 32, k: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    U = torch.rand(n, k, generator=gen) * (torch.rand(n, k, generator=gen) > 0.5)
    V = torch.rand(k, c, generator=gen) * (torch.rand(k, c, generator=gen) > 0.5)
    return U @ V, U, V


@pytest.mark.parametrize("sparse", [False, True])
def test_planted_factorization_is_recovered(sparse):
    X, _, V_true = _planted()
    result = nmf(X, 3, max_iter=2000, tol=0.0, seed=0, sparse=sparse)
    assert result.U.shape == (1, 48, 3) and result.V.shape == (1, 3, 32)
    assert float(result.rel_error[0]) < 1e-3
    # each planted row of V is found again, up to scale and order
    found = torch.nn.functional.normalize(result.V[0], dim=1)
    planted = torch.nn.functional.normalize(V_true, dim=1)
    assert (planted @ found.T).amax(dim=1).min() > 0.99
    assert bool((result.U >= 0).all()) and bool((result.V >= 0).all())


def test_rel_error_is_frobenius_ratio():
    X, _, _ = _planted(seed=3)
    result = nmf(X, 2, max_iter=30, seed=1, sparse=True)
    direct = torch.linalg.norm(X - result.U[0] @ result.V[0]) / torch.linalg.norm(X)
    assert float(result.rel_error[0]) == pytest.approx(float(direct), rel=1e-5)


def test_same_seed_is_bitwise_deterministic_and_seed_matters():
    X = torch.relu(torch.randn(2, 30, 20, generator=torch.Generator().manual_seed(5)))
    first, second = nmf(X, 4, seed=7), nmf(X, 4, seed=7)
    assert torch.equal(first.U, second.U) and torch.equal(first.V, second.V)
    other = nmf(X, 4, seed=8)
    assert not torch.equal(first.V, other.V)


def test_tolerance_stops_early_at_a_multiple_of_ten():
    X = torch.relu(torch.randn(40, 30, generator=torch.Generator().manual_seed(2)))
    result = nmf(X, 3, max_iter=500, tol=1e-2)
    assert result.n_iter < 500 and result.n_iter % 10 == 0


def test_masked_batch_equals_each_item_alone():
    gen = torch.Generator().manual_seed(11)
    small = torch.relu(torch.randn(12, 16, generator=gen))
    large = torch.relu(torch.randn(20, 16, generator=gen))
    X = torch.zeros(2, 20, 16)
    X[0, :12], X[1] = small, large
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[0, :12], mask[1] = True, True
    batch = nmf(X, 3, max_iter=100, seed=4, mask=mask)
    alone_small, alone_large = nmf(small, 3, max_iter=100, seed=4), nmf(large, 3, max_iter=100, seed=4)
    assert torch.equal(batch.U[0, 12:], torch.zeros(8, 3))  # padded rows of U stay 0
    assert torch.allclose(batch.U[0, :12], alone_small.U[0], rtol=1e-4, atol=1e-6)
    assert torch.allclose(batch.V[0], alone_small.V[0], rtol=1e-4, atol=1e-6)
    assert torch.allclose(batch.U[1], alone_large.U[0], rtol=1e-4, atol=1e-6)
    assert torch.allclose(
        batch.rel_error, torch.cat([alone_small.rel_error, alone_large.rel_error]), rtol=1e-4
    )
    assert batch.item_iters.tolist() == [int(alone_small.item_iters[0]), int(alone_large.item_iters[0])]


def test_factorize_activations_group_and_pad_agree_and_shapes():
    gen = torch.Generator().manual_seed(3)
    acts = [torch.relu(torch.randn(8, h, w, generator=gen)) for h, w in [(3, 4), (5, 2), (3, 4)]]
    grouped = factorize_activations(acts, 2, max_iter=50, tol=1e-4, seed=0)
    padded = factorize_activations(acts, 2, max_iter=50, tol=1e-4, seed=0, batching="pad")
    for A, (U, V), (U2, V2) in zip(acts, grouped, padded, strict=True):
        assert U.shape == (2, A.shape[1], A.shape[2]) and V.shape == (2, 8)
        assert torch.allclose(U, U2, rtol=1e-4, atol=1e-6) and torch.allclose(V, V2, rtol=1e-4, atol=1e-6)


def test_factorize_activations_applies_crow_weights_to_columns():
    A = torch.relu(torch.randn(6, 4, 5, generator=torch.Generator().manual_seed(9)))
    A[2, :, 2:] = 0  # a channel firing at fewer positions gets a larger weight
    weighted_X = A.flatten(1).T * crow_channel_weights(A)
    expected = nmf(weighted_X, 3, max_iter=40, seed=2)
    ((U, V),) = factorize_activations([A], 3, max_iter=40, seed=2, crow_weighting=True)
    assert torch.allclose(V, expected.V[0]) and torch.allclose(U.flatten(1).T, expected.U[0])
    ((_, V_plain),) = factorize_activations([A], 3, max_iter=40, seed=2, crow_weighting=False)
    assert not torch.allclose(V, V_plain)


def test_all_zero_input_gives_zero_factors_without_nan():
    result = nmf(torch.zeros(10, 6), 2)
    assert torch.equal(result.rel_error, torch.zeros(1))
    assert not torch.isnan(result.U).any() and not torch.isnan(result.V).any()


@pytest.mark.parametrize(
    ("X", "kwargs", "message"),
    [
        (-torch.ones(4, 3), {}, "non-negative"),
        (torch.ones(4, 3), {"k": 0}, "k must be"),
        (torch.ones(2, 4, 3), {"mask": torch.ones(2, 5, dtype=torch.bool)}, "mask must be"),
        (torch.ones(4), {}, r"\(N, C\)"),
    ],
)
def test_bad_input_is_rejected(X, kwargs, message):
    kwargs = {"k": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        nmf(X, **kwargs)


def test_sparse_and_dense_paths_agree():
    # 94% zeros, like real CNN activations: the default CPU path uses CSR products
    gen = torch.Generator().manual_seed(21)
    X = torch.rand(2, 40, 64, generator=gen) * (torch.rand(2, 40, 64, generator=gen) > 0.94)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 30:] = False
    sparse = nmf(X, 4, max_iter=60, tol=1e-4, seed=3, mask=mask, sparse=True)
    dense = nmf(X, 4, max_iter=60, tol=1e-4, seed=3, mask=mask, sparse=False)
    default = nmf(X, 4, max_iter=60, tol=1e-4, seed=3, mask=mask)
    assert torch.equal(default.U, sparse.U) and torch.equal(default.V, sparse.V)
    assert torch.allclose(sparse.U, dense.U, rtol=1e-3, atol=1e-5)
    assert torch.allclose(sparse.V, dense.V, rtol=1e-3, atol=1e-5)
    assert torch.allclose(sparse.rel_error, dense.rel_error, rtol=1e-5)
    assert sparse.item_iters.tolist() == dense.item_iters.tolist()


def test_equal_size_sparse_items_in_one_batch_match_each_alone():
    # Equal-size sparse items run as one block-diagonal product, and converged items leave the
    # block; every item must still follow exactly the iterations it follows alone.
    generator = torch.Generator().manual_seed(3)
    items = []
    for rank in (2, 3, 5):  # different ranks converge after different numbers of iterations
        U = torch.rand(60, rank, generator=generator)
        V = torch.rand(rank, 200, generator=generator)
        X = U @ V
        X[torch.rand(X.shape, generator=generator) < 0.9] = 0.0  # ~90 % zeros, like ReLU maps
        items.append(X)
    batch = torch.stack(items)
    together = nmf(batch, 4, max_iter=300, tol=1e-4, seed=0, sparse=True)
    assert len(set(together.item_iters.tolist())) > 1, "the test needs items that stop at different iterations"
    for b, X in enumerate(items):
        alone = nmf(X, 4, max_iter=300, tol=1e-4, seed=0, sparse=True)
        assert together.item_iters[b] == alone.item_iters[0]
        torch.testing.assert_close(together.V[b], alone.V[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(together.U[b], alone.U[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(together.rel_error[b], alone.rel_error[0], rtol=1e-4, atol=1e-6)
