"""The one post-processing path shared by every method (design steps 4-5):
l2 rows -> PCA-whiten -> l2 rows -> sum over rows -> l2."""

from __future__ import annotations

import numpy as np
import torch

from .whitening import PCAWhitening

__all__ = ["aggregate_rows", "l2_normalize_rows"]


def l2_normalize_rows(rows: np.ndarray) -> np.ndarray:
    """Each row divided by its l2 norm; all-zero rows stay zero."""
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def aggregate_rows(rows: np.ndarray | torch.Tensor, whitening: PCAWhitening | None = None) -> np.ndarray:
    """Global descriptor ``(D,)`` float32 from local rows ``(n, C)``.

    A zero row (e.g. a factor with an empty heatmap) contributes nothing: it is kept at zero
    through the whitening instead of becoming ``-mean @ projection``.
    """
    if isinstance(rows, torch.Tensor):
        rows = rows.detach().cpu().numpy()
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ValueError(f"aggregate_rows: rows must be a non-empty (n, C) array, got shape {rows.shape}")
    if not np.isfinite(rows).all():
        raise ValueError("aggregate_rows: rows contain NaN or infinite values")
    rows = l2_normalize_rows(rows)
    if whitening is not None:
        nonzero = np.any(rows != 0, axis=1, keepdims=True)
        rows = np.where(nonzero, whitening.apply(rows), np.float32(0.0))
        rows = l2_normalize_rows(rows)
    summed = rows.sum(axis=0)
    norm = float(np.linalg.norm(summed))
    return (summed / norm if norm > 0 else summed).astype(np.float32)
