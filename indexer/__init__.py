"""Image folder -> persistent, resumable FAISS index directory (`dff-index`).

Public API (mirrors the CLI): `IndexConfig`, `build_index`, `add_images`, `remove_images`,
`compact_index`, `index_info`, `open_index` / `OpenIndex`, `build_extractor`, `check_manifest_matches`,
`iter_image_files`, `BuildSummary`, and the errors (`IndexerError` and subclasses).
"""

import descriptors  # noqa: F401  (first: sets OpenMP/OpenBLAS passive waiting before torch, numpy, faiss load)

from .build import build_index
from .catalog import Catalog, CatalogRow
from .compact import compact_index
from .config import IndexConfig
from .errors import (
    FaissTrainingError,
    IndexerError,
    IndexExistsError,
    IndexFormatError,
    IndexWriteError,
    ManifestMismatchError,
    NoImagesError,
)
from .files import iter_image_files
from .manifest import build_extractor, check_manifest_matches, read_manifest
from .open_index import OpenIndex, index_info, open_index
from .summary import BuildSummary, SkippedFile
from .update import add_images, add_vectors, remove_images

__all__ = [
    "BuildSummary",
    "Catalog",
    "CatalogRow",
    "FaissTrainingError",
    "IndexConfig",
    "IndexExistsError",
    "IndexFormatError",
    "IndexWriteError",
    "IndexerError",
    "ManifestMismatchError",
    "NoImagesError",
    "OpenIndex",
    "SkippedFile",
    "add_images",
    "add_vectors",
    "build_extractor",
    "build_index",
    "check_manifest_matches",
    "compact_index",
    "index_info",
    "iter_image_files",
    "open_index",
    "read_manifest",
    "remove_images",
]
