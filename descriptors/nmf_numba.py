"""The NMF as one compiled loop per image (numba), for sparse X on the CPU: HALS and the
multiplicative updates.

Why: a 140 x 1280 activation matrix with ~95% zeros costs a few hundred thousand multiply-adds per
iteration; through torch that is ~10 small tensor ops per iteration whose dispatch, not their
arithmetic, was the time (4.5-7.3 ms at K = 4, issue 16). Compiled, the same updates cost their
arithmetic only.

Same algorithm, same order of updates, same initial factors, same convergence test as
`descriptors.nmf`'s torch paths (Lee-Seung updates of U then V, denominators clamped at 1e-7,
entries below 1e-30 flushed to 0, every 10 iterations stop when the relative decrease of the
error is below `tol`), so the factors agree with the torch solver's up to float rounding.

Both kernels share one set-up (`_setup`) and keep the factors k-major (U^T (k, n), V (k, C)) so that
every update is element-wise over a contiguous row, and compute the sparse products X V^T and X^T U
by gathering rows of a factor padded to a multiple of 4 columns, as explicit SIMD vectors of 8 (a
last block of 4) in 4 independent sums (`descriptors.nmf_simd`: LLVM had left the same loops
scalar; 2.5x faster at K = 8 for the whole kernel, 1.9x at K = 4, same iterations, measured on
8 Paris maps, docs/results.md). The multiplicative updates keep V in that gather layout; its update
and its Gram matrix are two SIMD passes (`nmf_simd.mu_update_rows`). No array is allocated inside
the iterations.
`fastmath` lets LLVM reorder the float32 sums (the inputs are finite and non-negative, checked by
`descriptors.nmf`): results differ from torch's by rounding only and are bit-identical run to run.

HALS (`hals_updates`, solver ``numba-hals``, an option): hierarchical alternating
least squares, i.e. exact coordinate descent on one column of U (then one row of V) at a time
(Cichocki & Phan 2009; Gillis & Glineur 2012). From the same initial factors it reaches the
multiplicative updates' error in 2-3x fewer iterations on real activation maps (issue 16), but its
heatmaps are sparser (~40% exact zeros vs ~3%), which cost the V·U descriptor 6 points of
landmark-LOO mAP (docs/results.md): not the default.

Images of a batch run in parallel on `threads` Python threads (the kernels release the GIL; the
caller passes the compute threads, `descriptors.threads`). Compiled on first use and cached on disk
(numba's cache: beside this file, or the user cache dir when that is read-only).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .nmf import HALS_WINDOW
from .nmf_simd import mu_update_rows, row_block_product_4, row_block_product_8
from .threads import over_items

_DENOMINATOR_FLOOR = np.float32(1e-7)
_TINY = np.float32(1e-30)
_CHECK_EVERY = 10


@njit(cache=True, nogil=True)
def _csr(X):
    """Row-major CSR (indptr, indices, values) of a dense (n, c) float32 matrix."""
    n, c = X.shape
    count = 0
    for i in range(n):
        for j in range(c):
            if X[i, j] != 0.0:
                count += 1
    indptr = np.zeros(n + 1, dtype=np.int64)
    indices = np.empty(count, dtype=np.int64)
    values = np.empty(count, dtype=np.float32)
    p = 0
    for i in range(n):
        for j in range(c):
            v = X[i, j]
            if v != 0.0:
                indices[p] = j
                values[p] = v
                p += 1
        indptr[i + 1] = p
    return indptr, indices, values


@njit(cache=True, nogil=True)
def _mu_items(X, U, V, max_iter, tol, iters, errors, start, stop):
    for b in range(start, stop):
        U_b, V_b, iters[b], errors[b] = _multiplicative_updates(X[b], U[b], V[b], max_iter, tol)
        U[b] = U_b
        V[b] = V_b


def multiplicative_updates(
    X: np.ndarray, U: np.ndarray, V: np.ndarray, max_iter: int, tol: float, threads: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``X (B, N, C)``, initial ``U (B, N, K)``, ``V (B, K, C)`` (float32) -> ``U, V, iterations (B,),
    ||X - UV||_F (B,)``; each item runs on its own (its own convergence), items on ``threads``."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    U = np.array(U, dtype=np.float32, order="C", copy=True)
    V = np.array(V, dtype=np.float32, order="C", copy=True)
    iters = np.zeros(X.shape[0], dtype=np.int64)
    errors = np.zeros(X.shape[0], dtype=np.float64)
    over_items(_mu_items, (X, U, V, int(max_iter), float(tol), iters, errors), X.shape[0], threads)
    return U, V, iters, errors


# ---- the kernels -----------------------------------------------------------------------------

_BLOCK = 8  # factor columns per gather block: 8 float32 = one AVX register (a last block may be 4)


@njit(cache=True, nogil=True)
def transpose_csr(indptr, indices, values, c):
    """CSR of X^T (c, n) from X's CSR: the column-wise nonzeros for the gather of X^T U."""
    n = indptr.shape[0] - 1
    t_ptr = np.zeros(c + 1, dtype=np.int64)
    for p in range(indices.shape[0]):
        t_ptr[indices[p] + 1] += 1
    for j in range(c):
        t_ptr[j + 1] += t_ptr[j]
    fill = t_ptr[:-1].copy()
    t_indices = np.empty(indices.shape[0], dtype=np.int64)
    t_values = np.empty(indices.shape[0], dtype=np.float32)
    for i in range(n):
        for p in range(indptr[i], indptr[i + 1]):
            q = fill[indices[p]]
            t_indices[q] = i
            t_values[q] = values[p]
            fill[indices[p]] += 1
    return t_ptr, t_indices, t_values


