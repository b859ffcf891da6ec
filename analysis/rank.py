"""The non-negative rank of activations: how fast the NMF error falls with the rank K.

For each layer, the activation rows of a set of images (positions x channels, stacked over the
images) are factorized at every K; ``rel_error = ||X - UV||_F / ||X||_F``. A layer whose error
falls fast holds few concepts; comparing trained weights with the same architecture at random
initialization shows what training added. Memory and time stay bounded by sampling at most
``max_rows`` rows per layer, spread evenly over the images (seeded).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from descriptors.nmf import nmf

from .layers import activation_matrix, capture_layers

__all__ = ["layer_rows", "randomize_weights", "rank_curve"]


def rank_curve(
    X: Tensor,
    ks: Sequence[int],
    *,
    max_iter: int = 200,
    tol: float = 1e-5,
    seed: int = 0,
    restarts: int = 1,
) -> list[float]:
    """Relative NMF error of ``X (N, C) >= 0`` at each rank in ``ks`` (best of ``restarts`` seeds)."""
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"rank_curve: ks must be positive ints, got {list(ks)!r}")
    if restarts < 1:
        raise ValueError(f"rank_curve: restarts must be >= 1, got {restarts!r}")
    # the error is relative, so X is scaled to unit RMS first: the solver's fixed denominator floor
    # (1e-7) would otherwise stall on tiny activations (deep layers at random initialization)
    rms = float(X.double().square().mean().sqrt())
    if rms > 0:
        X = X / rms
    errors = []
    for k in ks:
        best = math.inf
        for r in range(restarts):
            best = min(best, float(nmf(X, int(k), max_iter=max_iter, tol=tol, seed=seed + r).rel_error[0]))
        errors.append(best)
    return errors


def randomize_weights(module: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialize every parameter (and BatchNorm statistics) of ``module`` in place, with each
    layer's own default initializer: the same architecture at random initialization."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        for sub in module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
    finally:
        torch.random.set_rng_state(generator_state)
    return module


def layer_rows(
    run: Callable[[Tensor], object],
    module: nn.Module,
    images: Sequence[Tensor],
    layers: Sequence[str],
    *,
    max_rows: int = 20000,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Tensor], list[str]]:
    """Activation rows ``(<= max_rows, C)`` per layer over ``images`` (preprocessed ``(3, H, W)``),
    sampled evenly per image; also the layers that had negative values (analysed as ``max(A, 0)``)."""
    if not images:
        raise ValueError("no images to analyse")
    per_image = max(1, math.ceil(max_rows / len(images)))
    generator = torch.Generator().manual_seed(seed)
    rows: dict[str, list[Tensor]] = {name: [] for name in layers}
    clipped: set[str] = set()
    for image in images:
        maps = capture_layers(module, image.unsqueeze(0), layers, call=run)
        for name, A in maps.items():
            X, negative = activation_matrix([A.cpu()])
            if negative:
                clipped.add(name)
            if X.shape[0] > per_image:
                X = X[torch.randperm(X.shape[0], generator=generator)[:per_image]]
            rows[name].append(X)
        if progress is not None:
            progress(1)
    return {name: torch.cat(parts)[:max_rows] for name, parts in rows.items()}, sorted(clipped)
