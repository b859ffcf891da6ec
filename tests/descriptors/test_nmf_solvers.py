"""The NMF solver registry (issue 16): every solver follows the same updates from the same start."""

from __future__ import annotations

import pytest
import torch

from descriptors.nmf import SOLVERS, factorize_activations, nmf, set_sparse_solver, sparse_solver

pytest.importorskip("numba")


def _sparse_batch(seed: int = 21) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    X = torch.rand(3, 40, 64, generator=gen) * (torch.rand(3, 40, 64, generator=gen) > 0.94)
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, 30:] = False  # one padded item: solved alone on its valid rows
    return X, mask


@pytest.mark.parametrize("solver", ["numba-mu", "torch-dense"])
def test_every_solver_matches_the_torch_sparse_reference(solver):
    X, mask = _sparse_batch()
    reference = nmf(X, 4, max_iter=60, tol=1e-4, seed=3, mask=mask, solver="torch-sparse")
    other = nmf(X, 4, max_iter=60, tol=1e-4, seed=3, mask=mask, solver=solver)
    assert other.item_iters.tolist() == reference.item_iters.tolist()
    torch.testing.assert_close(other.U, reference.U, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(other.V, reference.V, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(other.rel_error, reference.rel_error, rtol=1e-5, atol=1e-7)
    assert bool((other.U[1, 30:] == 0).all()), "padded rows keep U = 0"


def test_numba_solver_on_real_activations_matches_torch_and_is_seed_stable(default_backbone, sample_photos):
    acts = default_backbone.extract([default_backbone.preprocess(sample_photos["chelsea"], 224)])
    for k in (4, 8):
        old = factorize_activations(acts * 2, k, max_iter=100, tol=1e-4, seed=0)
        set_sparse_solver("torch-sparse")
        try:
            reference = factorize_activations(acts, k, max_iter=100, tol=1e-4, seed=0)
        finally:
            set_sparse_solver(None)
        new = factorize_activations(acts, k, max_iter=100, tol=1e-4, seed=0)
        for (U, V), (U_ref, V_ref) in zip(new, reference, strict=True):
            torch.testing.assert_close(U, U_ref, rtol=1e-3, atol=1e-4 * float(U_ref.abs().max()))
            torch.testing.assert_close(V, V_ref, rtol=1e-3, atol=1e-4 * float(V_ref.abs().max()))
        # the same seed gives the same factors, bit for bit, alone or twice in a batch
        for U, V in old:
            assert torch.equal(U, new[0][0]) and torch.equal(V, new[0][1])


def test_default_sparse_solver_is_numba_and_a_choice_is_validated():
    assert sparse_solver() == "numba-mu"
    assert set(SOLVERS) == {"numba-mu", "torch-sparse", "torch-dense"}
    set_sparse_solver("torch-sparse")
    try:
        assert sparse_solver() == "torch-sparse"
    finally:
        set_sparse_solver("auto")
    assert sparse_solver() == "numba-mu"
    with pytest.raises(ValueError, match="unknown NMF solver 'fast'"):
        set_sparse_solver("fast")
    with pytest.raises(ValueError, match="unknown solver 'fast'"):
        nmf(torch.ones(4, 3), 2, solver="fast")
