"""The manifest: everything needed to rebuild the index's extractor at query time, plus counts.

`build_extractor(manifest)` makes the query-time extractor; `check_manifest_matches` refuses an
extractor (or an `add`) whose settings differ, naming the setting.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from .config import FORMAT_VERSION, READABLE_FORMAT_VERSIONS, IndexConfig
from .errors import IndexFormatError, ManifestMismatchError
from .storage import atomic_write_json

MANIFEST_NAME = "manifest.json"
FAISS_NAME = "index.faiss"
WHITENING_NAME = "whitening.npz"
CATALOG_NAME = "catalog.sqlite"
VECTORS_NAME = "vectors.npy"  # the build's segment: float32 (next_id, dim), row = id
UPLOADS_NAME = "uploads"
SEGMENTS_DIR = "segments"  # appended segments and tombstones, one pair of files per generation


def make_manifest(
    config: IndexConfig,
    backbone,
    descriptor_config,
    *,
    source_root: str,
    dim: int,
    factory: str,
    search_params: str,
    whitening_info: dict | None,
    counts: dict,
    next_id: int,
    generation: int = 1,
) -> dict:
    """A manifest for generation `generation` whose vectors are the one segment `vectors.npy`
    (rows 0..next_id-1, row = id) and whose FAISS checkpoint is `index.faiss`."""
    now = time.time()
    return {
        "format_version": FORMAT_VERSION,
        "created_at": now,
        "updated_at": now,
        "source_root": source_root,
        "backbone": {
            "name": backbone.name,
            "layer": backbone.layer,
            "channels": backbone.channels,
            "stride": backbone.stride,
            "weights_sha256": backbone.weights_sha256,
            "weights": config.weights,
            "reflection_padding": config.reflection_padding,
            "runtime": getattr(backbone, "runtime", "torch"),  # descriptors.runtimes; searcher uses it too
        },
        "image_size": config.image_size,
        "max_pixels": config.max_pixels,
        "descriptor": asdict(descriptor_config),
        "whitening": whitening_info or {"dim": 0},
        "dim": dim,
        "metric": "inner_product",
        "faiss": {"factory": factory, "search_params": search_params, "file": FAISS_NAME, "generation": generation},
        "counts": counts,
        "next_id": next_id,
        "generation": generation,
        "segments": [
            {"generation": generation, "first_id": 0, "count": next_id, "files": {"vectors": VECTORS_NAME}}
        ],
        "tombstones": [],
    }


def _as_generations(manifest: dict) -> dict:
    """A format-1 manifest seen as format 2: generation 0, `index.faiss` its checkpoint,
    `vectors.npy` its one segment (`count` None: the file's row count), no tombstones."""
    if "generation" in manifest:
        return manifest
    out = dict(manifest)
    out["generation"] = 0
    out["faiss"] = dict(manifest["faiss"], file=FAISS_NAME, generation=0)
    out["segments"] = [{"generation": 0, "first_id": 0, "count": None, "files": {"vectors": VECTORS_NAME}}]
    out["tombstones"] = []
    return out


def read_manifest(index_dir: str | Path) -> dict:
    path = Path(index_dir) / MANIFEST_NAME
    if not path.is_file():
        raise IndexFormatError(f"{index_dir} is not an index directory (no {MANIFEST_NAME}); build one with dff-index build")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{path}: unreadable manifest ({exc})") from exc
    version = manifest.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        raise IndexFormatError(
            f"{path}: format version {version!r}, this dffsearch reads versions "
            f"{', '.join(map(str, READABLE_FORMAT_VERSIONS))} (writes {FORMAT_VERSION}); rebuild the index"
        )
    return _as_generations(manifest)


def write_manifest(index_dir: str | Path, manifest: dict) -> None:
    atomic_write_json(Path(index_dir) / MANIFEST_NAME, manifest)


# Descriptor settings that manifests written before they existed do not record, with the value
# that reproduces those indexes' vectors (not the current default).
LEGACY_DESCRIPTOR_SETTINGS = {"gaussian_sigma_of_grid": None, "nmf_algorithm": "mu"}


def descriptor_config_from(manifest: dict):
    from descriptors.settings import DescriptorConfig

    fields = set(DescriptorConfig.__dataclass_fields__)
    # settings added after an index was built take the value that reproduces its vectors
    stored = LEGACY_DESCRIPTOR_SETTINGS | manifest["descriptor"]
    unknown = sorted(set(stored) - fields)
    if unknown:
        raise IndexFormatError(f"manifest descriptor settings {unknown} are unknown to this dffsearch; rebuild the index")
    return DescriptorConfig(**stored)


def build_extractor(manifest: dict, device: str = "cpu", weights: str | None = None, backbone=None):
    """The `descriptors.pipeline.Extractor` that produced the index's vectors.

    `weights` overrides the weights file recorded in the manifest (same sha256 required);
    `backbone` reuses an already loaded one (it is checked like the rest).
    """
    from descriptors.backbones import load_backbone
    from descriptors.pipeline import Extractor

    info = manifest["backbone"]
    if backbone is None:
        backbone = load_backbone(
            info["name"],
            weights=weights or info.get("weights"),
            device=device,
            reflection_padding=bool(info.get("reflection_padding", False)),
        )
    _use_manifest_runtime(backbone, info.get("runtime", "torch"))
    extractor = Extractor(backbone, descriptor_config_from(manifest), image_size=int(manifest["image_size"]))
    check_manifest_matches(manifest, extractor)
    return extractor


def _use_manifest_runtime(backbone, runtime: str) -> None:
    """The runtime the index was built with (same activations up to 1e-3); torch when it is not
    installed here or the device is not a CPU."""
    import logging

    from descriptors.runtimes import RuntimeUnavailableError, use_runtime

    if getattr(backbone, "runtime", "torch") == runtime:
        return
    try:
        use_runtime(backbone, runtime)
    except (RuntimeUnavailableError, ValueError) as exc:
        logging.getLogger("dffsearch").warning("index built with runtime %s; using torch here: %s", runtime, exc)
        use_runtime(backbone, "torch")


def extractor_settings(extractor) -> dict:
    """The settings of an extractor, flattened like `manifest_settings`."""
    backbone = extractor.backbone
    out = {
        "backbone": backbone.name,
        "weights_sha256": backbone.weights_sha256,
        "layer": backbone.layer,
        "image_size": int(extractor.image_size),
    }
    return out | _descriptor_settings(asdict(extractor.config))


def _descriptor_settings(stored: dict) -> dict:
    """The method first (the most telling difference), then its parameters in name order."""
    out = {"descriptor": stored.get("method")}
    for key in sorted(stored):
        if key != "method":
            out[f"descriptor.{key}"] = stored[key]
    return out


def manifest_settings(manifest: dict) -> dict:
    info = manifest["backbone"]
    out = {
        "backbone": info["name"],
        "weights_sha256": info["weights_sha256"],
        "layer": info["layer"],
        "image_size": int(manifest["image_size"]),
    }
    return out | _descriptor_settings(manifest["descriptor"])


def check_manifest_matches(manifest: dict, extractor, index_dir: str | Path = "") -> None:
    """Raise `ManifestMismatchError` naming the first setting on which they differ."""
    mine = manifest_settings(manifest)
    theirs = extractor_settings(extractor)
    for key in [*mine, *(k for k in theirs if k not in mine)]:
        a, b = mine.get(key), theirs.get(key)
        if isinstance(a, list):
            a = tuple(a)
        if isinstance(b, list):
            b = tuple(b)
        if a != b:
            raise ManifestMismatchError(key, a, b, str(index_dir))
