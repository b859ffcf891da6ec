"""Localization of a query object in other images: NMF co-localization vs sliding-window MAC.

Protocol (design.md "Evaluation protocols"): the queries of one landmark (Oxford/Paris: the
present queries of the landmark, with their boxes; Tiny-ImageNet: the 5 queries of a class)
are cross-matched: for each query, the box is predicted in every other query image of its
group and compared with that image's ground-truth box (IoU; a missing prediction scores 0).

- `nmf-colocalize`: `descriptors.localization.colocalize` — one joint NMF of the query and all
  its matches at 224 px (design step 9).
- `sliding-window-mac`: exhaustive baseline — every axis-aligned window of whole cells on the
  match's feature grid (all sizes and aspect ratios); the window whose MAC vector is most
  cosine-similar to the MAC of the query box's cells wins; its cells are mapped back to pixels.
- `full-image`: the whole match image as the prediction — the floor any method must beat
  (high on Tiny-ImageNet, whose objects fill most of the frame).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from descriptors.backbones import load_backbone
from descriptors.boxes import box_to_grid, grid_cells
from descriptors.localization import colocalize, iou
from evaluation.cache import ActivationCache, Box, ImageRequest
from evaluation.config import EvalConfig
from evaluation.datasets.instance import find_ground_truth
from evaluation.datasets.protocols import Coverage, present_images
from evaluation.datasets.semantic import load_tiny_imagenet
from evaluation.report import EvalReport, MethodResult

LOCALIZATION_DATASETS = ("oxford5k", "paris6k", "roxford5k", "rparis6k", "tiny-imagenet")
LOCALIZATION_METHODS = ("nmf-colocalize", "sliding-window-mac", "full-image")
_TIE = 1e-6


def sliding_window_mac(
    query_act: torch.Tensor,
    query_box: Box,
    query_wh: tuple[int, int],
    match_act: torch.Tensor,
    match_wh: tuple[int, int],
) -> Box:
    """Pixel box in the match of the grid window whose MAC is most cosine-similar to the query box's MAC."""
    qx0, qy0, qx1, qy1 = grid_cells(box_to_grid(query_box, query_wh, tuple(query_act.shape[1:])))
    target = query_act[:, qy0:qy1, qx0:qx1].amax(dim=(1, 2))
    target = target / target.norm().clamp_min(1e-12)
    _, h, w = match_act.shape
    # MAC never decreases when a window grows, so near-ties are common: keep the smallest window
    best, best_area, best_window = -math.inf, math.inf, (0, 0, w, h)
    for y0 in range(h):
        # running max over rows y0..y1-1, then a cumulative max over columns: every window costs O(C)
        rows_max = match_act[:, y0, :].clone()
        for y1 in range(y0 + 1, h + 1):
            if y1 > y0 + 1:
                rows_max = torch.maximum(rows_max, match_act[:, y1 - 1, :])
            for x0 in range(w):
                running = torch.cummax(rows_max[:, x0:], dim=1).values  # (C, w - x0): MAC of [x0, x0 + j + 1)
                sims = (target @ running) / running.norm(dim=0).clamp_min(1e-12)
                for j in range(sims.numel()):
                    sim, area = float(sims[j]), (j + 1) * (y1 - y0)
                    if sim > best + _TIE or (sim >= best - _TIE and area < best_area):
                        best, best_area, best_window = max(sim, best), area, (x0, y0, x0 + j + 1, y1)
    x0, y0, x1, y1 = best_window
    sx, sy = match_wh[0] / w, match_wh[1] / h
    return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)


def _groups_instance(
    dataset: str, root: Path, gnd_path: str | Path | None
) -> tuple[list[list[tuple[Path, Box]]], Coverage]:
    gt = find_ground_truth(dataset, root, gnd_path)
    present = present_images(root / "jpg", gt.qimlist)
    groups: dict[str, list[tuple[Path, Box]]] = {}
    for i, name in enumerate(gt.qimlist):
        if name in present and gt.gnd[i]["bbx"] is not None:
            groups.setdefault(gt.landmarks[i], []).append((root / "jpg" / f"{name}.jpg", gt.gnd[i]["bbx"]))
    usable = [g for _, g in sorted(groups.items()) if len(g) >= 2]
    n_images = len(set().union(*[{p for p, _ in g} for g in usable])) if usable else 0
    return usable, Coverage(sum(len(g) for g in usable), len(gt.qimlist), n_images, len(gt.qimlist))


