"""CroW weights (Kalantidis et al. 2016), as specified in design.md "The method", step 2.

Pure functions on non-negative activations ``A`` of shape ``(C, h, w)`` or ``(B, C, h, w)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["channel_weights_from_counts", "crow_channel_weights", "crow_spatial_weights"]


def _check_activations(A: Tensor, name: str) -> None:
    if not isinstance(A, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(A).__name__}")
    if A.dim() not in (3, 4):
        raise ValueError(f"{name}: expected activations of shape (C,h,w) or (B,C,h,w), got {tuple(A.shape)}")
    if A.shape[-1] == 0 or A.shape[-2] == 0 or A.shape[-3] == 0:
        raise ValueError(f"{name}: activations have an empty dimension: {tuple(A.shape)}")


def crow_channel_weights(A: Tensor) -> Tensor:
    """Channel weights ``w_c = log(sum_j Q_j / Q_c)`` with ``Q_c`` the fraction of positions where
    ``A[c] > 0``; ``w_c = 0`` for channels that are never positive (their column of X is zero anyway).

    Returns ``(C,)`` for ``(C,h,w)`` input and ``(B, C)`` for ``(B,C,h,w)`` input, in A's dtype.
    """
    _check_activations(A, "crow_channel_weights")
    dtype = A.dtype if A.is_floating_point() else torch.float32
    counts = (A > 0).sum(dim=(-2, -1), dtype=torch.int32)
    return channel_weights_from_counts(counts, A.shape[-1] * A.shape[-2], dtype)


def channel_weights_from_counts(counts: Tensor, positions: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """`crow_channel_weights` from ``counts (..., C)`` int32, the number of positions (of
    ``positions``) where each channel is > 0: the NMF's compiled path counts in its kernel threads
    (descriptors/nmf_inputs.py) and gets the very same weights from here."""
    # Q_c: share of spatial positions where channel c fires, as count / (h*w) (what .mean() of the
    # 0/1 floats computes, exactly, in a third of the time: no float copy of the indicator)
    q = counts.to(dtype) / positions
    total = q.sum(dim=-1, keepdim=True)
    positive = q > 0
    # where(...) on the argument keeps log() away from 0/0 and x/0, so no NaN/inf appears anywhere
    ratio = torch.where(positive, total / torch.where(positive, q, torch.ones_like(q)), torch.ones_like(q))
    return torch.where(positive, torch.log(ratio), torch.zeros_like(q))


def crow_spatial_weights(A: Tensor) -> Tensor:
    """Spatial weights ``S = (sum_c A / ||sum_c A||_2) ** (1/2)`` (design.md's formula).

    Returns ``(h, w)`` for ``(C,h,w)`` input and ``(B, h, w)`` for ``(B,C,h,w)`` input; an all-zero
    map gives all-zero weights instead of NaN.
    """
    _check_activations(A, "crow_spatial_weights")
    dtype = A.dtype if A.is_floating_point() else torch.float32
    summed = A.to(dtype).sum(dim=-3)
    norm = torch.linalg.vector_norm(summed.flatten(-2), dim=-1)[..., None, None]
    safe_norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    return torch.sqrt((summed / safe_norm).clamp_min(0))
