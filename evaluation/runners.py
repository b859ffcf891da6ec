"""Instance (Oxford/Paris) and semantic (VOC, Tiny-ImageNet, folders) retrieval runners."""

from __future__ import annotations

from pathlib import Path

from descriptors.backbones import load_backbone
from descriptors.images import IMAGE_EXTENSIONS, iter_image_files
from evaluation.cache import ActivationCache, ImageRequest
from evaluation.config import EvalConfig
from evaluation.datasets.instance import find_ground_truth
from evaluation.datasets.protocols import Coverage, apply_protocol, present_images
from evaluation.datasets.semantic import load_semantic_dataset
from evaluation.encode import MethodEncoder, expand_queries, rank_database
from evaluation.metrics import compute_map, compute_map_revisited, map_at_k
from evaluation.report import EvalReport, MethodResult


class WhiteningLeakError(ValueError):
    """The whitening folder contains an evaluation query image."""


def whitening_images(folder: Path) -> list[Path]:
    files = list(iter_image_files(folder))  # the indexer's walk: hidden files and folders skipped
    if not files:
        raise ValueError(f"--whiten-on {folder}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
    return files


def _make_encoder(config: EvalConfig, image_size: int) -> MethodEncoder:
    from descriptors.runtimes import use_runtime

    backbone = use_runtime(load_backbone(config.backbone, config.weights, config.device), config.runtime)
    cache = ActivationCache(config.cache_dir, backbone, image_size, config.cache_dtype)
    return MethodEncoder(cache, config.methods, k=config.k, progress=config.progress)


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
    encoder = _make_encoder(config, config.image_size)

    db_requests = [ImageRequest(images_dir / f"{n}.jpg") for n in evalset.database]
    query_requests = [ImageRequest(images_dir / f"{q.image}.jpg") for q in evalset.queries]
    whitening = _maybe_whiten(encoder, config, query_requests)
    database = encoder.database(db_requests)
    # leave-one-out queries are full database images: their database descriptors are reused
    queries = encoder.queries_reusing_database(
        query_requests, [q.box for q in evalset.queries], db_requests, database
    )
    position = {n: i for i, n in enumerate(evalset.database)}
    # leave-one-out: the query's own database entry must not feed its expansion
    exclude = [position.get(q.image) if q.box is None else None for q in evalset.queries]
    gnd = evalset.gnd()

    results = []
    for method in config.methods:
        ranking = rank_database(queries[method], database[method])
        for n in config.qe:
            expanded = expand_queries(queries[method], database[method], ranking, n, exclude)
            ranks = (rank_database(expanded, database[method]) if n else ranking).T
            if evalset.revisited:
                split = compute_map_revisited(ranks, gnd)
                scores = {f"map_{k}": v for k, v in split.items()}
            else:
                scores = {"map": compute_map(ranks, gnd).map}
            results.append(MethodResult(method, config.backbone, n, scores))
    settings = {
        "image_size": config.image_size,
        "whitening": whitening,
        "k": config.k,
        "cache": config.cache_dtype,
    }
    return EvalReport(evalset.dataset, evalset.protocol, evalset.coverage, results, settings)


def run_semantic(dataset: str, root: str | Path, config: EvalConfig) -> EvalReport:
    """mAP@`config.at` of every method: relevant = images sharing the query's class, query left out."""
    ds = load_semantic_dataset(dataset, root)
    encoder = _make_encoder(config, config.image_size)
    requests = [ImageRequest(p) for p in ds.images]
    query_requests = [requests[q.index] for q in ds.queries]
    whitening = _maybe_whiten(encoder, config, query_requests)
    database = encoder.database(requests)
    queries = encoder.queries_reusing_database(
        query_requests, [q.box for q in ds.queries], requests, database
    )
    relevant = [ds.relevant(q) for q in ds.queries]
    self_index = [q.index for q in ds.queries]

    results = []
    for method in config.methods:
        ranking = rank_database(queries[method], database[method])
        for n in config.qe:
            expanded = expand_queries(queries[method], database[method], ranking, n, self_index)
            ranks = rank_database(expanded, database[method]) if n else ranking
            rankings = [row[row != q][: config.at] for row, q in zip(ranks, self_index, strict=True)]
            score = map_at_k(rankings, relevant, config.at)
            results.append(MethodResult(method, config.backbone, n, {"map": score}, {"at": config.at}))
    coverage = Coverage(len(ds.queries), ds.queries_total, len(ds.images), ds.images_total)
    settings = {"image_size": config.image_size, "whitening": whitening, "k": config.k, "mAP@": config.at}
    return EvalReport(ds.name, f"semantic mAP@{config.at}", coverage, results, settings)