@njit(cache=True, nogil=True)
def _gather_rows(indptr, indices, values, B, rows):
    """rows (m, kp) = S B for S CSR (m, c) and B (c, kp), kp a multiple of 4: each row a sum of
    B's rows scaled by S's entries, 8 columns at a time (a last block of 4) as explicit SIMD
    vectors (`descriptors.nmf_simd`)."""
    kp = B.shape[1]
    for blk in range(0, kp - _BLOCK + 1, _BLOCK):
        row_block_product_8(indptr, indices, values, B, rows, blk)
    if kp % _BLOCK:
        row_block_product_4(indptr, indices, values, B, rows, kp - 4)


@njit(cache=True, nogil=True)
def _gather_product(indptr, indices, values, B, rows, out):
    """out (k, m) = (S B)^T through `rows` (m, kp) (`_gather_rows`): the first k columns
    k-major (the layout of the element-wise updates)."""
    _gather_rows(indptr, indices, values, B, rows)
    for a in range(out.shape[0]):
        for i in range(rows.shape[0]):
            out[a, i] = rows[i, a]


@njit(cache=True, nogil=True, fastmath=True)
def _row_gram(F, G):
    """G (k, k) = F F^T for F (k, m): dot products of contiguous rows."""
    k, m = F.shape
    for a in range(k):
        for b in range(a, k):
            s = np.float32(0.0)
            for t in range(m):
                s += F[a, t] * F[b, t]
            G[a, b] = s
            G[b, a] = s


@njit(cache=True, nogil=True, fastmath=True)
def _hals_sweep(F, P, G, r):
    """One HALS pass over the rows of F (k, m) in place: row a <- max(0, (P[a] - sum_{b != a}
    G[b, a] F[b]) / G[a, a]) with the rows already updated (exact least squares per row).
    A row whose partner factor is all zero (G[a, a] = 0) is left as it is."""
    k, m = F.shape
    for a in range(k):
        g = G[a, a]
        if g <= 0.0:
            continue
        for t in range(m):
            r[t] = P[a, t]
        for b in range(k):
            if b != a:
                w = G[b, a]
                for t in range(m):
                    r[t] -= w * F[b, t]
        inverse = np.float32(1.0) / g
        for t in range(m):
            v = r[t] * inverse
            F[a, t] = v if v >= _TINY else np.float32(0.0)  # max(0, .) and the subnormal flush


