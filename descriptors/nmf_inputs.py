"""The NMF's activation matrix built in the kernel threads (issue 16).

``X (B, h*w, C)`` of maps ``(C, h, w)`` of one size, each item's columns scaled by its CroW channel
weights: what `descriptors.nmf._activation_batch` builds with torch on the calling thread (a
transposing copy, the weights, a scaling pass, then nmf's input checks and non-zero count: 0.6-1.2
ms per Paris map at 320 px, serial before the kernel threads started; and each kernel then scanned
its dense X again for its CSR). Here each map is read as it comes, ``(C, h*w)`` contiguous, on the
kernel threads (`threads.over_items`), in two steps:

1. per item: the positive count per channel (the CroW ``Q_c``; integer compares on the float
   bits, which also flag negative, -0.0 and NaN entries); then the weights of the whole batch
   from those counts with torch on the calling thread, through the very function
   `crow_channel_weights` uses (`crow.channel_weights_from_counts`: bit-identical weights; torch's
   ``log`` is not libm's, so the weights are not recomputed here);
2. per item: the CSR of X^T straight from the map's rows (``A[c, i] * w[c]``, torch's float32
   products; all-zero channels skipped), X's CSR by a counting transpose (both with their entries
   in the order `nmf_numba._csr` gave), and the dense X (zeros, then the entries).

`factorize_maps` then takes nmf's initial factors (the dense X's sums with torch: their float32
summation order is torch's; the draws once) and runs each item's kernel from its CSR in its
thread (`nmf_numba.mu_from_csr` / `hals_from_csr`). So X is bit for bit `_activation_batch`'s and
the factors, iterations and errors are those of the torch-prepared path. Anything unusual (a
refused or -0.0 entry, another dtype or device) takes the torch path, which gives nmf's own error
or result; a batch with an item too dense for the sparse solver goes through `nmf` on this X.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from numba import njit
from torch import Tensor

from .crow import channel_weights_from_counts
from .nmf_numba import transpose_csr
from .threads import over_items


@dataclass
class ActivationBatch:
    """``X (B, h*w, C)`` float32 on the CPU, each item's non-zero entries, and each item's
    ``(indptr, indices, values, t_ptr, t_indices, t_values)``: the CSR of X and of X^T
    (`nmf_numba.mu_from_csr`'s input)."""

    X: Tensor
    nonzeros: list[int]
    csr: list[tuple]


@njit(cache=True, nogil=True)
def _positive_counts(bits, counts):
    """counts[c] = the positions where A[c] > 0, from A's float32 bit patterns ``bits (C, n)``
    int32 (integer compares: vectorized); returns 1 when A has an entry whose sign bit is set
    (negative, -0.0) or a NaN, else 0."""
    C, n = bits.shape
    unusual = 0
    for c in range(C):
        s = 0
        for i in range(n):
            b = bits[c, i]
            s += (b > 0) & (b <= 0x7F800000)  # +0 < A <= +inf
            unusual |= (b < 0) | (b > 0x7F800000)
        counts[c] = s
    return unusual


@njit(cache=True, nogil=True)
def _sparse_rows(A, w, counts, X):
    """X = A^T (C, n) with column c times w[c], for A without negative, -0.0 or NaN entries:
    the CSR of X^T straight from A's rows (its entries in position order, as `nmf_numba._csr`
    then `transpose_csr` give them), X's CSR from that, and the dense X (zeros, then the entries).
    Returns the six CSR arrays, the non-zero count and 1 if an entry is infinite or NaN (an
    infinite A) else 0. No fastmath: the check must see inf and NaN."""
    C, n = A.shape
    capacity = 0
    for c in range(C):
        capacity += counts[c]  # an entry of X is != 0 only where A > 0
    t_ptr = np.zeros(C + 1, dtype=np.int64)
    t_indices = np.empty(capacity, dtype=np.int64)
    t_values = np.empty(capacity, dtype=np.float32)
    p = 0
    refused = 0
    for c in range(C):
        end = p + counts[c]
        if end > p:  # a quarter of a map's channels are all zero: skipped
            wc = w[c]
            for i in range(n):
                a = A[c, i]
                if a > 0.0:
                    v = a * wc
                    t_indices[p] = i
                    t_values[p] = v
                    refused |= not (v < np.inf)
                    p += v != 0.0  # a product may underflow to 0
                    if p == end:
                        break
        t_ptr[c + 1] = p
    t_indices, t_values = t_indices[:p], t_values[:p]
    X[:, :] = 0.0
    for c in range(C):
        for q in range(t_ptr[c], t_ptr[c + 1]):
            X[t_indices[q], c] = t_values[q]
    indptr, indices, values = transpose_csr(t_ptr, t_indices, t_values, n)
    return indptr, indices, values, t_ptr, t_indices, t_values, p, refused


def activation_batch(maps: list[Tensor], crow_weighting: bool, threads: int) -> ActivationBatch | None:
    """`nmf._activation_batch(maps, crow_weighting)` built on ``threads`` threads, with its items'
    non-zeros and CSR forms; None when the maps are not float32 on the CPU or have an entry that
    is negative, -0.0, NaN or infinite (the torch path then gives nmf's own error or result)."""
    if not all(A.device.type == "cpu" and A.dtype == torch.float32 for A in maps):
        return None
    C, h, w = maps[0].shape
    n = h * w
    if C == 0 or n == 0:
        return None
    flat = [A.detach().reshape(C, n).contiguous().numpy() for A in maps]
    B = len(flat)
    counts = np.empty((B, C), dtype=np.int32)
    unusual = np.zeros(B, dtype=np.int64)

    def count(b: int, _: int) -> None:
        unusual[b] = _positive_counts(flat[b].view(np.int32), counts[b])

    over_items(count, (), B, threads)
    if unusual.any():
        return None
    if crow_weighting:
        weights = channel_weights_from_counts(torch.from_numpy(counts), n, torch.float32).numpy()
    else:
        weights = np.ones((B, C), dtype=np.float32)  # x * 1 is x, bit for bit
    X = np.empty((B, n, C), dtype=np.float32)
    csr: list[tuple] = [()] * B
    nonzeros = np.zeros(B, dtype=np.int64)
    refused = np.zeros(B, dtype=np.int64)

    def rows(b: int, _: int) -> None:
        *csr_b, nonzeros[b], refused[b] = _sparse_rows(flat[b], weights[b], counts[b], X[b])
        csr[b] = tuple(csr_b)

    over_items(rows, (), B, threads)
    if refused.any():
        return None
    return ActivationBatch(torch.from_numpy(X), nonzeros.tolist(), csr)


@dataclass
class MapFactors:
    """Per map ``U (K, h, w)``, ``V (K, C)`` (`factorize_activations`'s), its iterations and
    ``||X - UV||_F``."""

    factors: list[tuple[Tensor, Tensor]]
    iterations: list[int]
    errors: list[float]


def factorize_maps(
    maps: list[Tensor], k: int, max_iter: int, tol: float, seed: int, crow_weighting: bool, algorithm: str,
    threads: int,
) -> MapFactors | None:
    """`nmf.factorize_activations` of maps of one size, each map's X built (`activation_batch`)
    and factorized (`nmf_numba.mu_from_csr` / `hals_from_csr`) on the kernel threads; the initial
    factors are `nmf`'s, from the same X. None where `activation_batch` gives None. Items too dense
    for the sparse solver, or a sparse solver that is not numba's, go through `nmf` on the same X."""
    from .nmf import (
        HALS_WINDOW,
        SPARSE_DENSITY,
        _factorize,
        _initial_draws,
        _initial_scale,
        _validate_settings,
        sparse_solver,
    )
    from .nmf_numba import hals_from_csr, mu_from_csr

    batch = activation_batch(maps, crow_weighting, threads)
    if batch is None:
        return None
    _validate_settings(k, max_iter, tol)  # X's own checks were made while building it
    B, n, C = batch.X.shape
    h, w = maps[0].shape[1:]
    solver = sparse_solver(algorithm)
    if solver not in ("numba-mu", "numba-hals") or max(batch.nonzeros) > SPARSE_DENSITY * n * C:
        res = _factorize(batch.X, k, max_iter, tol, seed, None, None, None, algorithm, batch.nonzeros)
        x_norm = torch.linalg.vector_norm(batch.X.flatten(1), dim=1).double()
        return MapFactors(
            [(res.U[b].transpose(0, 1).reshape(k, h, w), res.V[b]) for b in range(B)],
            res.item_iters.tolist(), (res.rel_error.double() * x_norm).tolist(),
        )
    # nmf's initial factors (`_initial_factors`): the batch's sums with torch (its summation
    # order), the draws once, each item's scaling (float32 products, as torch's) in its thread
    sums = batch.X.sum(dim=(1, 2)).double().tolist()
    u, v = (draw.numpy() for draw in _initial_draws(n, k, C, seed, torch.float32))
    Ut = np.empty((B, k, n), dtype=np.float32)
    V = np.empty((B, k, C), dtype=np.float32)
    iterations = np.zeros(B, dtype=np.int64)
    errors = np.zeros(B, dtype=np.float64)

    def factorize(b: int, _: int) -> None:
        scale = np.float32(_initial_scale(sums[b], n, C, k))
        U0, V0 = u * scale, v * scale
        if solver == "numba-mu":
            out = mu_from_csr(*batch.csr[b], U0, V0, max_iter, float(tol))
        else:
            out = hals_from_csr(*batch.csr[b], U0, V0, max_iter, float(tol), HALS_WINDOW)
        Ut[b], V[b], iterations[b], errors[b] = out

    # an iteration costs about the item's non-zeros (the products): largest first
    over_items(factorize, (), B, threads, order=sorted(range(B), key=lambda b: -batch.nonzeros[b]))
    factors = [(torch.from_numpy(Ut[b]).view(k, h, w), torch.from_numpy(V[b])) for b in range(B)]
    return MapFactors(factors, iterations.tolist(), errors.tolist())


def warm_up(algorithm: str = "mu") -> None:
    """Compile (or load from numba's disk cache) this path for ``algorithm`` on a tiny map: the
    counts, the CSR and the kernel's entry from a CSR (`nmf.warm_up` calls it with the kernel's)."""
    A = torch.zeros(9, 1, 3)
    A[1, 0, 0] = A[5, 0, 2] = 1.0
    factorize_maps([A], 2, 2, 0.0, 0, True, algorithm, 1)


def compiled(algorithm: str = "mu") -> bool:
    """True when this path is compiled for ``algorithm`` in this process (numba's dispatchers)."""
    from .nmf_numba import hals_from_csr, mu_from_csr

    kernel = hals_from_csr if algorithm == "hals" else mu_from_csr
    return bool(_positive_counts.signatures and _sparse_rows.signatures and kernel.signatures)
