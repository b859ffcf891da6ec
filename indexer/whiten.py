"""PCA-whitening for a build: fit on a seeded sample of the collection's local rows, on another
folder's rows (`--whiten-on FOLDER`), or reuse another index's whitening (`--whiten-on INDEX_DIR`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import IndexConfig
from .errors import IndexerError
from .manifest import MANIFEST_NAME, WHITENING_NAME, manifest_settings, read_manifest
from .partial import PartialBuild


def sample_rows(partial: PartialBuild, max_rows: int, seed: int) -> np.ndarray:
    """Up to `max_rows` l2-normalized non-zero rows, sampled uniformly (seeded) over all shards."""
    from descriptors.aggregate import l2_normalize_rows

    shards = list(partial.completed())
    counts = []
    for index in shards:
        # the per-image row counts are tiny; the rows themselves are read only for chosen shards
        with np.load(partial.shard_path(index), allow_pickle=False) as data:
            counts.append(int(data["row_counts"].sum()))
    total = sum(counts)
    rng = np.random.default_rng(seed)
    chosen = (
        np.sort(rng.choice(total, size=min(total, max_rows), replace=False))
        if total
        else np.zeros(0, np.int64)
    )
    picked = []
    offset = 0
    for index, count in zip(shards, counts, strict=True):
        local = chosen[(chosen >= offset) & (chosen < offset + count)] - offset
        if len(local):
            picked.append(partial.read_shard(index).rows[local])
        offset += count
    if not picked:
        return np.zeros((0, 0), np.float32)
    rows = l2_normalize_rows(np.concatenate(picked).astype(np.float32))
    return rows[np.any(rows != 0, axis=1)]


def fit_whitening(rows: np.ndarray, dim: int, source: str):
    from descriptors.whitening import PCAWhitening

    try:
        return PCAWhitening.fit(rows, dim)
    except ValueError as exc:  # InsufficientSamplesError included
        raise IndexerError(f"--whiten-dim {dim} on {source}: {exc}") from exc


def whitening_for_build(partial: PartialBuild, config: IndexConfig, extractor, progress: bool = True):
    """(PCAWhitening or None, manifest info)."""
    if config.whiten_dim <= 0:
        return None, {"dim": 0}
    if config.whiten_on:
        source = Path(config.whiten_on).expanduser().resolve()
        if (source / MANIFEST_NAME).is_file():
            return _whitening_from_index(source, config, extractor)
        if not source.is_dir():
            raise IndexerError(f"--whiten-on {source}: neither a folder of images nor an index directory")
        rows = _rows_of_folder(source, partial, config, extractor, progress)
        where = str(source)
    else:
        rows = sample_rows(partial, config.whiten_max_rows, config.seed)
        where = "the collection"
    whitening = fit_whitening(rows, config.whiten_dim, where)
    return whitening, {"dim": whitening.dim, "fit_on": where, "rows": len(rows), "file": WHITENING_NAME}


def _whitening_from_index(source: Path, config: IndexConfig, extractor):
    from descriptors.whitening import PCAWhitening

    other = read_manifest(source)
    theirs = manifest_settings(other)
    from .manifest import extractor_settings

    mine = extractor_settings(extractor)
    for key in ("backbone", "weights_sha256", "layer", "descriptor"):
        if theirs.get(key) != mine.get(key):
            raise IndexerError(
                f"--whiten-on {source}: that index uses {key}={theirs.get(key)!r}, this build {mine.get(key)!r}; "
                "its whitening does not apply"
            )
    path = source / WHITENING_NAME
    if not path.is_file():
        raise IndexerError(f"--whiten-on {source}: that index has no whitening (built with --whiten-dim 0)")
    whitening = PCAWhitening.load(path)
    if whitening.dim != config.whiten_dim:
        raise IndexerError(
            f"--whiten-on {source}: its whitening has dim {whitening.dim}, --whiten-dim is {config.whiten_dim}; "
            f"pass --whiten-dim {whitening.dim}"
        )
    return whitening, {
        "dim": whitening.dim,
        "fit_on": f"index {source}",
        "rows": int(other["whitening"].get("rows", 0)),
        "file": WHITENING_NAME,
    }


def _rows_of_folder(
    source: Path, partial: PartialBuild, config: IndexConfig, extractor, progress: bool
) -> np.ndarray:
    """Extract the rows of another folder (resumable, in `OUT.partial/whiten-on/`)."""
    from .build import extract_to_partial
    from .files import iter_image_files
    from .stages import WorkItem

    files = list(iter_image_files(source))
    if not files:
        raise IndexerError(f"--whiten-on {source}: no image files found")
    items = [WorkItem(i, f, f.relative_to(source).as_posix()) for i, f in enumerate(files)]
    sub = PartialBuild(partial.folder / "whiten-on")
    extract_to_partial(
        source, items, sub, config, extractor, stores_rows=True, progress=progress, desc="whiten-on"
    )
    return sample_rows(sub, config.whiten_max_rows, config.seed)
