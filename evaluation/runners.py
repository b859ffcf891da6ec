"""Instance (Oxford/Paris) and semantic (VOC, Tiny-ImageNet, folders) retrieval runners."""

from __future__ import annotations

from pathlib import Path

from descriptors.backbones import load_backbone
from descriptors.diffusion import DIFFUSION_K
from descriptors.images import IMAGE_EXTENSIONS, iter_image_files
from descriptors.pipeline import NMF_METHODS
from evaluation.cache import ActivationCache, ImageRequest
from evaluation.config import EvalConfig
from evaluation.datasets.instance import find_ground_truth
from evaluation.datasets.protocols import Coverage, apply_protocol, present_images
from evaluation.datasets.semantic import load_semantic_dataset
from evaluation.encode import MethodEncoder, rank_pipeline
from evaluation.metrics import compute_map, compute_map_revisited, map_at_k
from evaluation.report import EvalReport, MethodResult


class WhiteningLeakError(ValueError):
    """The whitening folder contains an evaluation query image."""


def whitening_images(folder: Path) -> list[Path]:
    files = list(iter_image_files(folder))  # the indexer's walk: hidden files and folders skipped
    if not files:
        raise ValueError(f"--whiten-on {folder}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
    return files


def _make_encoder(config: EvalConfig, image_size: int, k: int | None = None, methods=None) -> MethodEncoder:
    from descriptors.runtimes import use_runtime

    backbone = use_runtime(load_backbone(config.backbone, config.weights, config.device), config.runtime)
    cache = ActivationCache(config.cache_dir, backbone, image_size, config.cache_dtype)
    row_dim = config.rerank_dim if any(config.rerank) else None
    return MethodEncoder(
        cache, methods or config.methods, k=config.k if k is None else k, progress=config.progress, row_dim=row_dim
    )


def _sweep(config: EvalConfig) -> list[tuple[int, int, tuple[str, ...]]]:
    """(image size, K, methods) per sweep point: baselines do not depend on K (first K only)."""
    points = []
    for size in config.sweep_sizes():
        for i, k in enumerate(config.sweep_ks()):
            methods = config.methods if i == 0 else tuple(m for m in config.methods if m in NMF_METHODS)
            if methods:
                points.append((size, k, methods))
    return points


def _ranking_variants(config: EvalConfig):
    """(qe, expansion, rerank depth) combinations; QE 0 has no expansion to vary."""
    for depth in config.rerank:
        for n in config.qe:
            for expansion in config.expansion if n else (config.expansion[0],):
                yield n, expansion, depth


def _extra(config: EvalConfig, size: int, k: int, method: str, expansion: str, depth: int, n: int) -> dict:
    extra: dict = {"rerank": depth}
    if n:
        extra["expansion"] = expansion
    if len(config.sweep_sizes()) > 1:
        extra["image_size"] = size
    if len(config.sweep_ks()) > 1 and method in NMF_METHODS:
        extra["k"] = k
    return extra


def _maybe_whiten(encoder: MethodEncoder, config: EvalConfig, query_requests: list[ImageRequest]) -> str:
    if config.whiten_on is None:
        return "none"
    files = whitening_images(Path(config.whiten_on))
    query_shas = {encoder.cache.file_for(r).stem[:64] for r in query_requests}
    leaked = [f for f in files if encoder.cache.file_for(ImageRequest(f)).stem[:64] in query_shas]
    if leaked:
        raise WhiteningLeakError(
            f"--whiten-on {config.whiten_on} contains {len(leaked)} evaluation query image(s) "
            f"(e.g. {leaked[0]}); whitening must never be learned on the queries"
        )
    encoder.fit_whitening([ImageRequest(f) for f in files], config.whiten_dim)
    return f"{Path(config.whiten_on).name} ({len(files)} images)"


def run_instance(
    dataset: str, root: str | Path, config: EvalConfig, gnd_path: str | Path | None = None
) -> EvalReport:
    """mAP of every method (and QE size) on Oxford/Paris, classic or revisited, under `config.protocol`."""
    root = Path(root)
    gt = find_ground_truth(dataset, root, gnd_path)
    images_dir = root / "jpg"
    evalset = apply_protocol(config.protocol, gt, present_images(images_dir, gt.imlist + gt.qimlist))
    db_requests = [ImageRequest(images_dir / f"{n}.jpg") for n in evalset.database]
    query_requests = [ImageRequest(images_dir / f"{q.image}.jpg") for q in evalset.queries]
    position = {n: i for i, n in enumerate(evalset.database)}
    # leave-one-out: the query's own database entry must not feed its expansion
    exclude = [position.get(q.image) if q.box is None else None for q in evalset.queries]
    gnd = evalset.gnd()

    def score(ranking) -> dict:
        if evalset.revisited:
            return {f"map_{k}": v for k, v in compute_map_revisited(ranking.T, gnd).items()}
        return {"map": compute_map(ranking.T, gnd).map}

    results, whitening = _sweep_results(
        config, db_requests, query_requests, [q.box for q in evalset.queries], exclude, score
    )
    return _report(config, evalset.dataset, evalset.protocol, evalset.coverage, results, whitening, cache=config.cache_dtype)


def _report(config: EvalConfig, dataset: str, protocol: str, coverage, results, whitening: str, **settings) -> EvalReport:
    settings = {
        "image_size": ",".join(map(str, config.sweep_sizes())),
        "whitening": whitening,
        "k": ",".join(map(str, config.sweep_ks())),
        **settings,
        "rerank_dim": config.rerank_dim,
    }
    report = EvalReport(dataset, protocol, coverage, results, settings)
    if len(_sweep(config)) > 1:
        report.pick_best()
    return report


def _sweep_results(config, db_requests, query_requests, boxes, exclude, score) -> tuple[list[MethodResult], str]:
    """Every sweep point (image size x K) x method x ranking variant, scored by `score(ranking)`;
    the instance and semantic runners' one loop. Returns (results, whitening description)."""
    results, whitening = [], "none"
    for size, k, methods in _sweep(config):
        encoder = _make_encoder(config, size, k, methods)
        whitening = _maybe_whiten(encoder, config, query_requests)
        database = encoder.database(db_requests)
        # queries that are database images (leave-one-out, semantic) reuse their descriptors
        queries = encoder.queries_reusing_database(query_requests, boxes, db_requests, database)
        results += _evaluate(config, encoder, database, queries, exclude, score, size, k)
    return results, whitening


def _evaluate(config, encoder, database, queries, exclude, score, size, k) -> list[MethodResult]:
    """Every method x ranking variant of one sweep point, scored by `score(ranking)`."""
    from descriptors.diffusion import knn_graph
    from descriptors.rerank import MatchKernel

    kernel = MatchKernel()
    results = []
    for method in encoder.methods:
        affinity = None
        if "diffusion" in config.expansion and any(config.qe):
            affinity = knn_graph(database[method], DIFFUSION_K).affinity()
        for n, expansion, depth in _ranking_variants(config):
            ranking = rank_pipeline(
                queries[method], database[method], qe=n, expansion=expansion, rerank=depth, kernel=kernel,
                query_rows=encoder.query_rows.get(method), database_rows=encoder.database_rows.get(method),
                exclude=exclude, affinity=affinity,
            )
            extra = _extra(config, size, k, method, expansion, depth, n)
            results.append(MethodResult(method, config.backbone, n, score(ranking), extra))
    return results


def run_semantic(dataset: str, root: str | Path, config: EvalConfig) -> EvalReport:
    """mAP@`config.at` of every method: relevant = images sharing the query's class, query left out."""
    ds = load_semantic_dataset(dataset, root)
    requests = [ImageRequest(p) for p in ds.images]
    query_requests = [requests[q.index] for q in ds.queries]
    relevant = [ds.relevant(q) for q in ds.queries]
    self_index = [q.index for q in ds.queries]

    def score(ranks) -> dict:
        rankings = [row[row != q][: config.at] for row, q in zip(ranks, self_index, strict=True)]
        return {"map": map_at_k(rankings, relevant, config.at)}

    results, whitening = _sweep_results(config, requests, query_requests, [q.box for q in ds.queries], self_index, score)
    for result in results:
        result.extra["at"] = config.at
    coverage = Coverage(len(ds.queries), ds.queries_total, len(ds.images), ds.images_total)
    return _report(config, ds.name, f"semantic mAP@{config.at}", coverage, results, whitening, **{"mAP@": config.at})
