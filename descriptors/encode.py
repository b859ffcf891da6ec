"""The one encoding of an image, with an optional box, into a global descriptor.

The indexer (no box), the searcher (query box) and ``dff-eval`` (query box) all go through here,
so that a query is encoded the same way whichever program sees it:

- NMF methods forward the *full* image and keep only the factors whose heatmaps lie inside the
  box (design step 7): the box is mapped onto the feature grid (``descriptors.boxes.box_to_grid``);
- the baselines crop the *image* to the box (rounded outward to whole pixels, ``crop_rect``) and
  forward the crop, which the backbone re-scales to its ``image_size`` like any image.

``encode`` does it in one call. The steps are public so that callers can put each on its own
thread pool or cache: ``backbone_input`` (PIL only) -> the backbone's forward (the caller's) ->
``rows_from_activations`` (NMF and pooling) -> ``aggregate_rows`` (l2, whitening, sum, l2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from torch import Tensor

from .aggregate import aggregate_rows
from .boxes import box_to_grid
from .images import FULL_SIZE_KEY, full_size
from .pipeline import DescriptorConfig, crop_rect, local_descriptors_by_method
from .whitening import PCAWhitening

if TYPE_CHECKING:
    from .pipeline import Extractor

__all__ = [
    "backbone_input",
    "crop_to_box",
    "decode_options",
    "encode",
    "rows_by_method",
    "rows_from_activations",
]

Box = tuple[float, float, float, float]


def crop_to_box(image: Image.Image, box: Sequence[float]) -> Image.Image:
    """``image`` cropped to ``box`` (pixels of its ``full_size``: a JPEG decoded at a reduced scale
    is cropped to the same region), rounded outward to whole pixels and clipped to the image."""
    full_w, full_h = full_size(image)
    crop_rect(box, (full_w, full_h))  # "does not overlap the image" in the user's pixels
    sx, sy = image.width / full_w, image.height / full_h
    x0, y0, x1, y1 = (float(v) for v in box)
    cropped = image.crop(crop_rect((x0 * sx, y0 * sy, x1 * sx, y1 * sy), image.size))
    cropped.info.pop(FULL_SIZE_KEY, None)  # the crop is an image of its own, at its own size
    return cropped


def backbone_input(
    image: Image.Image, box: Sequence[float] | None, config: DescriptorConfig
) -> tuple[Image.Image, Box | None]:
    """What the backbone sees for ``(image, box)`` and the box left for the rows.

    NMF methods: the full image and the box, for the factor selection. Baselines: the image
    cropped to the box, and no box left. Boxes are in pixels of ``full_size(image)``, and so are the
    sizes to give ``rows_from_activations`` with the box (``full_size(seen)``).
    """
    if box is None:
        return image, None
    box = tuple(float(v) for v in box)
    if config.uses_nmf:
        crop_rect(box, full_size(image))  # the same "does not overlap the image" check as the baselines
        return image, box
    return crop_to_box(image, box), None


def decode_options(image_size: int, box: Sequence[float] | None, config: DescriptorConfig) -> dict:
    """``decode_image`` keywords for an image encoded at ``image_size`` with ``box``: the JPEG may
    be decoded at a reduced scale as long as what the backbone sees (the crop, for a baseline with
    a box) keeps ``image_size`` pixels on its shorter side."""
    region = tuple(box) if box is not None and not config.uses_nmf else None
    # only the backbone reads it: a colour JPEG may come back as an array (images.RGBPixels)
    return {"reduce_to": int(image_size), "region": region, "pixels": True}


def rows_by_method(
    acts: Sequence[Tensor],
    image_whs: Sequence[tuple[int, int]],
    boxes: Sequence[Box | None] | None,
    configs: Sequence[DescriptorConfig],
) -> list[list[np.ndarray]]:
    """Local rows ``(n, C)`` of each activation for each config (one NMF per NMF setting).

    ``boxes`` are what ``backbone_input`` left: pixels of images of size ``image_whs``, for the NMF
    methods only; a baseline given a box is an error (it must have been cropped before the forward).
    """
    if len(image_whs) != len(acts) or (boxes is not None and len(boxes) != len(acts)):
        raise ValueError(
            f"rows_by_method: {len(acts)} activations, {len(image_whs)} sizes, "
            f"{'no' if boxes is None else len(boxes)} boxes"
        )
    if boxes is None or all(b is None for b in boxes):
        return local_descriptors_by_method(acts, configs)
    baselines = [c.method for c in configs if not c.uses_nmf]
    if baselines:
        raise ValueError(
            f"rows_by_method: {', '.join(baselines)} take no box here; crop the image to the box "
            "before the forward (descriptors.encode.backbone_input)"
        )
    grid_boxes = [
        None if box is None else box_to_grid(box, wh, (A.shape[1], A.shape[2]))
        for A, wh, box in zip(acts, image_whs, boxes, strict=True)
    ]
    return local_descriptors_by_method(acts, configs, grid_boxes)


def rows_from_activations(
    acts: Sequence[Tensor],
    image_whs: Sequence[tuple[int, int]],
    boxes: Sequence[Box | None] | None,
    config: DescriptorConfig,
) -> list[np.ndarray]:
    """``rows_by_method`` for one config."""
    return rows_by_method(acts, image_whs, boxes, [config])[0]


def encode(
    extractor: Extractor,
    image: Image.Image,
    box: Sequence[float] | None = None,
    whitening: PCAWhitening | None = None,
) -> np.ndarray:
    """Global descriptor ``(D,)`` float32 of ``image`` (``decode_image``'s, RGB), restricted to
    ``box`` (pixels of ``full_size(image)``) if given; ``whitening`` is the index's (None: none).
    Decode with ``decode_options(extractor.image_size, box, extractor.config)`` to let a JPEG decode at the scale it needs."""
    seen, rows_box = backbone_input(image, box, extractor.config)
    (activation,) = extractor.activations([seen])
    (rows,) = rows_from_activations([activation], [full_size(seen)], [rows_box], extractor.config)
    return np.asarray(aggregate_rows(rows, whitening), dtype=np.float32)
