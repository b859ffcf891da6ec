"""Quality ablation on the Paris subset (issue 5): every open choice of the method and each
baseline's own settings, on the same cached activations and the same protocols as `dff-eval`.

Prints Markdown tables (docs/results.md, "Ablation"). Protocols (evaluation/datasets/protocols.py):
`landmark-loo` on the revisited ground truth (398 full-image queries: the protocol that decides),
`standard` with the query box (12 queries, revisited Medium and classic). Baseline queries under
`standard` are the image cropped to the box (one forward per crop, as dff-eval); NMF queries keep
the factors inside the box. Activations come from dff-eval's cache (computed on a miss).

    python benchmarks/ablation_quality.py --root $DFF_SHARED_DATA/paris6k-subset [--cache-dir DIR]
        [--studies scale,nmf,baselines,qe,whitening,multiscale,kernels] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from descriptors.aggregate import aggregate_rows, l2_normalize_rows  # noqa: E402
from descriptors.backbones import load_backbone, retrieval_image_size  # noqa: E402
from descriptors.boxes import box_to_grid  # noqa: E402
from descriptors.pipeline import NMF_METHODS, DescriptorConfig, local_descriptors_by_method  # noqa: E402
from descriptors.whitening import PCAWhitening  # noqa: E402
from evaluation.cache import ActivationCache, ImageRequest  # noqa: E402
from evaluation.config import default_cache_dir  # noqa: E402
from evaluation.datasets.instance import find_ground_truth, landmark_of_name  # noqa: E402
from evaluation.datasets.protocols import InstanceEvalSet, apply_protocol, present_images  # noqa: E402
from evaluation.encode import expand_queries, rank_database  # noqa: E402
from evaluation.metrics import compute_map, compute_map_revisited  # noqa: E402

BASELINES = ("mac", "spoc", "gem", "crow", "rmac")
ALL = (*BASELINES, "nmf-v", "nmf-vu")
STUDIES = ("scale", "nmf", "baselines", "qe", "whitening", "multiscale", "kernels")
# the evaluations every variant gets: (name, dataset, protocol)
EVALS = (("loo", "rparis6k", "landmark-loo"), ("std", "rparis6k", "standard"), ("std-classic", "paris6k", "standard"))


class Bench:
    """Activations per image size, evaluation sets, and descriptors of any DescriptorConfig."""

    def __init__(self, root: Path, cache_dir: Path) -> None:
        self.root = root
        self.backbone = load_backbone("efficientnet-lite0")
        self.cache_dir = cache_dir
        self.sets: dict[str, InstanceEvalSet] = {}
        for name, dataset, protocol in EVALS:
            gt = find_ground_truth(dataset, root)
            self.sets[name] = apply_protocol(protocol, gt, present_images(root / "jpg", gt.imlist + gt.qimlist))
        self.images = sorted({n for s in self.sets.values() for n in s.database + [q.image for q in s.queries]})
        self._acts: dict[int, dict[str | tuple, tuple[torch.Tensor, tuple[int, int]]]] = {}

    def _request(self, name: str, box=None) -> ImageRequest:
        return ImageRequest(self.root / "jpg" / f"{name}.jpg", box)

    def acts(self, size: int) -> dict:
        """name -> (activation, image wh), plus (name, box) -> the crop's activation (query crops)."""
        if size not in self._acts:
            cache = ActivationCache(self.cache_dir, self.backbone, size)
            crops = [(q.image, q.box) for q in self.sets["std"].queries + self.sets["std-classic"].queries]
            requests = [self._request(n) for n in self.images] + [self._request(n, b) for n, b in crops]
            cache.ensure(requests, label=f"activations {size}px")
            loaded = {n: cache.load(self._request(n)) for n in self.images}
            loaded |= {(n, tuple(b)): cache.load(self._request(n, b)) for n, b in crops}
            self._acts[size] = {key: (c.activation, c.image_wh) for key, c in loaded.items()}
        return self._acts[size]

    def rows(self, size: int, configs: Sequence[DescriptorConfig]) -> list[dict]:
        """Per config: {'db': name -> rows, 'q': (set, query index) -> rows} (full images for the
        database and LOO queries; box queries as dff-eval makes them)."""
        acts = self.acts(size)
        names = self.images
        full = local_descriptors_by_method([acts[n][0] for n in names], configs)
        out = [{"db": dict(zip(names, rows, strict=True)), "q": {}} for rows in full]
        for set_name in ("std", "std-classic"):
            queries = self.sets[set_name].queries
            q_acts = [acts[q.image][0] for q in queries]
            grid_boxes = [box_to_grid(q.box, acts[q.image][1], tuple(acts[q.image][0].shape[1:])) for q in queries]
            nmf_idx = [i for i, c in enumerate(configs) if c.method in NMF_METHODS]
            base_idx = [i for i, c in enumerate(configs) if c.method not in NMF_METHODS]
            if nmf_idx:
                by = local_descriptors_by_method(q_acts, [configs[i] for i in nmf_idx], grid_boxes)
                for i, rows in zip(nmf_idx, by, strict=True):
                    out[i]["q"].update({(set_name, j): r for j, r in enumerate(rows)})
            if base_idx:
                cropped = [acts[(q.image, tuple(q.box))][0] for q in queries]
                by = local_descriptors_by_method(cropped, [configs[i] for i in base_idx])
                for i, rows in zip(base_idx, by, strict=True):
                    out[i]["q"].update({(set_name, j): r for j, r in enumerate(rows)})
        return out

    def score(
        self, rows: dict, qe: int = 0, whiten: Callable[[str], PCAWhitening | None] | None = None
    ) -> dict[str, float]:
        """Medium mAP of `loo` and `std`, mAP of `std-classic` (percent). `whiten(landmark)` gives the
        whitening for the queries of that landmark (leave-one-landmark-out), or None."""
        out = {}
        for set_name, evalset in self.sets.items():
            groups: dict[str, list[int]] = {}
            for i, q in enumerate(evalset.queries):
                groups.setdefault(q.landmark if whiten else "", []).append(i)
            ranks = np.zeros((len(evalset.database), len(evalset.queries)), dtype=np.int64)
            for landmark, members in groups.items():
                w = whiten(landmark) if whiten else None
                db = np.stack([aggregate_rows(rows["db"][n], w) for n in evalset.database])
                q_rows = [
                    rows["db"][evalset.queries[i].image] if set_name == "loo" else rows["q"][(set_name, i)]
                    for i in members
                ]
                queries = np.stack([aggregate_rows(r, w) for r in q_rows])
                position = {n: j for j, n in enumerate(evalset.database)}
                exclude = [position.get(evalset.queries[i].image) if set_name == "loo" else None for i in members]
                ranking = rank_database(queries, db)
                if qe:
                    ranking = rank_database(expand_queries(queries, db, ranking, qe, exclude), db)
                ranks[:, members] = ranking.T
            gnd = evalset.gnd()
            if evalset.revisited:
                out[set_name] = 100 * compute_map_revisited(ranks, gnd)["medium"]
            else:
                out[set_name] = 100 * compute_map(ranks, gnd).map
        return out


