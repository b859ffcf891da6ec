"""From activations (or images) to local descriptor rows: one config dataclass, one registry.

``METHODS`` maps a method name to ``fn(acts, config, grid_boxes) -> list[np.ndarray (n, C)]``.
Baselines (``mac spoc gem crow``: 1 row, ``rmac``: one row per region) ignore grid boxes: the
``Extractor`` crops the image for them. The NMF methods (``nmf-v``, ``nmf-vu``) factorize the whole
list in one batched call and, given a grid box, keep only the factors inside it (design step 7).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .aggregate import aggregate_rows
from .boxes import select_factors_in_grid_box
from .factorized import nmf_v_rows, nmf_vu_rows
from .nmf import factorize_activations
from .pooling import crow, gem, mac, rmac_region_vectors, spoc
from .settings import METHOD_NAMES, NMF_METHODS, DescriptorConfig
from .whitening import PCAWhitening

if TYPE_CHECKING:
    from .backbones import Backbone

__all__ = [
    "METHODS",
    "NMF_METHODS",
    "DescriptorConfig",
    "Extractor",
    "crop_rect",
    "local_descriptors",
    "local_descriptors_by_method",
    "rows_from_factors",
]

Box = tuple[float, float, float, float]
MethodFn = Callable[[Sequence[Tensor], "DescriptorConfig", "Sequence[Box | None] | None"], list[np.ndarray]]


def _rows_to_numpy(rows: Tensor) -> np.ndarray:
    return rows.detach().to("cpu", torch.float32).numpy()


def _single_row(pool: Callable[[Tensor, DescriptorConfig], Tensor]) -> MethodFn:
    def method(acts: Sequence[Tensor], config: DescriptorConfig, grid_boxes=None) -> list[np.ndarray]:
        return [_rows_to_numpy(pool(A, config).unsqueeze(0)) for A in acts]

    return method


def _rmac(acts: Sequence[Tensor], config: DescriptorConfig, grid_boxes=None) -> list[np.ndarray]:
    return [_rows_to_numpy(rmac_region_vectors(A, levels=config.rmac_levels)) for A in acts]


def _factorize(acts: Sequence[Tensor], config: DescriptorConfig) -> list[tuple[Tensor, Tensor]]:
    return factorize_activations(
        list(acts),
        config.k,
        max_iter=config.max_iter,
        tol=config.tol,
        seed=config.seed,
        crow_weighting=config.crow_weighting,
        algorithm=config.nmf_algorithm,
    )


def _nmf_settings(config: DescriptorConfig) -> tuple:
    """What decides the factors (nmf-v and nmf-vu with equal settings share them)."""
    return (config.k, config.max_iter, config.tol, config.seed, config.crow_weighting, config.nmf_algorithm)


def rows_from_factors(
    factors: Sequence[tuple[Tensor, Tensor]], config: DescriptorConfig, grid_boxes: Sequence[Box | None] | None = None
) -> list[np.ndarray]:
    """Local rows ``(n, C)`` float32 of each image from its NMF factors ``(U (K, h, w), V (K, C))``:
    the step after the NMF of ``config.method`` (public for benchmarks/bench_descriptors.py's post
    stage, which times what the product runs)."""
    out = []
    for i, (U, V) in enumerate(factors):
        box = grid_boxes[i] if grid_boxes is not None else None
        if box is not None:
            # design step 7: only the K' factors inside the box go through steps 4-5, so
            # V·U mixes the kept factors among themselves, never with the background ones
            chosen = select_factors_in_grid_box(U, box, config.box_threshold)
            U, V = U[chosen], V[chosen]
        if config.method == "nmf-vu":
            size, variance = config.vu_gaussian(tuple(U.shape[1:]))
            rows = nmf_vu_rows(U, V, size=size, variance=variance)
        else:
            rows = nmf_v_rows(V)
        out.append(_rows_to_numpy(rows))
    return out


def _nmf_method(acts: Sequence[Tensor], config: DescriptorConfig, grid_boxes=None) -> list[np.ndarray]:
    return rows_from_factors(_factorize(acts, config), config, grid_boxes)


METHODS: dict[str, MethodFn] = {
    "mac": _single_row(lambda A, cfg: mac(A)),
    "spoc": _single_row(lambda A, cfg: spoc(A)),
    "gem": _single_row(lambda A, cfg: gem(A, p=cfg.gem_p)),
    "crow": _single_row(lambda A, cfg: crow(A)),
    "rmac": _rmac,
    "nmf-v": _nmf_method,
    "nmf-vu": _nmf_method,
}
# the names live in descriptors.settings (importable without torch); the registry must match them
assert tuple(METHODS) == METHOD_NAMES, "descriptors.settings.METHOD_NAMES is out of date"


def _prepare(acts: Sequence[Tensor]) -> list[Tensor]:
    """Float32; on the CPU unless already on CUDA (the NMF runs where its input is)."""
    prepared = []
    for i, A in enumerate(acts):
        if not isinstance(A, Tensor) or A.dim() != 3:
            raise ValueError(
                f"activations[{i}] must be a (C, h, w) tensor, got {getattr(A, 'shape', type(A).__name__)}"
            )
        A = A.detach().float()
        prepared.append(A if A.device.type == "cuda" else A.cpu())
    return prepared


def local_descriptors(
    acts: Sequence[Tensor], config: DescriptorConfig, grid_boxes: Sequence[Box | None] | None = None
) -> list[np.ndarray]:
    """Local descriptor rows ``(n, C)`` float32 for each activation ``(C, h, w)``.

    ``grid_boxes`` (one per activation, in feature-grid cells, or None) restricts the NMF methods to
    the factors inside the box; baselines ignore it (crop before extraction instead).
    """
    if grid_boxes is not None and len(grid_boxes) != len(acts):
        raise ValueError(f"local_descriptors: {len(acts)} activations but {len(grid_boxes)} grid boxes")
    if not acts:
        return []
    return METHODS[config.method](_prepare(acts), config, grid_boxes)


def local_descriptors_by_method(
    acts: Sequence[Tensor],
    configs: Sequence[DescriptorConfig],
    grid_boxes: Sequence[Box | None] | None = None,
) -> list[list[np.ndarray]]:
    """``local_descriptors`` for several configs on the same activations, in one pass: the NMF
    runs once per distinct NMF setting, not once per method (nmf-v and nmf-vu share it)."""
    if grid_boxes is not None and len(grid_boxes) != len(acts):
        raise ValueError(f"local_descriptors: {len(acts)} activations but {len(grid_boxes)} grid boxes")
    if not acts:
        return [[] for _ in configs]
    prepared = _prepare(acts)
    factors_by_setting: dict[tuple, list[tuple[Tensor, Tensor]]] = {}
    out = []
    for config in configs:
        if config.uses_nmf:
            setting = _nmf_settings(config)
            if setting not in factors_by_setting:
                factors_by_setting[setting] = _factorize(prepared, config)
            out.append(rows_from_factors(factors_by_setting[setting], config, grid_boxes))
        else:
            out.append(METHODS[config.method](prepared, config, grid_boxes))
    return out


def crop_rect(box: Sequence[float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Pixel box -> integer crop rectangle (outward rounding), clipped to the image."""
    if len(box) != 4:
        raise ValueError(f"a box is (x0, y0, x1, y1), got {box!r}")
    width, height = size
    x0, y0 = max(0, math.floor(box[0])), max(0, math.floor(box[1]))
    x1, y1 = min(width, math.ceil(box[2])), min(height, math.ceil(box[3]))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {tuple(box)!r} does not overlap the image of size {width}x{height}")
    return x0, y0, x1, y1