@njit(cache=True, nogil=True, fastmath=True)
def _pair_sum(A, B):
    """sum(A * B) in float64 for two 2-d arrays of one shape (k-major or gather layout)."""
    s = 0.0
    for a in range(A.shape[0]):
        for t in range(A.shape[1]):
            s += np.float64(A[a, t]) * np.float64(B[a, t])
    return s


@njit(cache=True, nogil=True)
def _error(x_sq, XtU_t, V, G_U, G_V):
    """||X - U V||_F from the products: ||X||^2 - 2 <U^T X, V> + <U^T U, V V^T> (no X - U V)."""
    return np.sqrt(max(x_sq - 2.0 * _pair_sum(XtU_t, V) + _pair_sum(G_U, G_V), 0.0))


@njit(cache=True, nogil=True, fastmath=True)
def _mu_rows(F, P, G, out):
    """Multiplicative update of all rows of F (k, m) at once (from the old F): out[a] = F[a] * P[a]
    / max(sum_b G[a, b] F[b], 1e-7), entries below 1e-30 flushed to 0; element-wise over rows."""
    k, m = F.shape
    for a in range(k):
        for t in range(m):
            out[a, t] = np.float32(0.0)
        for b in range(k):
            w = G[a, b]
            for t in range(m):
                out[a, t] += w * F[b, t]
        for t in range(m):
            v = F[a, t] * P[a, t] / max(out[a, t], _DENOMINATOR_FLOOR)
            out[a, t] = v if v >= _TINY else np.float32(0.0)


@njit(cache=True, nogil=True)
def _to_rows(F, rows):
    """rows[:, :k] = F^T for F (k, m) and rows (m, kp): the gather layout of a factor."""
    for a in range(F.shape[0]):
        for t in range(F.shape[1]):
            rows[t, a] = F[a, t]