def _table(title: str, header: Sequence[str], lines: list[list[str]]) -> None:
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for line in lines:
        print("| " + " | ".join(line) + " |")
    sys.stdout.flush()


def _fmt(score: dict[str, float], keys=("loo", "std", "std-classic")) -> list[str]:
    return [f"{score[k]:.1f}" for k in keys]


def study_scale(bench: Bench, sizes: Sequence[int]) -> None:
    configs = [DescriptorConfig(method=m) for m in ALL]
    loo, std = [], []
    for size in sizes:
        scores = [bench.score(r) for r in bench.rows(size, configs)]
        loo.append([f"{size}", *(f"{s['loo']:.1f}" for s in scores)])
        std.append([f"{size}", *(f"{s['std']:.1f}" for s in scores)])
    _table("Image scale (smaller side): landmark-LOO, revisited Medium mAP", ["px", *ALL], loo)
    _table("Image scale: standard (box queries), revisited Medium mAP", ["px", *ALL], std)


def study_nmf(bench: Bench, size: int) -> None:
    base = DescriptorConfig()
    variants: list[tuple[str, dict]] = [
        ("defaults (K 4, 100 it, CroW channel weights, sigma 0.5 x grid, box 0.75)", {}),
        ("K = 2", {"k": 2}),
        ("K = 8", {"k": 8}),
        ("K = 12", {"k": 12}),
        ("K = 16", {"k": 16}),
        ("25 iterations", {"max_iter": 25}),
        ("50 iterations", {"max_iter": 50}),
        ("200 iterations", {"max_iter": 200}),
        ("no CroW channel weighting before the NMF", {"crow_weighting": False}),
        ("NMF seed 1", {"seed": 1}),
        ("V·U Gaussian: the design's fixed 13 x 13, variance 2", {"gaussian_sigma_of_grid": None}),
        ("V·U Gaussian sigma 0.1 x grid", {"gaussian_sigma_of_grid": 0.1}),
        ("V·U Gaussian sigma 0.3 x grid", {"gaussian_sigma_of_grid": 0.3}),
        ("V·U Gaussian sigma 1.0 x grid", {"gaussian_sigma_of_grid": 1.0}),
        ("box threshold 0.5", {"box_threshold": 0.5}),
        ("box threshold 0.9", {"box_threshold": 0.9}),
    ]
    lines = []
    for label, change in variants:
        configs = [dataclasses.replace(base, method=m, **change) for m in ("nmf-v", "nmf-vu")]
        scores = [(bench.score(r), bench.score(r, qe=5)) for r in bench.rows(size, configs)]
        cells = []
        for plain, expanded in scores:
            cells += [f"{plain['loo']:.1f}", f"{expanded['loo']:.1f}", f"{plain['std']:.1f}", f"{plain['std-classic']:.1f}"]
        lines.append([label, *cells])
    header = ["setting (one change from the defaults)"]
    for m in ("V", "V·U"):
        header += [f"{m} LOO", f"{m} LOO QE5", f"{m} std", f"{m} std classic"]
    _table(f"NMF settings at {size} px (Medium mAP; classic: mAP)", header, lines)


