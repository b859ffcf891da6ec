"""The one post-processing path shared by every method (design steps 4-5):
l2 rows -> PCA-whiten -> l2 rows -> sum over rows -> l2."""

from __future__ import annotations

import numpy as np
import torch

from .whitening import PCAWhitening

__all__ = ["aggregate_rows", "l2_normalize_rows", "row_features"]


def l2_normalize_rows(rows: np.ndarray) -> np.ndarray:
    """Each row divided by its l2 norm; all-zero rows stay zero."""
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def row_features(rows: np.ndarray, whitening: PCAWhitening | None = None) -> np.ndarray:
    """The per-row part of the post-processing: l2 -> whiten -> l2, float32 (zero rows stay zero:
    a factor with an empty heatmap is not turned into ``-mean @ projection``). The re-ranking rows
    (descriptors.rerank) are these; ``aggregate_rows`` sums them."""
    rows = l2_normalize_rows(np.asarray(rows, dtype=np.float32))
    if whitening is not None:
        nonzero = np.any(rows != 0, axis=1, keepdims=True)
        rows = l2_normalize_rows(np.where(nonzero, whitening.apply(rows), np.float32(0.0)))
    return rows.astype(np.float32, copy=False)


def aggregate_rows(rows: np.ndarray | torch.Tensor, whitening: PCAWhitening | None = None) -> np.ndarray:
    """Global descriptor ``(D,)`` float32 from local rows ``(n, C)``: the sum of their
    ``row_features``, l2-normalized. A zero row (e.g. a factor with an empty heatmap) contributes
    nothing."""
    if isinstance(rows, torch.Tensor):
        rows = rows.detach().cpu().numpy()
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"aggregate_rows: rows must be a non-empty (n, C) array, got shape {rows.shape}")
    if not np.isfinite(rows).all():
        raise ValueError("aggregate_rows: rows contain NaN or infinite values")
    summed = row_features(rows, whitening).sum(axis=0)
    norm = float(np.linalg.norm(summed))
    return (summed / norm if norm > 0 else summed).astype(np.float32)
