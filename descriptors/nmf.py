"""Batched non-negative matrix factorization (design.md "The method", step 3).

``X ~ U V`` with ``X (N, C) >= 0``, ``U (N, K) >= 0``, ``V (K, C) >= 0``, minimizing the Frobenius
loss with the Lee-Seung multiplicative updates, batched over images with ``torch.bmm`` on the
input's device (CPU or CUDA). Reference behaviour (public DFF code): initialization
``abs(normal) * sqrt(mean(X) / K)``, update U then V, denominators clamped at 1e-7, convergence
checked every 10 iterations, at most 200 iterations.

Seeds and batches: every batch item draws its initial factors from its *own* generator seeded with
``seed`` (U's valid rows first, then V), on the CPU, and then moves them to the input's device.
Each item's convergence is checked on its own and a converged item is frozen while the others go
on. So an item's result does not depend on which other items share its batch, on padding, or on
its position: factorizing a masked batch equals factorizing each item alone (up to float rounding
of the matrix products, whose summation order depends on the padded size), and the CPU and CUDA
paths start from the same factors.

Speed: on the CPU an item whose X is mostly zeros (ReLU activations are ~95% zeros) is factorized
with a sparse solver; on CUDA the batch runs dense (``bmm``). Solvers are registered by name in
``SOLVERS``, each running one of two algorithms (``ALGORITHMS``; ``DescriptorConfig.nmf_algorithm``
says which, and the index manifest records it):

- ``"mu"``, the method's multiplicative updates: ``numba-mu`` (default for sparse CPU items when
  numba is installed: one compiled loop per image, images on the compute threads;
  descriptors/nmf_numba.py), ``torch-sparse`` (block-diagonal CSR products through torch, the
  fallback without numba: its time is per-operation dispatch) and ``torch-dense`` (batched ``bmm``,
  any device). Same updates, same initial factors, same stopping rule: results agree up to float
  rounding.
- ``"hals"`` (an option): ``numba-hals`` and ``torch-hals`` (batched ``bmm``, CUDA). Lower mean
  error in 2-3x fewer iterations from the same start, but sparser heatmaps, which cost the V·U
  descriptor mAP (docs/results.md, "Speed choices").
Factor entries below 1e-30 are set to 0 (subnormal floats are very slow on CPUs), which assumes X
in a normal float range (CNN activations are).
"""

from __future__ import annotations

import importlib.util
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .crow import crow_channel_weights
from .settings import ALGORITHMS, SOLVER_ALGORITHMS, algorithm_of

__all__ = [
    "ALGORITHMS", "SOLVERS", "NMFResult", "algorithm_of", "chosen_algorithm", "factorize_activations", "nmf",
    "set_sparse_solver", "solvers_compiled", "sparse_solver", "warm_up",
]

_DENOMINATOR_FLOOR = 1e-7
_CHECK_EVERY = 10
_TINY = 1e-30
# the error must fall by tol x the initial error over this many iterations to go on: on 12 real
# maps (4 sample photos at 224 px + 8 Paris photos at 320 px; K = 4/8/16) 3 gave a lower mean
# error than the multiplicative updates at every K in 2.2-2.6x fewer iterations, and at K = 4 no
# map worse (1 and 2 stopped a few maps early at K = 4; 5 cost iterations for ~1e-4)
HALS_WINDOW = 3
# items with at most this share of non-zero entries use CSR products on the CPU
SPARSE_DENSITY = 0.25


@dataclass
class NMFResult:
    """Factors of a batch: ``U (B, N, K)``, ``V (B, K, C)``, ``rel_error (B,) = ||X-UV||_F / ||X||_F``,
    ``n_iter`` the number of iterations run (the slowest item); ``item_iters (B,)`` per item."""

    U: Tensor
    V: Tensor
    rel_error: Tensor
    n_iter: int
    item_iters: Tensor