@njit(cache=True, nogil=True)
def _setup(indptr, indices, values, t_ptr, t_indices, t_values, U0, V0):
    """What both kernels start from, given X's CSR and its transpose's (rows in column order):
    ||X||^2, the factors k-major (U^T (k, n), V (k, c)) with their gather layouts (m, kp) padded
    with zeros, the product buffers X V^T and X^T U (row-major padded, and k-major), the Gram
    matrices U^T U, V V^T, and X^T U of U0 done."""
    n, c = U0.shape[0], V0.shape[1]
    k = U0.shape[1]
    kp = ((k + 3) // 4) * 4
    x_sq = 0.0
    for p in range(values.shape[0]):
        x_sq += np.float64(values[p]) * np.float64(values[p])
    Ut = np.ascontiguousarray(U0.T)
    V = V0.copy()
    U_rows = np.zeros((n, kp), dtype=np.float32)
    Vt_rows = np.zeros((c, kp), dtype=np.float32)
    _to_rows(Ut, U_rows)
    _to_rows(V, Vt_rows)
    XVt_rows = np.empty((n, kp), dtype=np.float32)
    XtU_rows = np.empty((c, kp), dtype=np.float32)
    XVt = np.empty((k, n), dtype=np.float32)
    XtU = np.empty((k, c), dtype=np.float32)
    _gather_product(t_ptr, t_indices, t_values, U_rows, XtU_rows, XtU)
    G_U = np.empty((k, k), dtype=np.float32)
    G_V = np.empty((k, k), dtype=np.float32)
    _row_gram(Ut, G_U)
    _row_gram(V, G_V)
    return (indptr, indices, values, t_ptr, t_indices, t_values, x_sq, Ut, V, U_rows, Vt_rows, XVt_rows, XtU_rows,
            XVt, XtU, G_U, G_V)


@njit(cache=True, nogil=True)
def _csr_pair(X):
    """X's CSR and X^T's, from a dense (n, c) X."""
    indptr, indices, values = _csr(X)
    t_ptr, t_indices, t_values = transpose_csr(indptr, indices, values, X.shape[1])
    return indptr, indices, values, t_ptr, t_indices, t_values


@njit(cache=True, nogil=True)
def _multiplicative_updates(X, U0, V0, max_iter, tol):
    """`mu_from_csr` on a dense X, U returned (n, k)."""
    Ut, V, it, error = mu_from_csr(*_csr_pair(X), U0, V0, max_iter, tol)
    return np.ascontiguousarray(Ut.T), V, it, error


@njit(cache=True, nogil=True)
def mu_from_csr(indptr, indices, values, t_ptr, t_indices, t_values, U0, V0, max_iter, tol):
    """The Lee-Seung updates of X (CSR and its transpose's, `_setup`) from U0 (n, k), V0 (k, c);
    returns (U^T (k, n), V, iterations, ||X - U V||_F).

    U then V per iteration, every 10 iterations stop when the error fell by less than `tol` x the
    initial error since the previous check (descriptors.nmf's rule). U lives k-major (U^T (k, n)),
    updated element-wise over contiguous rows; V lives in its gather layout (c, kp), its update and
    its Gram matrix two SIMD passes (`nmf_simd.mu_update_rows`: no transposes of the large factor). No array is allocated inside the loop."""
    (indptr, indices, values, t_ptr, t_indices, t_values, x_sq, Ut, V, U_rows, Vt_rows, XVt_rows, XtU_rows,
     XVt, XtU, G_U, G_V) = _setup(indptr, indices, values, t_ptr, t_indices, t_values, U0, V0)
    k, kp = Ut.shape[0], U_rows.shape[1]
    Ut_next = np.empty_like(Ut)
    Vt_next = np.empty_like(Vt_rows)
    G_U_padded = np.zeros((kp, kp), dtype=np.float32)
    G_V_padded = np.zeros((kp, kp), dtype=np.float32)
    previous = _error(x_sq, XtU, V, G_U, G_V)
    safe_initial = previous if previous > 0.0 else 1.0
    it = 0
    while it < max_iter:
        it += 1
        # U <- U * (X V^T) / (U V V^T)
        _gather_product(indptr, indices, values, Vt_rows, XVt_rows, XVt)
        _mu_rows(Ut, XVt, G_V, Ut_next)
        Ut, Ut_next = Ut_next, Ut
        _to_rows(Ut, U_rows)
        # V <- V * (U^T X) / (U^T U V), in V's gather layout, and V V^T
        _gather_rows(t_ptr, t_indices, t_values, U_rows, XtU_rows)
        _row_gram(Ut, G_U)
        G_U_padded[:k, :k] = G_U
        mu_update_rows(Vt_rows, XtU_rows, G_U_padded, Vt_next, G_V_padded)
        Vt_rows, Vt_next = Vt_next, Vt_rows
        G_V[:, :] = G_V_padded[:k, :k]
        if tol > 0 and it % _CHECK_EVERY == 0 and it < max_iter:
            current = _error(x_sq, XtU_rows, Vt_rows, G_U, G_V)
            converged = (previous - current) / safe_initial < tol
            previous = current
            if converged:
                break
    V = np.ascontiguousarray(Vt_rows[:, :k].T)
    return Ut, V, it, _error(x_sq, XtU_rows, Vt_rows, G_U, G_V)


@njit(cache=True, nogil=True)
def _hals(X, U0, V0, max_iter, tol, window):
    """`hals_from_csr` on a dense X, U returned (n, k)."""
    Ut, V, it, error = hals_from_csr(*_csr_pair(X), U0, V0, max_iter, tol, window)
    return np.ascontiguousarray(Ut.T), V, it, error


@njit(cache=True, nogil=True)
def hals_from_csr(indptr, indices, values, t_ptr, t_indices, t_values, U0, V0, max_iter, tol, window):
    """HALS from U0 (n, k), V0 (k, c); returns (U^T (k, n), V, iterations, ||X - U V||_F).

    The error (from the products: ||X||^2 - 2 <X^T U, V^T> + <U^T U, V V^T>) is known after every
    iteration at no extra product, so the stopping test runs every iteration: stop when the last
    `window` iterations lowered the error by less than `tol` x the initial error."""
    (indptr, indices, values, t_ptr, t_indices, t_values, x_sq, Ut, V, U_rows, Vt_rows, XVt_rows, XtU_rows,
     XVt, XtU, G_U, G_V) = _setup(indptr, indices, values, t_ptr, t_indices, t_values, U0, V0)
    r = np.empty(max(U0.shape[0], V0.shape[1]), dtype=np.float32)
    previous = _error(x_sq, XtU, V, G_U, G_V)
    safe_initial = previous if previous > 0.0 else 1.0
    error = previous
    history = np.full(window, previous)  # the errors of the last `window` iterations, a ring
    it = 0
    while it < max_iter:
        it += 1
        _gather_product(indptr, indices, values, Vt_rows, XVt_rows, XVt)
        _hals_sweep(Ut, XVt, G_V, r)
        _to_rows(Ut, U_rows)
        _gather_product(t_ptr, t_indices, t_values, U_rows, XtU_rows, XtU)
        _row_gram(Ut, G_U)
        _hals_sweep(V, XtU, G_U, r)
        _to_rows(V, Vt_rows)
        _row_gram(V, G_V)
        error = _error(x_sq, XtU, V, G_U, G_V)
        if tol > 0 and it < max_iter:
            slot = it % window
            if it >= window and (history[slot] - error) / safe_initial < tol:
                break
            history[slot] = error
    return Ut, V, it, error


@njit(cache=True, nogil=True)
def _hals_items(X, U, V, max_iter, tol, window, iters, errors, start, stop):
    for b in range(start, stop):
        U_b, V_b, iters[b], errors[b] = _hals(X[b], U[b], V[b], max_iter, tol, window)
        U[b] = U_b
        V[b] = V_b


def hals_updates(
    X: np.ndarray, U: np.ndarray, V: np.ndarray, max_iter: int, tol: float, threads: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """HALS: ``X (B, N, C)``, initial ``U (B, N, K)``, ``V (B, K, C)`` (float32) -> ``U, V,
    iterations (B,), ||X - UV||_F (B,)``; each item on its own, items in parallel."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    U = np.array(U, dtype=np.float32, order="C", copy=True)
    V = np.array(V, dtype=np.float32, order="C", copy=True)
    iters = np.zeros(X.shape[0], dtype=np.int64)
    errors = np.zeros(X.shape[0], dtype=np.float64)
    over_items(_hals_items, (X, U, V, int(max_iter), float(tol), HALS_WINDOW, iters, errors), X.shape[0], threads)
    return U, V, iters, errors


def warm_up(algorithm: str = "mu") -> None:
    """Compile (or load from numba's disk cache) the kernel of ``algorithm`` ("mu" or "hals") now,
    on a tiny problem: a server calls this at start-up so that its first query does not pay for it."""
    X = np.zeros((1, 3, 9), dtype=np.float32)
    X[0, 0, 1] = X[0, 2, 5] = 1.0
    U = np.full((1, 3, 2), 0.5, dtype=np.float32)
    V = np.full((1, 2, 9), 0.5, dtype=np.float32)
    (hals_updates if algorithm == "hals" else multiplicative_updates)(X, U, V, 2, 0.0)


def compiled(algorithm: str = "mu") -> bool:
    """True when the kernel of ``algorithm`` is compiled in this process (numba's dispatchers)."""
    return bool((_hals_items if algorithm == "hals" else _mu_items).signatures)
