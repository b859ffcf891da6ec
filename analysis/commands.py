"""The four commands of dff-analyze: load, compute (the pure modules), write PNG + JSON.

Each ``run_*`` takes an `AnalyzeConfig` and returns the JSON it wrote.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .config import AnalyzeConfig
from .report import output_folder, save_figure, save_json, save_npz

__all__ = ["run_concepts", "run_coupled", "run_rank", "run_weights"]

# singular values per layer in weights.json (the FFT definition has n^2 x min(out, in) of them)
JSON_TOP_SINGULAR = 256


def _bar(config: AnalyzeConfig, total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, disable=not config.progress, file=sys.stderr, leave=False)


def _finish(config: AnalyzeConfig, name: str, payload: dict) -> dict:
    save_json(Path(config.out) / f"{name}.json", payload)
    if config.json is not None:
        save_json(config.json, payload)
    return payload


def _load_backbone(config: AnalyzeConfig, randomized: bool = False):
    from descriptors.backbones import load_backbone

    backbone = load_backbone(config.backbone, weights=config.weights, device=config.device)
    if randomized:
        from .rank import randomize_weights

        randomize_weights(backbone.trunk, config.seed)
        backbone.weights_sha256 = "random"
    return backbone


def _decode_all(paths: Sequence[Path], config: AnalyzeConfig, strict: bool) -> tuple[list, list[Path], list[str]]:
    from descriptors.images import ImageDecodeError, decode_image

    images, kept, skipped = [], [], []
    with _bar(config, len(paths), "decoding") as bar:
        for path in paths:
            try:
                images.append(decode_image(path))
                kept.append(Path(path))
            except ImageDecodeError as exc:
                if strict:
                    raise
                skipped.append(str(exc))
            bar.update(1)
    return images, kept, skipped


# ------------------------------------------------------------------------------------------- concepts


def concept_inputs(images: Sequence[str | Path], index: str | Path | None, ids: Sequence[int], config: AnalyzeConfig):
    """Image paths and the backbone/image size to use: the given files, or ``ids`` of an index
    (read-only; the index's own backbone and image size unless the config overrides the size)."""
    if index is None:
        if not images:
            raise ValueError("concepts: give image files or --index INDEX --ids ...")
        return [Path(p) for p in images], config.backbone, config.image_size
    if images:
        raise ValueError("concepts: give image files or --index, not both")
    if not ids:
        raise ValueError("concepts: --index needs --ids (comma-separated image ids)")
    from indexer.open_index import open_index

    with open_index(index) as opened:
        paths = opened.paths(list(ids))
        backbone_name, _, image_size = opened.extractor_config()
    missing = [i for i, p in zip(ids, paths, strict=True) if p is None]
    if missing:
        raise ValueError(f"concepts: id(s) {', '.join(map(str, missing))} are not in the index {index}")
    return [Path(p) for p in paths], backbone_name, config.image_size or image_size


def run_concepts(config: AnalyzeConfig, images: Sequence[str | Path] = (), index=None, ids: Sequence[int] = ()) -> dict:
    from descriptors.backbones import resize_for_backbone, retrieval_image_size

    from .concepts import co_segment
    from .layers import capture_layers
    from .plots import concept_sheet

    paths, backbone_name, image_size = concept_inputs(images, index, ids, config)
    if len(paths) < 1:
        raise ValueError("concepts: no images")
    out = output_folder(config.out)
    config.backbone = backbone_name
    image_size = image_size or retrieval_image_size(backbone_name)
    photos, paths, _ = _decode_all(paths, config, strict=True)
    backbone = _load_backbone(config)
    acts = []
    with _bar(config, len(photos), "activations") as bar:
        for photo in photos:
            x = backbone.preprocess(photo, image_size).unsqueeze(0)
            if config.layer is None:
                acts.append(backbone.extract([x[0]])[0].cpu())
            else:
                acts.append(capture_layers(backbone.trunk, x, [config.layer], call=backbone.forward)[config.layer][0].cpu())
            bar.update(1)
    if any(float(A.min()) < 0 for A in acts):
        acts = [A.clamp_min(0) for A in acts]  # not a post-ReLU layer: its positive part
    result = co_segment(acts, config.k, max_iter=config.max_iter, tol=config.tol, seed=config.seed,
                        crow_weighting=config.crow_weighting)
    shown = [np.asarray(resize_for_backbone(p, min(image_size, 256)), dtype=np.float32) / 255.0 for p in photos]
    titles = [p.name for p in paths]
    save_figure(concept_sheet(shown, result.heatmaps, result.strengths, titles), out / "concepts.png")
    heatmaps_file = save_npz(out / "heatmaps.npz", {f"image_{i}": h.numpy() for i, h in enumerate(result.heatmaps)})
    payload = {
        "k": config.k,
        "backbone": backbone_name,
        "layer": config.layer or backbone.layer,
        "image_size": image_size,
        "rel_error": result.rel_error,
        "heatmaps_file": str(heatmaps_file),
        "sheet": str(out / "concepts.png"),
        "images": [
            {
                "path": str(path),
                "grid": list(heatmap.shape[1:]),
                "strengths": [float(v) for v in strength],
                "heatmaps_key": f"image_{i}",
                "heatmaps": heatmap.tolist(),
            }
            for i, (path, heatmap, strength) in enumerate(zip(paths, result.heatmaps, result.strengths, strict=True))
        ],
    }
    return _finish(config, "concepts", payload)


# ------------------------------------------------------------------------------------------- rank


def run_rank(config: AnalyzeConfig, folder: str | Path, list_only: bool = False) -> dict:
    from descriptors.images import iter_image_files

    from .layers import default_layers, layer_names, resolve_layers
    from .plots import rank_figure
    from .rank import layer_rows, rank_curve

    backbone = _load_backbone(config)
    if list_only:
        return {"layers": layer_names(backbone.trunk)}
    layers = list(config.layers) or list(default_layers(config.backbone))
    resolve_layers(backbone.trunk, layers)  # unknown names fail before any image is read
    files = list(iter_image_files(folder))[: config.max_images]
    if not files:
        raise ValueError(f"rank: no images (jpg/jpeg/png/webp) under {folder}")
    out = output_folder(config.out)
    photos, files, skipped = _decode_all(files, config, strict=False)
    if not photos:
        raise ValueError(f"rank: none of the {len(skipped)} images under {folder} could be decoded")
    image_size = config.image_size or 224
    inputs = [backbone.preprocess(p, image_size) for p in photos]
    variants = {"trained": backbone}
    if config.compare_random:
        variants["random"] = _load_backbone(config, randomized=True)
    payload: dict = {"backbone": config.backbone, "image_size": image_size, "images": len(inputs),
                     "skipped": skipped, "max_rows": config.max_rows}
    curves: dict[str, dict] = {}
    for label, net in variants.items():
        with _bar(config, len(inputs), f"activations ({label})") as bar:
            rows, clipped = layer_rows(net.forward, net.trunk, inputs, layers, max_rows=config.max_rows,
                                       seed=config.seed, progress=bar.update)
        curves[label] = {}
        with _bar(config, len(layers) * len(config.ks), f"NMF ({label})") as bar:
            for name in layers:
                errors = []
                for k in config.ks:
                    errors += rank_curve(rows[name], [k], max_iter=config.max_iter, tol=config.tol, seed=config.seed)
                    bar.update(1)
                curves[label][name] = {"k": list(config.ks), "rel_error": errors, "rows": int(rows[name].shape[0]),
                                       "channels": int(rows[name].shape[1]), "positive_part": name in clipped}
    payload["layers"] = curves["trained"]
    if "random" in curves:
        payload["random"] = curves["random"]
    title = f"{config.backbone}, {len(inputs)} images at {image_size} px (dashed: random weights)"
    save_figure(rank_figure(curves, title), out / "rank.png")
    return _finish(config, "rank", payload)


# ------------------------------------------------------------------------------------------- coupled


def _coupled_run(config: AnalyzeConfig, split, fraction: float, seed: int) -> dict:
    from .coupled import coupled_nmf, normalize_blocks
    from .digits import digits_blocks, train_digits_cnn

    epochs = round(config.epochs / fraction) if config.equal_steps else config.epochs
    with _bar(config, epochs, f"training {100 * fraction:.0f}% seed {seed}") as bar:
        model, accuracy = train_digits_cnn(split, fraction, epochs=config.epochs, seed=seed,
                                           equal_steps=config.equal_steps, on_epoch=lambda _e: bar.update(1))
    named = digits_blocks(model, split.test_x)
    blocks = normalize_blocks(list(named.values()))
    rmse, block_rmse = [], []
    with _bar(config, len(config.ranks), f"coupled NMF {100 * fraction:.0f}%") as bar:
        for k in config.ranks:
            result = coupled_nmf(blocks, k, max_iter=config.max_iter, tol=config.tol, seed=seed)
            rmse.append(result.rmse)
            block_rmse.append(dict(zip(named, result.block_rmse, strict=True)))
            bar.update(1)
    singular = {name: torch.linalg.svdvals(M.double())[: config.top_singular].tolist()
                for name, M in named.items() if name != "input"}
    return {"train_fraction": fraction, "seed": seed, "epochs": epochs, "test_accuracy": accuracy, "ranks": list(config.ranks),
            "rmse": rmse, "block_rmse": block_rmse, "singular_values": singular,
            "blocks": {name: list(M.shape) for name, M in named.items()}}


def run_coupled(config: AnalyzeConfig) -> dict:
    from .digits import load_digits_split
    from .plots import coupled_figure

    if config.model != "digits-cnn":
        raise ValueError(f"coupled: unknown --model {config.model!r}; available: digits-cnn")
    if config.data != "digits":
        raise ValueError(f"coupled: unknown --data {config.data!r}; available: digits (scikit-learn's, offline)")
    if not config.ranks or min(config.ranks) < 1:
        raise ValueError(f"coupled: --ranks must be positive ints, got {config.ranks!r}")
    out = output_folder(config.out)
    split = load_digits_split(seed=0)
    runs = [_coupled_run(config, split, fraction, seed) for seed in config.seeds for fraction in config.train_fractions]
    save_figure(coupled_figure(runs), out / "coupled.png")
    return _finish(config, "coupled", {"model": config.model, "data": config.data, "epochs": config.epochs,
                                       "equal_steps": config.equal_steps,
                                       "max_iter": config.max_iter, "runs": runs})


# ------------------------------------------------------------------------------------------- weights


def run_weights(config: AnalyzeConfig) -> dict:
    from .plots import filters_figure, mp_figure, spectra_figure
    from .weights import DEFINITIONS, conv_layers, layer_spectrum

    if config.definition not in DEFINITIONS:
        raise ValueError(f"weights: --definition must be one of {', '.join(DEFINITIONS)}, got {config.definition!r}")
    if config.fft_size < 1:
        raise ValueError(f"weights: --fft-size must be >= 1, got {config.fft_size}")
    out = output_folder(config.out)
    backbone = _load_backbone(config)
    convs = conv_layers(backbone.trunk)
    if config.layers:
        known = dict(convs)
        unknown = [name for name in config.layers if name not in known]
        if unknown:
            raise ValueError(f"weights: not conv layers of {config.backbone}: {', '.join(unknown)}")
        convs = [(name, known[name]) for name in config.layers]
    spectra = []
    with _bar(config, len(convs), "conv layers") as bar:
        for name, conv in convs:
            spectra.append(layer_spectrum(name, conv, config.definition, config.fft_size, config.n_filters, config.seed))
            bar.update(1)
    save_figure(spectra_figure([s.name for s in spectra], [s.singular_values for s in spectra], config.definition),
                out / "weights_spectra.png")
    panel_names = list(config.mp_panels) or [spectra[i].name for i in np.linspace(0, len(spectra) - 1, min(6, len(spectra))).round().astype(int)]
    by_name = {s.name: s for s in spectra}
    panels = [(n, by_name[n].mp_fit["eigenvalues"], by_name[n].random_eigenvalues, by_name[n].mp_fit,
               by_name[n].mp_ks_statistic, by_name[n].random_mp_ks_statistic) for n in panel_names if n in by_name]
    save_figure(mp_figure(panels), out / "weights_mp.png")
    spatial = [s for s in spectra if s.shape[2] * s.shape[3] > 1][:4]
    if spatial:
        save_figure(filters_figure([(s.name, s.top_filters) for s in spatial]), out / "weights_filters.png")
    payload = {"backbone": config.backbone, "definition": config.definition,
               "fft_size": config.fft_size if config.definition == "fft" else None,
               "layers": [s.to_json(top=JSON_TOP_SINGULAR) for s in spectra]}
    return _finish(config, "weights", payload)
