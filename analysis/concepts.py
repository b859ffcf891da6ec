"""Concept co-segmentation of an image set (deep feature factorization over a set).

One NMF of the activation rows of all the images together (``X (sum of h*w, C) ~ U V``, the
same joint factorization `descriptors.localization.colocalize` runs for localization): the K
rows of V are concepts shared by the set, and each image's slice of U holds where each concept
sits in that image. Heatmaps are scaled by ``||V_k||`` so that they are comparable across
concepts; a concept's mask keeps the cells >= ``threshold_of_max`` times that concept's maximum
over the *whole set* (an image without the concept gets an empty mask, CAM rule otherwise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from descriptors.crow import crow_channel_weights
from descriptors.localization import DEFAULT_THRESHOLD_OF_MAX
from descriptors.nmf import nmf

__all__ = ["ConceptSet", "co_segment", "concept_masks", "mask_iou"]


@dataclass
class ConceptSet:
    """``heatmaps[i] (K, h_i, w_i)`` per image, ``strengths (n, K)`` (each image's share of its
    activation energy per concept, rows summing to 1), ``concepts (K, C)`` = V, ``rel_error``."""

    heatmaps: list[Tensor]
    strengths: np.ndarray
    concepts: Tensor
    rel_error: float


def co_segment(
    acts: Sequence[Tensor],
    k: int,
    *,
    max_iter: int = 300,
    tol: float = 1e-5,
    seed: int = 0,
    crow_weighting: bool = False,
) -> ConceptSet:
    """Joint NMF over the activation maps ``acts[i] (C, h_i, w_i)`` of a set of images."""
    if not acts:
        raise ValueError("co_segment: no activations (need at least one image)")
    channels = acts[0].shape[0] if isinstance(acts[0], Tensor) else None
    for i, A in enumerate(acts):
        if not isinstance(A, Tensor) or A.dim() != 3 or A.shape[0] != channels:
            raise ValueError(
                f"co_segment: activation {i} must be (C, h, w) with C = {channels}, "
                f"got {getattr(A, 'shape', type(A).__name__)}"
            )
    rows = torch.cat([A.flatten(1) for A in acts], dim=1).transpose(0, 1)  # (sum h*w, C)
    if crow_weighting:
        rows = rows * crow_channel_weights(rows.transpose(0, 1).unsqueeze(-1)).unsqueeze(0)
    result = nmf(rows, k, max_iter=max_iter, tol=tol, seed=seed)
    U, V = result.U[0], result.V[0]
    scale = torch.linalg.vector_norm(V, dim=1)  # U V = (U diag(s)) (diag(1/s) V)
    U = U * scale.unsqueeze(0)
    V = V / torch.where(scale > 0, scale, torch.ones_like(scale)).unsqueeze(1)
    heatmaps, strengths, start = [], [], 0
    for A in acts:
        h, w = A.shape[1:]
        part = U[start : start + h * w]
        start += h * w
        heatmaps.append(part.transpose(0, 1).reshape(k, h, w).contiguous())
        energy = part.sum(dim=0).double()
        total = float(energy.sum())
        strengths.append((energy / total if total > 0 else energy).numpy())
    return ConceptSet(heatmaps, np.stack(strengths), V, float(result.rel_error[0]))


def concept_masks(
    heatmaps: Sequence[Tensor], threshold_of_max: float = DEFAULT_THRESHOLD_OF_MAX
) -> list[np.ndarray]:
    """Per image a bool ``(K, h, w)`` mask: cells >= ``threshold_of_max`` x the concept's
    maximum over every image of the set."""
    if not 0.0 < threshold_of_max <= 1.0:
        raise ValueError(f"concept_masks: threshold_of_max must be in (0, 1], got {threshold_of_max!r}")
    peaks = torch.stack([h.flatten(1).amax(dim=1) for h in heatmaps]).amax(dim=0)  # (K,)
    cut = (threshold_of_max * peaks)[:, None, None]
    return [((h >= cut) & (h > 0)).cpu().numpy() for h in heatmaps]


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks of the same shape (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"mask_iou: shapes differ, {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