def _groups_tiny_imagenet(root: Path) -> tuple[list[list[tuple[Path, Box]]], Coverage]:
    ds = load_tiny_imagenet(root)
    groups: dict[str, list[tuple[Path, Box]]] = {}
    for q in ds.queries:
        assert q.box is not None  # every Tiny-ImageNet image has its box
        groups.setdefault(q.label, []).append((ds.images[q.index], q.box))
    usable = [g for _, g in sorted(groups.items()) if len(g) >= 2]
    n = sum(len(g) for g in usable)
    return usable, Coverage(n, ds.queries_total, n, ds.queries_total)


def localize_groups(
    groups: Sequence[Sequence[tuple[Path, Box]]], cache: ActivationCache, k: int, progress: bool | None = None
) -> dict[str, list[float]]:
    """IoU of every (query, other group member) pair for both methods."""
    requests = [ImageRequest(p) for g in groups for p, _ in g]
    cache.ensure(requests, progress=progress, label="localization")
    ious: dict[str, list[float]] = {m: [] for m in LOCALIZATION_METHODS}
    show = sys.stderr.isatty() if progress is None else progress
    for group in tqdm(groups, desc="localization groups", disable=not show):
        loaded = [cache.load(ImageRequest(p)) for p, _ in group]
        for qi, (_, qbox) in enumerate(group):
            others = [j for j in range(len(group)) if j != qi]
            predicted = colocalize(
                loaded[qi].activation,
                qbox,
                loaded[qi].image_wh,
                [loaded[j].activation for j in others],
                [loaded[j].image_wh for j in others],
                k=k,
            )
            for j, box in zip(others, predicted, strict=True):
                truth = group[j][1]
                ious["nmf-colocalize"].append(iou(box, truth))
                window = sliding_window_mac(
                    loaded[qi].activation, qbox, loaded[qi].image_wh, loaded[j].activation, loaded[j].image_wh
                )
                ious["sliding-window-mac"].append(iou(window, truth))
                width, height = loaded[j].image_wh
                ious["full-image"].append(iou((0.0, 0.0, float(width), float(height)), truth))
    return ious


def run_localize(
    dataset: str, root: str | Path, config: EvalConfig, gnd_path: str | Path | None = None
) -> EvalReport:
    """Mean IoU (and share of pairs with IoU >= 0.5) of NMF co-localization and the sliding-window baseline."""
    root = Path(root)
    if dataset == "tiny-imagenet":
        groups, coverage = _groups_tiny_imagenet(root)
    elif dataset in LOCALIZATION_DATASETS:
        groups, coverage = _groups_instance(dataset, root, gnd_path)
    else:
        raise ValueError(
            f"unknown localization dataset {dataset!r}; choose one of {', '.join(LOCALIZATION_DATASETS)}"
        )
    if not groups:
        raise ValueError(
            f"{dataset} under {root}: no landmark/class has two present queries with boxes to cross-match"
        )
    from descriptors.runtimes import use_runtime

    backbone = use_runtime(load_backbone(config.backbone, config.weights, config.device), config.runtime)
    cache = ActivationCache(config.cache_dir, backbone, config.image_size, config.cache_dtype)
    ious = localize_groups(groups, cache, config.k, config.progress)
    results = []
    for method in LOCALIZATION_METHODS:
        values = np.asarray(ious[method])
        scores = {"mean_iou": float(values.mean()), "iou_at_0.5": float((values >= 0.5).mean())}
        results.append(MethodResult(method, config.backbone, None, scores, {"pairs": len(values)}))
    settings = {"image_size": config.image_size, "k": config.k}
    return EvalReport(dataset, "localization (cross-matched queries)", coverage, results, settings)