def study_baselines(bench: Bench, size: int) -> None:
    variants = [
        ("R-MAC levels 1", DescriptorConfig(method="rmac", rmac_levels=1)),
        ("R-MAC levels 2", DescriptorConfig(method="rmac", rmac_levels=2)),
        ("R-MAC levels 3 (default)", DescriptorConfig(method="rmac")),
        ("R-MAC levels 4", DescriptorConfig(method="rmac", rmac_levels=4)),
        ("GeM p 2", DescriptorConfig(method="gem", gem_p=2.0)),
        ("GeM p 3 (default)", DescriptorConfig(method="gem")),
        ("GeM p 4", DescriptorConfig(method="gem", gem_p=4.0)),
    ]
    rows = bench.rows(size, [c for _, c in variants])
    lines = [[label, *_fmt(bench.score(r))] for (label, _), r in zip(variants, rows, strict=True)]
    _table(f"Baseline settings at {size} px", ["setting", "LOO Medium", "std Medium", "std classic"], lines)


def study_qe(bench: Bench, size: int, depths: Sequence[int] = (0, 1, 2, 3, 5, 10)) -> None:
    rows = bench.rows(size, [DescriptorConfig(method=m) for m in ALL])
    lines = [[m, *(f"{bench.score(r, qe=n)['loo']:.1f}" for n in depths)] for m, r in zip(ALL, rows, strict=True)]
    _table(f"Query-expansion depth at {size} px: landmark-LOO Medium mAP", ["method", *map(str, depths)], lines)


def study_whitening(bench: Bench, size: int, dims: Sequence[int] = (128, 256), shrinkage: float = 0.1) -> None:
    """PCA-whitening learned, for the queries of landmark L, on the rows of the images of the
    *other* landmarks (by image name; `general` left out): the closest to the thesis's setting
    (whitening learned on the other landmark dataset) that the data here allows."""
    methods = ("gem", "crow", "rmac", "nmf-v", "nmf-vu")
    rows = bench.rows(size, [DescriptorConfig(method=m) for m in methods])
    lines = []
    for m, r in zip(methods, rows, strict=True):
        cells = [f"{bench.score(r)['loo']:.1f}"]
        for dim in dims:
            fitted: dict[str, PCAWhitening] = {}

            def whiten(landmark: str, r=r, dim=dim, fitted=fitted) -> PCAWhitening:
                if landmark not in fitted:
                    train = [x for n, x in r["db"].items() if landmark_of_name(n) not in (landmark, "general")]
                    stacked = l2_normalize_rows(np.concatenate(train))
                    fitted[landmark] = PCAWhitening.fit(stacked[np.any(stacked != 0, axis=1)], dim, shrinkage)
                return fitted[landmark]

            cells.append(f"{bench.score(r, whiten=whiten)['loo']:.1f}")
        lines.append([m, *cells])
    header = ["method", "none", *(f"d {d}, shrinkage {shrinkage}" for d in dims)]
    _table(f"Leave-one-landmark-out PCA-whitening at {size} px: landmark-LOO Medium mAP", header, lines)


