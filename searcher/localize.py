"""Localization of the query region in the search results (design step 9), for the engine.

Loads each result image from the catalog path, runs the backbone at `image_size` (224 by
default) on the query and the readable results, and calls
`descriptors.localization.colocalize` (joint NMF, factors inside the query box, values
>= 20% of the maximum, the box around them). A result whose image is gone from disk or cannot
be decoded gets no box and `missing=True`; it never fails the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from descriptors.images import ImageDecodeError, decode_image, full_size

from .errors import QueryDeadlineError

Box = tuple[float, float, float, float]


@dataclass
class MatchLocalization:
    box: Box | None
    missing: bool
    size: tuple[int, int]  # (width, height) of the result image, (0, 0) when missing
    heatmap: np.ndarray | None = None
    # with_concepts: the kept query concept with the most mass in this image, and its heatmap
    shared_concept: int | None = None
    shared_concept_heatmap: np.ndarray | None = None


@dataclass
class Concept:
    """One factor of the joint NMF, seen on the query (the "why did this match" view)."""

    index: int
    heatmap: np.ndarray  # (h, w) on the query's localization grid, maximum 1
    kept: bool  # the query box kept it
    weight: float  # its share of the query's reconstruction mass (sums to 1)


@dataclass
class LocalizationResult:
    matches: list[MatchLocalization]
    query_heatmap: np.ndarray | None = None
    concepts: list[Concept] = field(default_factory=list)


class Localizer:
    """Joint-NMF localization with the engine's backbone at a fixed small image size."""

    def __init__(
        self,
        backbone,
        descriptor_config,
        image_size: int = 224,
        k: int | None = None,
        decode: Callable[[str | Path], Image.Image] | None = None,
    ) -> None:
        """`decode(path)`: how result images are read (the engine's: its pixel limit, its decode
        slots, at the localization scale); it raises for an unusable image (the result is then
        reported missing). Default: `decode_image` at the localization scale."""
        self.backbone = backbone
        self.decode = decode or (lambda path: decode_image(path, reduce_to=self.image_size))
        self.descriptor_config = descriptor_config
        self.image_size = int(image_size)
        self.k = int(k if k is not None else getattr(descriptor_config, "k", 4))

    def localize(
        self,
        query: Image.Image,
        query_box: Box | None,
        match_paths: Sequence[str | Path],
        deadline: float | None = None,
        with_heatmaps: bool = False,
        with_concepts: bool = False,
    ) -> LocalizationResult:
        from descriptors.localization import colocalize, colocalize_heatmaps

        # boxes are in full-resolution pixels (a JPEG may have been decoded at a reduced scale)
        width, height = full_size(query)
        box = query_box if query_box is not None else (0.0, 0.0, float(width), float(height))
        images: list[Image.Image | None] = []
        for path in match_paths:
            if deadline is not None and time.monotonic() >= deadline:
                raise QueryDeadlineError(
                    "deadline exceeded while loading result images for localization; allow more time "
                    "(a longer client timeout) or ask for fewer results / no localization"
                )
            try:
                images.append(self.decode(path))
            except (ImageDecodeError, ValueError):  # the engine's decode raises InvalidQueryError
                images.append(None)
        readable = [img for img in images if img is not None]
        tensors = [self.backbone.preprocess(img, self.image_size) for img in [query, *readable]]
        with torch.inference_mode():
            acts = self.backbone.extract(tensors)
        match_whs = [full_size(img) for img in readable]
        query_heatmap, match_heatmaps, found = None, None, None
        if with_heatmaps or with_concepts:
            found = colocalize_heatmaps(
                acts[0], box, (width, height), acts[1:], match_whs, self.k, **self._nmf_options()
            )
            boxes = found.boxes
            if with_heatmaps:
                query_heatmap, match_heatmaps = found.query_heatmap, found.match_heatmaps
        else:
            boxes = colocalize(
                acts[0], box, (width, height), acts[1:], match_whs, self.k, **self._nmf_options()
            )
        matches: list[MatchLocalization] = []
        position = 0
        for img in images:
            if img is None:
                matches.append(MatchLocalization(box=None, missing=True, size=(0, 0)))
                continue
            heatmap = match_heatmaps[position] if match_heatmaps is not None else None
            match = MatchLocalization(boxes[position], False, full_size(img), _normalized(heatmap))
            if with_concepts and found is not None and found.factor_heatmaps is not None:
                match.shared_concept, match.shared_concept_heatmap = _shared_concept(found, position + 1)
            matches.append(match)
            position += 1
        concepts = _query_concepts(found) if with_concepts and found is not None else []
        return LocalizationResult(matches, _normalized(query_heatmap), concepts)

    def _nmf_options(self) -> dict:
        config = self.descriptor_config
        return {
            "max_iter": config.max_iter,
            "tol": config.tol,
            "seed": config.seed,
            "threshold": config.box_threshold,
            "crow_weighting": config.crow_weighting,
        }


def _query_concepts(found) -> list[Concept]:
    if found.factor_heatmaps is None:
        return []
    kept = {int(i) for i in found.kept_factors.tolist()}
    mass = found.factor_mass[0].double()
    total = float(mass.sum())
    return [
        Concept(
            index=i,
            heatmap=_normalized(heatmap),
            kept=i in kept,
            weight=float(mass[i]) / total if total > 0 else 0.0,
        )
        for i, heatmap in enumerate(found.factor_heatmaps[0])
    ]


def _shared_concept(found, image: int) -> tuple[int | None, np.ndarray | None]:
    """The kept query concept with the most mass in image `image` (0 = the query) and its map."""
    kept = [int(i) for i in found.kept_factors.tolist()]
    if not kept:
        return None, None
    best = max(kept, key=lambda i: float(found.factor_mass[image, i]))
    if float(found.factor_mass[image, best]) <= 0:
        return None, None
    return best, _normalized(found.factor_heatmaps[image][best])


def _normalized(heatmap) -> np.ndarray | None:
    if heatmap is None:
        return None
    array = heatmap.detach().cpu().numpy() if isinstance(heatmap, torch.Tensor) else np.asarray(heatmap)
    array = array.astype(np.float32)
    peak = float(array.max()) if array.size else 0.0
    return array / peak if peak > 0 else array
