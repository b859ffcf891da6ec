"""Coupled NMF: the raw inputs and every layer's activations over a set, sharing one per-image factor.

Blocks ``M_j (d_j, n) >= 0`` (the inputs D_i and the activations A_j, one column per image) are
factorized as ``M_j ~ W_j F^T`` with ``W_j (d_j, K) >= 0`` per block and one ``F (n, K) >= 0``
shared by all of them, minimizing ``sum_j ||M_j - W_j F^T||_F^2`` with Lee-Seung multiplicative
updates:

    W_j <- W_j * (M_j F) / (W_j F^T F)
    F   <- F * (sum_j M_j^T W_j) / (F sum_j W_j^T W_j)

Each update is the Lee-Seung step of the stacked problem ``[M_1; ...; M_L] ~ [W_1; ...; W_L] F^T``
restricted to one factor, so the objective never increases (Lee & Seung 2001); the blocks stay
separate so that each one's error is reported and no stacked copy is made. The objective is the
plain NMF of the stacked matrix, which is what `benchmarks/bench_analysis.py` compares it with.
Initialization as `descriptors.nmf`: ``abs(normal) * sqrt(mean / K)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["CoupledNMFResult", "coupled_nmf", "normalize_blocks"]

_FLOOR = 1e-12


@dataclass
class CoupledNMFResult:
    """``F (n, K)``, ``W[j] (d_j, K)``; ``rmse`` over every entry of every block, ``block_rmse``
    per block; ``objective`` after each iteration when recorded (else only the last)."""

    F: Tensor
    W: list[Tensor]
    rmse: float
    block_rmse: list[float]
    objective: list[float]
    n_iter: int


def normalize_blocks(blocks: Sequence[Tensor]) -> list[Tensor]:
    """Each block divided by its root-mean-square entry, so that pixels and activations of any
    scale weigh alike and the RMSE is relative (1.0 = the error of predicting all zeros)."""
    out = []
    for j, M in enumerate(blocks):
        rms = float(M.double().square().mean().sqrt())
        if not rms > 0:
            raise ValueError(f"block {j} is all zeros (a dead layer); leave it out")
        out.append(M / rms)
    return out


def _validate(blocks: Sequence[Tensor], k: int) -> int:
    if not blocks:
        raise ValueError("coupled_nmf: no blocks")
    n = blocks[0].shape[1] if isinstance(blocks[0], Tensor) and blocks[0].dim() == 2 else -1
    for j, M in enumerate(blocks):
        if not isinstance(M, Tensor) or M.dim() != 2 or M.shape[1] != n or M.shape[0] < 1:
            raise ValueError(
                f"coupled_nmf: block {j} must be a (features, n) matrix with n = {n} images, "
                f"got {getattr(M, 'shape', type(M).__name__)}"
            )
        if not bool(torch.isfinite(M).all()) or float(M.min()) < 0:
            raise ValueError(f"coupled_nmf: block {j} has negative or non-finite entries")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"coupled_nmf: k must be a positive int, got {k!r}")
    return n


def _objective(blocks: Sequence[Tensor], W: Sequence[Tensor], F: Tensor) -> list[float]:
    return [float((M - Wj @ F.T).double().square().sum()) for M, Wj in zip(blocks, W, strict=True)]


def coupled_nmf(
    blocks: Sequence[Tensor],
    k: int,
    *,
    max_iter: int = 500,
    tol: float = 1e-6,
    seed: int = 0,
    record_objective: bool = False,
    on_iteration: Callable[[int], None] | None = None,
) -> CoupledNMFResult:
    """Factorize ``blocks[j] (d_j, n)`` as ``W_j F^T`` with one shared ``F``. Every 10 iterations
    the run stops when the objective fell by less than ``tol`` x its initial value."""
    n = _validate(blocks, k)
    generator = torch.Generator().manual_seed(seed)
    dtype, device = blocks[0].dtype, blocks[0].device
    mean = sum(float(M.sum()) for M in blocks) / sum(M.numel() for M in blocks)
    scale = math.sqrt(max(mean, 0.0) / k)

    def init(rows: int) -> Tensor:
        return torch.randn(rows, k, generator=generator, dtype=dtype).abs_().mul_(scale).to(device)

    F = init(n)
    W = [init(M.shape[0]) for M in blocks]
    history = [sum(_objective(blocks, W, F))]
    initial = history[0] if history[0] > 0 else 1.0
    previous = history[0]
    it = 0
    for it in range(1, max_iter + 1):
        gram_F = F.T @ F
        W = [Wj * (M @ F) / (Wj @ gram_F).clamp_min(_FLOOR) for M, Wj in zip(blocks, W, strict=True)]
        numerator = sum(M.T @ Wj for M, Wj in zip(blocks, W, strict=True))
        gram_W = sum(Wj.T @ Wj for Wj in W)
        F = F * numerator / (F @ gram_W).clamp_min(_FLOOR)
        if on_iteration is not None:
            on_iteration(it)
        if record_objective:
            history.append(sum(_objective(blocks, W, F)))
        if tol > 0 and it % 10 == 0 and it < max_iter:
            current = history[-1] if record_objective else sum(_objective(blocks, W, F))
            if (previous - current) / initial < tol:
                break
            previous = current
    per_block = _objective(blocks, W, F)
    if not record_objective:
        history = [sum(per_block)]
    entries = sum(M.numel() for M in blocks)
    return CoupledNMFResult(
        F=F,
        W=W,
        rmse=math.sqrt(sum(per_block) / entries),
        block_rmse=[math.sqrt(e / M.numel()) for e, M in zip(per_block, blocks, strict=True)],
        objective=history,
        n_iter=it,
    )