def _validate(X: Tensor, k: int, max_iter: int, tol: float, mask: Tensor | None) -> None:
    if not isinstance(X, Tensor):
        raise TypeError(f"nmf: X must be a torch.Tensor, got {type(X).__name__}")
    if X.dim() != 3:
        raise ValueError(f"nmf: X must have shape (N, C) or (B, N, C), got {tuple(X.shape)}")
    if X.shape[0] == 0 or X.shape[1] == 0 or X.shape[2] == 0:
        raise ValueError(f"nmf: X has an empty dimension: {tuple(X.shape)}")
    if not X.is_floating_point():
        raise TypeError(f"nmf: X must be a floating-point tensor, got {X.dtype}")
    _validate_settings(k, max_iter, tol)
    if X.numel():
        low, high = torch.aminmax(X)  # one pass; NaN propagates into both
        if not (math.isfinite(float(low)) and math.isfinite(float(high))):
            raise ValueError("nmf: X has NaN or infinite entries")
        if float(low) < 0:
            raise ValueError("nmf: X has negative entries; NMF needs non-negative input (apply a ReLU first)")
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != tuple(X.shape[:2])):
        raise ValueError(
            f"nmf: mask must be a bool tensor of shape (B, N) = {tuple(X.shape[:2])}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )


def _validate_settings(k: int, max_iter: int, tol: float) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"nmf: k must be a positive int, got {k!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"nmf: max_iter must be a positive int, got {max_iter!r}")
    if not (tol >= 0):
        raise ValueError(f"nmf: tol must be >= 0, got {tol!r}")


def _initial_factors(X: Tensor, mask: Tensor, k: int, seed: int) -> tuple[Tensor, Tensor]:
    """Per-item init ``abs(normal) * sqrt(mean(X_b) / K)``, the mean over the item's valid rows.

    Every item draws from a generator seeded with ``seed``, so items with the same number of valid
    rows draw the same normals: they are drawn once per row count and only the scale differs."""
    B, N, C = X.shape
    U = torch.zeros(B, N, k, dtype=X.dtype)
    V = torch.zeros(B, k, C, dtype=X.dtype)
    mask_cpu = mask.cpu()
    n_valid = mask_cpu.sum(dim=1).tolist()
    sums = X.sum(dim=(1, 2)).double().cpu().tolist()
    draws: dict[int, tuple[Tensor, Tensor]] = {}
    for b, n_b in enumerate(n_valid):
        if n_b == 0:
            continue
        if n_b not in draws:
            draws[n_b] = _initial_draws(n_b, k, C, seed, X.dtype)
        u, v = draws[n_b]
        scale = _initial_scale(sums[b], n_b, C, k)
        torch.mul(v, scale, out=V[b])
        if n_b == N:
            torch.mul(u, scale, out=U[b])
        else:
            U[b, mask_cpu[b]] = u * scale
    return U.to(X.device), V.to(X.device)


def _initial_draws(n: int, k: int, c: int, seed: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``abs(normal)`` of U (n, k), then of V (k, c), from a CPU generator seeded with ``seed``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    u = torch.randn(n, k, generator=gen, dtype=dtype).abs_()
    return u, torch.randn(k, c, generator=gen, dtype=dtype).abs_()


def _initial_scale(total: float, n: int, c: int, k: int) -> float:
    """``sqrt(mean(X) / K)`` of an item of ``n`` valid rows whose entries sum to ``total``: the
    draws are multiplied by it in X's dtype (torch's ``mul`` by a Python float)."""
    return math.sqrt(total / (n * c) / k)


def _nonzeros_per_item(X: Tensor) -> list[int]:
    """Non-zero entries of each item of a CPU ``X (B, N, C)``: numpy's count is 2-3x faster than
    torch's ``count_nonzero(dim=...)`` on a batch of activation maps."""
    flat = X.detach().flatten(1)
    if flat.dtype in (torch.float32, torch.float64):
        return np.count_nonzero(flat.numpy(), axis=1).tolist()
    return torch.count_nonzero(flat, dim=1).tolist()


def _frobenius_error(X: Tensor, U: Tensor, V: Tensor) -> Tensor:
    return torch.linalg.vector_norm((X - torch.bmm(U, V)).flatten(1), dim=1)


def _flush_tiny_(factor: Tensor) -> Tensor:
    # multiplicative updates drive unused entries towards 0 through subnormal floats, which make
    # CPU matrix products several times slower; below this they are 0 for every practical purpose
    return factor.masked_fill_(factor < _TINY, 0.0)


def _dense_batch(X: Tensor, U: Tensor, V: Tensor, max_iter: int, tol: float) -> tuple[Tensor, Tensor, Tensor]:
    """Lee-Seung updates with ``bmm`` on a whole batch; converged items are frozen."""
    B = X.shape[0]
    previous_error = _frobenius_error(X, U, V)
    safe_initial = torch.where(previous_error > 0, previous_error, torch.ones_like(previous_error))
    active = torch.ones(B, dtype=torch.bool, device=X.device)
    item_iters = torch.zeros(B, dtype=torch.long, device=X.device)
    all_active = True  # a Python flag: no device sync per iteration on CUDA
    for it in range(1, max_iter + 1):
        # U <- U * (X V^T) / (U V V^T)
        numerator = torch.bmm(X, V.transpose(1, 2))
        denominator = torch.bmm(U, torch.bmm(V, V.transpose(1, 2))).clamp_min_(_DENOMINATOR_FLOOR)
        U_new = _flush_tiny_(U * numerator / denominator)
        # V <- V * (U^T X) / (U^T U V)
        U_new_t = U_new.transpose(1, 2)
        numerator = torch.bmm(U_new_t, X)
        denominator = torch.bmm(torch.bmm(U_new_t, U_new), V).clamp_min_(_DENOMINATOR_FLOOR)
        V_new = _flush_tiny_(V * numerator / denominator)
        if all_active:
            U, V = U_new, V_new
        else:
            # converged items keep their factors: results do not depend on the batch's other items
            U = torch.where(active[:, None, None], U_new, U)
            V = torch.where(active[:, None, None], V_new, V)
        item_iters += active.long()
        if tol > 0 and it % _CHECK_EVERY == 0 and it < max_iter:
            error = _frobenius_error(X, U, V)
            converged = (previous_error - error) / safe_initial < tol
            previous_error = torch.where(active, error, previous_error)
            active = active & ~converged
            all_active = bool(active.all())
            if not bool(active.any()):
                break
    return U, V, item_iters


def _csr_from_entries(rows: Tensor, cols: Tensor, values: Tensor, n: int, c: int) -> tuple[Tensor, Tensor]:
    """CSR forms of an ``(n, c)`` matrix and of its transpose from its non-zeros in row-major
    order, with int32 indices (the CPU sparse products run about twice as fast as with int64)."""
    crow = torch.zeros(n + 1, dtype=torch.int64)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n), 0)
    order = torch.argsort(cols * n + rows)  # column-major order of the same entries = CSR of X^T
    crow_t = torch.zeros(c + 1, dtype=torch.int64)
    crow_t[1:] = torch.cumsum(torch.bincount(cols, minlength=c), 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        X_csr = torch.sparse_csr_tensor(crow.int(), cols.int(), values, (n, c))
        Xt_csr = torch.sparse_csr_tensor(crow_t.int(), rows[order].int(), values[order], (c, n))
    return X_csr, Xt_csr


def _block_diagonal_csr(Xs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One CSR matrix (and its transpose) holding the items of ``Xs (m, N, C)`` on the diagonal.

    With the factors of all items stacked, ``X_bd @ Vt_all`` is every item's ``X_b V_b^T`` in one
    sparse product: per-operation overhead, not arithmetic, dominates the sparse updates at small
    K, so a batch costs about as many operations as one item. Also returns the squared norms.
    """
    m, n, c = Xs.shape
    item, rows, cols = torch.nonzero(Xs, as_tuple=True)
    values = Xs[item, rows, cols]
    rows = rows + item * n  # row-major order per item, items in order: already CSR order
    cols = cols + item * c
    X_bd, Xt_bd = _csr_from_entries(rows, cols, values, m * n, m * c)
    x_sq = torch.zeros(m, dtype=torch.float64).index_add_(0, item, values.double().square())
    return X_bd, Xt_bd, x_sq


def _sparse_group(
    Xs: Tensor, U: Tensor, V: Tensor, max_iter: int, tol: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The sparse updates for ``m`` items of equal size at once (block-diagonal CSR).

    Each item follows exactly the iterations it would follow alone: when items converge at a
    check, the block matrix is rebuilt from the items still running (converged items would
    otherwise keep paying for the slowest one). Returns ``U, V, iterations (m,), ||X - UV||_F (m,)``.
    """
    m, n, c = Xs.shape
    k = U.shape[2]
    U = U.clone()
    Vt = V.transpose(1, 2).contiguous()  # (m, C, K)

    def errors(x_sq: Tensor, Vt: Tensor, xt_u: Tensor, gram_u: Tensor) -> Tensor:
        # ||X - UV||^2 = ||X||^2 - 2 <X^T U, V^T> + <U^T U, V V^T>, per item, from the products
        cross = (Vt.double() * xt_u.double()).sum(dim=(1, 2))
        gram = (gram_u.double() * torch.bmm(Vt.transpose(1, 2), Vt).double()).sum(dim=(1, 2))
        return (x_sq - 2.0 * cross + gram).clamp_min(0.0).sqrt()

    def products(Xt_bd: Tensor, U: Tensor) -> tuple[Tensor, Tensor]:
        size = U.shape[0]
        return (Xt_bd @ U.reshape(size * n, k)).reshape(size, c, k), torch.bmm(U.transpose(1, 2), U)

    X_all, Xt_all, x_sq_all = _block_diagonal_csr(Xs)
    previous = errors(x_sq_all, Vt, *products(Xt_all, U))
    safe_initial = torch.where(previous > 0, previous, torch.ones_like(previous))
    iters = torch.zeros(m, dtype=torch.long)
    running = torch.arange(m)
    it = 0
    while running.numel() and it < max_iter:
        if running.numel() == m:
            X_bd, Xt_bd, x_sq = X_all, Xt_all, x_sq_all
        else:
            X_bd, Xt_bd, x_sq = _block_diagonal_csr(Xs[running])
        size = running.numel()
        U_r, Vt_r = U[running], Vt[running]
        converged = None
        while it < max_iter:
            it += 1
            # U <- U * (X V^T) / (U V V^T)
            denominator = torch.bmm(U_r, torch.bmm(Vt_r.transpose(1, 2), Vt_r)).clamp_min_(_DENOMINATOR_FLOOR)
            U_r = _flush_tiny_(U_r * (X_bd @ Vt_r.reshape(size * c, k)).reshape(size, n, k) / denominator)
            # V^T <- V^T * (X^T U) / (V^T U^T U)
            xt_u, gram_u = products(Xt_bd, U_r)
            Vt_r = _flush_tiny_(Vt_r * xt_u / torch.bmm(Vt_r, gram_u).clamp_min_(_DENOMINATOR_FLOOR))
            if tol > 0 and it % _CHECK_EVERY == 0 and it < max_iter:
                current = errors(x_sq, Vt_r, xt_u, gram_u)
                converged = (previous[running] - current) / safe_initial[running] < tol
                previous[running] = current
                if bool(converged.any()):
                    break
        U[running], Vt[running] = U_r, Vt_r
        iters[running] = it
        running = running[~converged] if converged is not None and it < max_iter else running[:0]
    return U, Vt.transpose(1, 2), iters, errors(x_sq_all, Vt, *products(Xt_all, U))


def _numba_group(
    Xs: Tensor, U: Tensor, V: Tensor, max_iter: int, tol: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``numba-mu``: the compiled multiplicative updates (CPU)."""
    from .nmf_numba import multiplicative_updates

    return _run_numba(multiplicative_updates, Xs, U, V, max_iter, tol)


def _numba_hals_group(
    Xs: Tensor, U: Tensor, V: Tensor, max_iter: int, tol: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``numba-hals``: compiled HALS (CPU), descriptors/nmf_numba.py."""
    from .nmf_numba import hals_updates

    return _run_numba(hals_updates, Xs, U, V, max_iter, tol)


def _run_numba(kernel, Xs: Tensor, U: Tensor, V: Tensor, max_iter: int, tol: float):
    """A numba kernel on float32 copies, items on torch's threads of this thread (the compute threads)."""
    U_n, V_n, iters, errors = kernel(
        Xs.detach().float().cpu().numpy(), U.float().cpu().numpy(), V.float().cpu().numpy(), max_iter, tol,
        threads=torch.get_num_threads(),
    )
    dtype = Xs.dtype
    return (
        torch.from_numpy(U_n).to(dtype), torch.from_numpy(V_n).to(dtype),
        torch.from_numpy(iters), torch.from_numpy(errors),
    )


def _dense_group(
    Xs: Tensor, U: Tensor, V: Tensor, max_iter: int, tol: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``torch-dense``: batched ``bmm`` updates on the input's device."""
    U, V, iters = _dense_batch(Xs, U, V, max_iter, tol)
    return U, V, iters.cpu(), _frobenius_error(Xs, U, V).double().cpu()


def _hals_sweep_(F: Tensor, P: Tensor, G: Tensor, active: Tensor) -> None:
    """Batched HALS pass over the K rows of ``F (B, K, m)`` in place (see nmf_numba._hals_sweep);
    ``P (B, K, m)`` the data products, ``G (B, K, K)`` the other factor's Gram matrix."""
    for a in range(F.shape[1]):
        g = G[:, a, a]
        # P[a] - sum_{b != a} G[b, a] F[b] = P[a] - (G[:, a] . F) + G[a, a] F[a]
        residual = P[:, a] - torch.bmm(G[:, :, a].unsqueeze(1), F).squeeze(1) + g[:, None] * F[:, a]
        row = _flush_tiny_(residual / torch.where(g > 0, g, torch.ones_like(g))[:, None])
        keep = (g > 0) & active
        F[:, a] = torch.where(keep[:, None], row, F[:, a])


def _dense_hals_group(
    Xs: Tensor, U: Tensor, V: Tensor, max_iter: int, tol: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``torch-hals``: HALS with batched ``bmm`` on the input's device (CUDA, or a CPU without
    numba); converged items are frozen; the error is checked every iteration as in ``numba-hals``."""
    B = Xs.shape[0]
    Ut = U.transpose(1, 2).contiguous()  # (B, K, N): rows are the heatmaps
    V = V.clone()
    x_sq = Xs.double().square().sum(dim=(1, 2))

    def error(XtU_t: Tensor, G_U: Tensor, G_V: Tensor) -> Tensor:
        cross = (XtU_t.double() * V.double()).sum(dim=(1, 2))
        return (x_sq - 2.0 * cross + (G_U.double() * G_V.double()).sum(dim=(1, 2))).clamp_min(0.0).sqrt()

    G_V = torch.bmm(V, V.transpose(1, 2))
    current = error(torch.bmm(Ut, Xs), torch.bmm(Ut, Ut.transpose(1, 2)), G_V)
    safe_initial = torch.where(current > 0, current, torch.ones_like(current))
    history = [current] * HALS_WINDOW  # the errors of the last HALS_WINDOW iterations, a ring
    active = torch.ones(B, dtype=torch.bool, device=Xs.device)
    iters = torch.zeros(B, dtype=torch.long, device=Xs.device)
    for it in range(1, max_iter + 1):
        _hals_sweep_(Ut, torch.bmm(V, Xs.transpose(1, 2)), G_V, active)
        XtU_t = torch.bmm(Ut, Xs)
        G_U = torch.bmm(Ut, Ut.transpose(1, 2))
        _hals_sweep_(V, XtU_t, G_U, active)
        G_V = torch.bmm(V, V.transpose(1, 2))
        iters += active.long()
        current = torch.where(active, error(XtU_t, G_U, G_V), current)
        if tol > 0 and it < max_iter:
            slot = it % HALS_WINDOW
            if it >= HALS_WINDOW:
                active = active & ((history[slot] - current) / safe_initial >= tol)
                if not bool(active.any()):
                    break
            history[slot] = current
    return Ut.transpose(1, 2).contiguous(), V, iters.cpu(), current.cpu()


@dataclass(frozen=True)
class Solver:
    """One NMF implementation: ``run(X (m, N, C), U (m, N, K), V (m, K, C), max_iter, tol) -> (U, V,
    iterations (m,), ||X - UV||_F (m,) float64 on the CPU)``; ``algorithm`` the updates it runs
    (solvers of one algorithm give the same factors up to float rounding); ``sparse``: a CPU
    solver of sparse items (runs each item alone on its valid rows); ``needs`` a module."""

    run: object
    algorithm: str
    sparse: bool
    needs: str | None = None


SOLVERS = {
    "numba-hals": Solver(_numba_hals_group, "hals", sparse=True, needs="numba"),
    "torch-hals": Solver(_dense_hals_group, "hals", sparse=False),
    "numba-mu": Solver(_numba_group, "mu", sparse=True, needs="numba"),
    "torch-sparse": Solver(_sparse_group, "mu", sparse=True),
    "torch-dense": Solver(_dense_group, "mu", sparse=False),
}
# the names live in descriptors.settings (importable without torch); the registry must match them
assert {name: solver.algorithm for name, solver in SOLVERS.items()} == SOLVER_ALGORITHMS, (
    "descriptors.settings.SOLVER_ALGORITHMS is out of date"
)
# what a CPU item with sparse X gets, per algorithm, fastest first (benchmarks/bench_descriptors.py:
# numba-mu was faster than torch-sparse at K = 4, 8 and 16, so there is no choice by K); dense
# items and CUDA batches get the algorithm's torch solver
_SPARSE_PREFERENCE = {"hals": ("numba-hals", "torch-hals"), "mu": ("numba-mu", "torch-sparse")}
_DENSE_SOLVER = {"hals": "torch-hals", "mu": "torch-dense"}
SPARSE_SOLVERS = tuple(name for name, solver in SOLVERS.items() if solver.sparse)
_sparse_solver_choice: list[str] = []  # set_sparse_solver's choice; empty: automatic


def _installed(name: str) -> bool:
    needs = SOLVERS[name].needs
    return needs is None or importlib.util.find_spec(needs) is not None


def set_sparse_solver(name: str | None) -> None:
    """Choose the solver of sparse CPU items for this process (None or "auto": automatic). It
    applies to the factorizations of its algorithm (``SOLVERS[name].algorithm``)."""
    if name in (None, "auto"):
        _sparse_solver_choice.clear()
        return
    if name not in SOLVERS:
        raise ValueError(f"unknown NMF solver {name!r}; choose auto or one of {', '.join(SOLVERS)}")
    if not _installed(name):
        raise ValueError(f"NMF solver {name} needs numba: pip install numba (or dffsearch[runtimes])")
    _sparse_solver_choice[:] = [name]


def sparse_solver(algorithm: str = "mu") -> str:
    """The solver of sparse CPU items for ``algorithm``: the one set (when of that algorithm), else
    the fastest installed."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown NMF algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    if _sparse_solver_choice and SOLVERS[_sparse_solver_choice[0]].algorithm == algorithm:
        return _sparse_solver_choice[0]
    return next(name for name in _SPARSE_PREFERENCE[algorithm] if _installed(name))


def warm_up(algorithm: str | None = None) -> str:
    """Compile (or load from numba's disk cache) the solver of sparse CPU items for ``algorithm``
    (None: the process's choice), on a tiny problem; returns its name. dff-serve calls it before it
    reports SERVING, dff-index build beside the backbone's load."""
    algorithm = algorithm or chosen_algorithm()
    name = sparse_solver(algorithm)
    if SOLVERS[name].needs == "numba":
        from .nmf_inputs import warm_up as compile_map_path
        from .nmf_numba import warm_up as compile_kernel

        compile_kernel(algorithm)
        compile_map_path(algorithm)
    return name


def solvers_compiled(algorithm: str | None = None) -> bool:
    """Whether the solver of ``algorithm`` (None: the process's choice) is ready in this process
    (True for a solver that needs no compilation)."""
    algorithm = algorithm or chosen_algorithm()
    if SOLVERS[sparse_solver(algorithm)].needs != "numba":
        return True
    import sys

    modules = [sys.modules.get(f"{__package__}.{name}") for name in ("nmf_numba", "nmf_inputs")]
    return all(module is not None and module.compiled(algorithm) for module in modules)


def chosen_algorithm() -> str:
    """The algorithm of the solver ``set_sparse_solver`` chose for this process (automatic: mu)."""
    return algorithm_of(_sparse_solver_choice[0] if _sparse_solver_choice else None)


def nmf(
    X: Tensor,
    k: int,
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int = 0,
    mask: Tensor | None = None,
    sparse: bool | None = None,
    solver: str | None = None,
    algorithm: str = "mu",
) -> NMFResult:
    """Factorize ``X (B, N, C)`` (or ``(N, C)``, returned with B = 1) as ``U (B,N,K) @ V (B,K,C)``.

    ``mask (B, N)`` marks valid rows when images of different sizes are padded into one batch:
    padded rows of X are treated as 0 and their rows of U are 0 throughout. Every 10 iterations an
    item stops when ``(previous_error - error) / initial_error < tol`` (``tol = 0`` runs ``max_iter``).

    ``sparse``: None (default) runs an item with sparse (CSR) products when X is on the CPU and at
    most ``SPARSE_DENSITY`` of the item's entries are non-zero (CNN activations after ReLU are
    typically 90-95% zeros), otherwise batched dense ``bmm``; True/False force one path on every
    item. The sparse path's solver is `sparse_solver()`; ``solver`` (a name in ``SOLVERS``) forces
    one solver on every item (and its algorithm). ``algorithm``: ``"mu"`` (Lee-Seung multiplicative
    updates, the reference, stopping test every 10 iterations) or ``"hals"`` (``nmf_numba``: fewer
    iterations to the same error, stopping test every iteration). Solvers of one algorithm do the
    same arithmetic up to float rounding.
    """
    if solver is not None and solver not in SOLVERS:
        raise ValueError(f"nmf: unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"nmf: unknown algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    if isinstance(X, Tensor) and X.dim() == 2:
        X = X.unsqueeze(0)
        if mask is not None and mask.dim() == 1:
            mask = mask.unsqueeze(0)
    _validate(X, k, max_iter, tol, mask)
    return _factorize(X, k, max_iter, tol, seed, mask, sparse, solver, algorithm)


def _factorize(
    X: Tensor, k: int, max_iter: int, tol: float, seed: int, mask: Tensor | None, sparse: bool | None,
    solver: str | None, algorithm: str, nonzeros: list[int] | None = None,
) -> NMFResult:
    """`nmf` after its checks; ``nonzeros`` per item when the caller counted them already
    (descriptors/nmf_inputs.py, in the kernel threads)."""
    B, N, _ = X.shape
    if mask is None:
        mask = torch.ones(B, N, dtype=torch.bool, device=X.device)
    else:
        mask = mask.to(X.device)
        X = X * mask.unsqueeze(-1).to(X.dtype)

    U, V = _initial_factors(X, mask, k, seed)
    n_valid = mask.sum(dim=1).tolist()
    if sparse is None:
        if nonzeros is None:
            nonzeros = _nonzeros_per_item(X) if X.device.type == "cpu" else [0] * B
        use_sparse = [
            X.device.type == "cpu" and n_b > 0 and nonzeros[b] <= SPARSE_DENSITY * n_b * X.shape[2]
            for b, n_b in enumerate(n_valid)
        ]
    else:
        use_sparse = [bool(sparse)] * B

    if solver is not None and SOLVERS[solver].algorithm != algorithm:
        raise ValueError(f"nmf: solver {solver} runs the {SOLVERS[solver].algorithm} updates, not {algorithm}")
    if solver is None:
        sparse_name = sparse_solver(algorithm)
        solver_of = [sparse_name if use_sparse[b] else _DENSE_SOLVER[algorithm] for b in range(B)]
    else:
        solver_of = [solver] * B
    item_iters = torch.zeros(B, dtype=torch.long)
    errors = torch.zeros(B, dtype=torch.float64)
    for name in dict.fromkeys(solver_of):
        run = SOLVERS[name].run
        items = [b for b in range(B) if solver_of[b] == name and n_valid[b] > 0]
        if not SOLVERS[name].sparse:  # dense: one masked batch (padded rows of U stay 0)
            groups, alone = ([items] if items else []), []
        else:  # full-size items together, padded ones alone on their valid rows
            groups = [[b for b in items if n_valid[b] == N]]
            alone = [b for b in items if n_valid[b] < N]
        for group in groups:
            if not group:
                continue
            index = torch.tensor(group, device=X.device)
            X_g = X[index] if len(group) < B else X
            U_g, V_g, iters_g, errors_g = run(X_g, U[index], V[index], max_iter, tol)
            U[index], V[index] = U_g.to(X.device), V_g.to(X.device)
            item_iters[group], errors[group] = iters_g, errors_g
        for b in alone:
            rows = mask[b]
            U_b, V_b, iters_b, error_b = run(X[b, rows][None], U[b, rows][None], V[b][None], max_iter, tol)
            U[b, rows], V[b] = U_b[0], V_b[0]
            item_iters[b], errors[b] = iters_b[0], error_b[0]

    # in X's dtype: a float64 norm cost 2.5 ms of a batch of 8 (per-element casts); torch's
    # float32 cascade sum is within ~1e-7 of it, below rel_error's own float32 rounding
    x_norm = torch.linalg.vector_norm(X.flatten(1), dim=1).double().cpu()
    rel_error = torch.where(x_norm > 0, errors / torch.where(x_norm > 0, x_norm, 1.0), 0.0)
    return NMFResult(
        U=U,
        V=V,
        rel_error=rel_error.to(device=X.device, dtype=X.dtype),
        n_iter=int(item_iters.max()),
        item_iters=item_iters.to(X.device),
    )


def _activation_batch(acts: list[Tensor], crow_weighting: bool) -> Tensor:
    """Maps ``(C, h, w)`` of one size -> ``X (B, h*w, C)`` contiguous, each item's columns scaled by
    its CroW channel weights when asked: one transposing copy, the weights of the whole batch in one
    call on the same memory seen as channels-last maps, scaled in place (per image, the strided
    products and the stack of rows cost 1.3 ms of a 140 x 1280 map's ~5 ms NMF)."""
    C, h, w = acts[0].shape
    X = acts[0].new_empty(len(acts), h * w, C)
    for x, A in zip(X, acts, strict=True):
        x.copy_(A.flatten(1).t())  # 2-D: torch's blocked transpose, 4x faster than a stack of .t() views
    if crow_weighting:
        maps = X.view(len(acts), h, w, C).permute(0, 3, 1, 2)  # (B, C, h, w), channels-last
        X.mul_(crow_channel_weights(maps).unsqueeze(1))
    return X


def _factorize_maps(
    maps: list[Tensor], k: int, max_iter: int, tol: float, seed: int, crow_weighting: bool, algorithm: str
) -> list[tuple[Tensor, Tensor]]:
    """``(U (K, h, w), V (K, C))`` of maps of one size: with numba, X is built and factorized per
    map in the kernel threads (descriptors/nmf_inputs.py: the same X, the same factors, no serial
    transposing copy), else through `nmf`."""
    if _installed("numba-mu"):
        from .nmf_inputs import factorize_maps

        done = factorize_maps(maps, k, max_iter, tol, seed, crow_weighting, algorithm, torch.get_num_threads())
        if done is not None:
            return done.factors
    h, w = maps[0].shape[1:]
    res = nmf(_activation_batch(maps, crow_weighting), k, max_iter, tol, seed, algorithm=algorithm)
    return [(res.U[j].transpose(0, 1).reshape(k, h, w), res.V[j]) for j in range(len(maps))]


def _activation_rows(A: Tensor, crow_weighting: bool) -> Tensor:
    """``(C,h,w)`` -> ``X (h*w, C)``, columns scaled by the CroW channel weights when asked."""
    return _activation_batch([A], crow_weighting)[0]


def factorize_activations(
    acts: list[Tensor],
    k: int,
    *,
    max_iter: int = 200,
    tol: float = 1e-4,
    seed: int = 0,
    crow_weighting: bool = True,
    batching: str = "group",
    algorithm: str = "mu",
) -> list[tuple[Tensor, Tensor]]:
    """NMF of each image's activations ``(C, h, w)``; returns per image ``(U (K, h, w), V (K, C))``.

    ``batching="group"`` runs one batched NMF per distinct ``(h, w)``; ``"pad"`` pads every image to
    the largest ``h*w`` and runs a single masked batch. Both give the same factors (see the module
    docstring on seeds), so the choice is only about speed. All activations must share C, dtype and
    device. With ``crow_weighting`` the columns of X are multiplied by the image's CroW channel
    weights before factorizing (design step 2), so V lives in that weighted space.
    ``algorithm``: ``nmf``'s (the product's: ``DescriptorConfig.nmf_algorithm``, ``"mu"``).
    """
    if batching not in ("group", "pad"):
        raise ValueError(f"factorize_activations: batching must be 'group' or 'pad', got {batching!r}")
    if not acts:
        return []
    for i, A in enumerate(acts):
        if not isinstance(A, Tensor) or A.dim() != 3:
            shape = tuple(A.shape) if isinstance(A, Tensor) else type(A).__name__
            raise ValueError(f"factorize_activations: acts[{i}] must be a (C, h, w) tensor, got {shape}")
        if A.shape[0] != acts[0].shape[0]:
            raise ValueError(
                f"factorize_activations: acts[{i}] has {A.shape[0]} channels, acts[0] has {acts[0].shape[0]}"
            )
    results: list[tuple[Tensor, Tensor] | None] = [None] * len(acts)

    def unpack(index: int, U: Tensor, V: Tensor) -> None:
        h, w = acts[index].shape[1:]
        results[index] = (U[: h * w].transpose(0, 1).reshape(k, h, w), V)

    if batching == "group":
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, A in enumerate(acts):
            groups[(A.shape[1], A.shape[2])].append(i)
        for indices in groups.values():
            factors = _factorize_maps([acts[i] for i in indices], k, max_iter, tol, seed, crow_weighting, algorithm)
            for j, i in enumerate(indices):
                results[i] = factors[j]
    else:
        rows = [_activation_rows(A, crow_weighting) for A in acts]
        n_max = max(r.shape[0] for r in rows)
        X = rows[0].new_zeros(len(rows), n_max, rows[0].shape[1])
        mask = torch.zeros(len(rows), n_max, dtype=torch.bool, device=X.device)
        for i, r in enumerate(rows):
            X[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = True
        res = nmf(X, k, max_iter, tol, seed, mask=mask, algorithm=algorithm)
        for i in range(len(rows)):
            unpack(i, res.U[i], res.V[i])
    return [r for r in results if r is not None]