def study_multiscale(bench: Bench, scales: Sequence[int], size: int) -> None:
    """The rows of every scale aggregated together (one-row methods: the sum of the per-scale
    descriptors, as cirtorch's multi-scale; R-MAC: all regions of all scales)."""
    per_scale = {s: bench.rows(s, [DescriptorConfig(method=m) for m in ALL]) for s in scales}
    lines = []
    for i, m in enumerate(ALL):
        single = bench.score(per_scale[size][i])["loo"]
        # the rows of every scale in one set: aggregate_rows sums the l2-normalized rows of all scales
        merged = {"db": {n: np.concatenate([per_scale[s][i]["db"][n] for s in scales]) for n in bench.images}}
        score = _score_loo_only(bench, merged)
        lines.append([m, f"{single:.1f}", f"{score:.1f}"])
    _table(
        f"Multi-scale: landmark-LOO Medium mAP, {size} px vs {'+'.join(map(str, scales))} px",
        ["method", f"{size}", "+".join(map(str, scales))],
        lines,
    )


# similarity of two images from their l2-normalized rows: S = rows_q @ rows_d.T (n_q x n_d)
MATCH_KERNELS: dict[str, Callable[[np.ndarray], float]] = {
    "cosine of the aggregated descriptors (the index)": lambda S: float("nan"),  # computed globally
    "max-match, both directions": lambda S: 0.5 * (S.max(axis=1).mean() + S.max(axis=0).mean()),
    "polynomial, sum of cos^3": lambda S: float((S**3).sum()),
    "polynomial, sum of cos^9": lambda S: float((S**9).sum()),
}


def study_kernels(bench: Bench, size: int) -> None:
    """Exploratory: image similarity from the rows themselves (a multi-vector match kernel, as
    ASMK or regional cross-matching) instead of the cosine of the aggregated vectors. Not in the
    index (it would keep every image's rows for a re-ranking stage); shows whether the rows of
    the NMF carry more than their sum, with R-MAC's regions given the same kernels."""
    methods = ("rmac", "nmf-v", "nmf-vu")
    rows = bench.rows(size, [DescriptorConfig(method=m) for m in methods])
    evalset = bench.sets["loo"]
    lines = []
    for m, r in zip(methods, rows, strict=True):
        normalized = {n: l2_normalize_rows(x) for n, x in r["db"].items()}
        cells = []
        for label, kernel in MATCH_KERNELS.items():
            if label.startswith("cosine"):
                cells.append(f"{_score_loo_only(bench, r):.1f}")
                continue
            scores = np.array(
                [[kernel(normalized[q.image] @ normalized[n].T) for n in evalset.database] for q in evalset.queries]
            )
            ranks = np.argsort(-scores, axis=1, kind="stable").T
            cells.append(f"{100 * compute_map_revisited(ranks, evalset.gnd())['medium']:.1f}")
        lines.append([m, *cells])
    _table(f"Match kernels on the rows at {size} px (exploratory): landmark-LOO Medium mAP", ["rows", *MATCH_KERNELS], lines)


def _score_loo_only(bench: Bench, rows: dict) -> float:
    evalset = bench.sets["loo"]
    db = np.stack([aggregate_rows(rows["db"][n]) for n in evalset.database])
    queries = np.stack([aggregate_rows(rows["db"][q.image]) for q in evalset.queries])
    ranks = rank_database(queries, db).T
    return 100 * compute_map_revisited(ranks, evalset.gnd())["medium"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "paris6k-subset")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--studies", default=",".join(STUDIES), help=",".join(STUDIES))
    parser.add_argument("--sizes", default="256,320,362,416,512", help="scale study sizes")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    studies = [s for s in args.studies.split(",") if s]
    unknown = sorted(set(studies) - set(STUDIES))
    if unknown:
        parser.error(f"unknown studies {unknown}; choose from {', '.join(STUDIES)}")
    if not (args.root / "jpg").is_dir():
        parser.error(f"{args.root} has no jpg/ folder (the Paris subset: docs/data.md)")
    torch.set_num_threads(args.threads)
    bench = Bench(args.root, args.cache_dir or default_cache_dir())
    size = retrieval_image_size("efficientnet-lite0")
    started = time.perf_counter()
    print(f"# Paris-subset ablation, efficientnet-lite0, default size {size} px")
    for name, evalset in bench.sets.items():
        print(f"- `{name}`: {evalset.dataset} {evalset.protocol}, {evalset.coverage}")
    if "scale" in studies:
        study_scale(bench, [int(s) for s in args.sizes.split(",")])
    if "nmf" in studies:
        study_nmf(bench, size)
    if "baselines" in studies:
        study_baselines(bench, size)
    if "qe" in studies:
        study_qe(bench, size)
    if "whitening" in studies:
        study_whitening(bench, size)
    if "multiscale" in studies:
        study_multiscale(bench, (256, 320, 362), size)
    if "kernels" in studies:
        study_kernels(bench, size)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