class Extractor:
    """Images -> activations -> local rows -> global descriptor, for one backbone and config."""

    def __init__(self, backbone: Backbone, config: DescriptorConfig, image_size: int | None = None) -> None:
        if image_size is None:  # the backbone's measured default (BackboneSpec.retrieval_image_size)
            image_size = backbone.spec.retrieval_image_size
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"Extractor: image_size must be an int >= 8, got {image_size!r}")
        self.backbone = backbone
        self.config = config
        self.image_size = image_size

    def activations(self, images: Sequence[Image.Image]) -> list[Tensor]:
        """Backbone activations ``(C, h, w)`` of each image at ``image_size``."""
        tensors = [self.backbone.preprocess(img, self.image_size) for img in images]
        return self.backbone.extract(tensors) if tensors else []

    def rows_from_activations(
        self,
        acts: Sequence[Tensor],
        image_whs: Sequence[tuple[int, int]],
        boxes: Sequence[Box | None] | None = None,
    ) -> list[np.ndarray]:
        """Rows from activations of images of size ``image_whs``; ``boxes`` (pixels, NMF methods
        only: baselines crop the image before the forward) select factors
        (``descriptors.encode.rows_from_activations``)."""
        from .encode import rows_from_activations

        return rows_from_activations(acts, image_whs, boxes, self.config)

    def local_rows(
        self, images: Sequence[Image.Image], boxes: Sequence[Box | None] | None = None
    ) -> list[np.ndarray]:
        """Local rows of each image; a box (pixels of that image) selects NMF factors on the full
        image, and crops the image for the baselines (``descriptors.encode.backbone_input``)."""
        from .encode import backbone_input
        from .images import full_size

        if boxes is not None and len(boxes) != len(images):
            raise ValueError(f"local_rows: {len(images)} images but {len(boxes)} boxes")
        boxes = list(boxes) if boxes is not None else [None] * len(images)
        planned = [backbone_input(img, box, self.config) for img, box in zip(images, boxes, strict=True)]
        seen = [img for img, _ in planned]
        whs = [full_size(img) for img in seen]
        return self.rows_from_activations(self.activations(seen), whs, [b for _, b in planned])

    def global_descriptor(self, rows: np.ndarray, whitening: PCAWhitening | None = None) -> np.ndarray:
        """l2 -> whiten -> l2 -> sum -> l2 of ``rows`` (``aggregate_rows``)."""
        return aggregate_rows(rows, whitening)
