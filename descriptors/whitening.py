"""PCA-whitening learned on local descriptors (design.md "The method", step 6).

``apply(rows) = (rows - mean) @ projection`` where ``projection = E_D / sqrt(λ_D + shrinkage·mean(λ))``
(the ``D`` leading eigenvectors of the covariance, each scaled so the training rows come out with
unit variance along it when ``shrinkage`` is 0).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from .atomic_files import atomic_write

__all__ = ["InsufficientSamplesError", "PCAWhitening"]

_FORMAT_VERSION = 1
# eigenvalues below this fraction of the largest are treated as this fraction (no division by ~0)
_RELATIVE_EIGENVALUE_FLOOR = 1e-10


class InsufficientSamplesError(ValueError):
    """Too few training rows to learn a whitening of the requested dimension."""

    def __init__(self, needed: int, available: int, dim: int) -> None:
        self.needed = needed
        self.available = available
        self.dim = dim
        super().__init__(
            f"PCA-whitening to {dim} dimensions needs at least {needed} training rows, got {available}; "
            f"add training images, lower the whitening dimension to at most {max(available - 1, 0)}, "
            "or pass allow_clamp=True to reduce it automatically"
        )


@dataclass
class PCAWhitening:
    """``mean (C,)``, ``projection (C, D)`` (whitening scale included), ``eigenvalues (D,)``."""

    mean: np.ndarray
    projection: np.ndarray
    eigenvalues: np.ndarray
    shrinkage: float = 0.0

    @property
    def input_dim(self) -> int:
        return int(self.projection.shape[0])

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    @classmethod
    def fit(
        cls,
        rows: np.ndarray,
        dim: int | None = None,
        shrinkage: float = 0.0,
        *,
        allow_clamp: bool = False,
    ) -> PCAWhitening:
        """Learn from ``rows (N, C)``. ``dim`` defaults to ``min(C, N - 1)``; a ``dim`` that N rows
        cannot support (N < dim + 1) raises ``InsufficientSamplesError`` unless ``allow_clamp``."""
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] == 0:
            raise ValueError(f"PCAWhitening.fit: rows must be a 2-D array (N, C), got shape {rows.shape}")
        if not np.isfinite(rows).all():
            raise ValueError("PCAWhitening.fit: rows contain NaN or infinite values")
        if not shrinkage >= 0:
            raise ValueError(f"PCAWhitening.fit: shrinkage must be >= 0, got {shrinkage!r}")
        n, c = rows.shape
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"PCAWhitening.fit: dim must be a positive int or None, got {dim!r}")
        if dim is not None and dim > c:
            raise ValueError(f"PCAWhitening.fit: dim={dim} exceeds the descriptor dimension C={c}")
        wanted = min(c, n - 1) if dim is None else dim
        if n < 2 or n < wanted + 1:
            if not allow_clamp or n < 2:
                raise InsufficientSamplesError(needed=max(wanted, 1) + 1, available=n, dim=max(wanted, 1))
            wanted = n - 1

        data = rows.astype(np.float64)
        mean = data.mean(axis=0)
        centered = data - mean
        covariance = centered.T @ centered / (n - 1)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        order = np.argsort(eigenvalues)[::-1][:wanted]
        eigenvalues = np.clip(eigenvalues[order], 0.0, None)
        eigenvectors = eigenvectors[:, order]
        # a deterministic sign per eigenvector (largest-magnitude entry positive): same data -> same file
        signs = np.sign(eigenvectors[np.abs(eigenvectors).argmax(axis=0), np.arange(wanted)])
        eigenvectors = eigenvectors * np.where(signs == 0, 1.0, signs)
        floor = max(
            float(eigenvalues.max(initial=0.0)) * _RELATIVE_EIGENVALUE_FLOOR, np.finfo(np.float64).tiny
        )
        scale = np.maximum(eigenvalues + shrinkage * float(eigenvalues.mean()), floor)
        projection = eigenvectors / np.sqrt(scale)[None, :]
        return cls(
            mean=mean.astype(np.float32),
            projection=projection.astype(np.float32),
            eigenvalues=eigenvalues.astype(np.float32),
            shrinkage=float(shrinkage),
        )

    def apply(self, rows: np.ndarray) -> np.ndarray:
        """Whiten ``rows (n, C)`` -> ``(n, D)`` float32."""
        rows = np.asarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.input_dim:
            raise ValueError(
                f"PCAWhitening.apply: expected rows of shape (n, {self.input_dim}), got {rows.shape}"
            )
        # torch's matmul, not numpy's: numpy's OpenBLAS keeps its own spinning thread pool,
        # which on a small CPU fights torch's OpenMP pool (measured: 4 ms instead of 0.05 ms
        # per image right after an OpenBLAS call, and the next conv2d slowed the same way)
        centered = torch.from_numpy(rows - self.mean)
        return (centered @ torch.from_numpy(self.projection)).numpy()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write an ``.npz`` atomically (`descriptors.atomic_files`)."""
        def write(temp: str) -> None:
            with open(temp, "wb") as handle:
                np.savez(
                    handle,
                    format_version=np.int64(_FORMAT_VERSION),
                    mean=self.mean,
                    projection=self.projection,
                    eigenvalues=self.eigenvalues,
                    shrinkage=np.float64(self.shrinkage),
                )

        atomic_write(path, write, suffix=".npz", mkdir=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PCAWhitening:
        """Read a file written by ``save``."""
        with np.load(path, allow_pickle=False) as data:
            missing = {"format_version", "mean", "projection", "eigenvalues"} - set(data.files)
            if missing:
                raise ValueError(f"{path}: not a PCAWhitening file (missing {sorted(missing)})")
            version = int(data["format_version"])
            if version != _FORMAT_VERSION:
                raise ValueError(f"{path}: PCAWhitening format {version}, this code reads {_FORMAT_VERSION}")
            shrinkage = float(data["shrinkage"]) if "shrinkage" in data.files else 0.0
            return cls(
                mean=data["mean"],
                projection=data["projection"],
                eigenvalues=data["eigenvalues"],
                shrinkage=shrinkage,
            )
