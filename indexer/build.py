"""`build_index`: an image folder -> an index directory, in two resumable stages.

Stage 1 (extraction, resumable): sorted files get ids 0..n-1; reader threads decode, the main
thread runs the CNN + NMF in batches; each shard of `shard_size` images is committed atomically
into `OUT.partial/shards/`. With whitening off a shard holds final vectors; with whitening on it
holds the local rows.
Stage 2 (assembly, seconds to minutes): fit the PCA-whitening (on a seeded sample of the
collection's rows, or `--whiten-on`), aggregate rows into vectors, build the FAISS index, write
catalog + manifest into `OUT.partial/staged/` and rename it to OUT. OUT therefore appears
complete or not at all.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import numpy as np

from .catalog import STATUS_INDEXED, Catalog, CatalogRow
from .config import IndexConfig, resolve_faiss_factory
from .errors import IndexerError, IndexExistsError, IndexWriteError, NoImagesError
from .extraction import make_extractor, progress_bar, run_extraction
from .factor_rows import (
    FACTOR_CODEC_NAME,
    OFFSETS,
    ROWS,
    codec_writer,
    encode_rows,
    fit_codec,
    manifest_entry,
)
from .faiss_index import build_faiss_index, write_faiss_index
from .files import catalog_path, iter_image_files, stat_key
from .manifest import CATALOG_NAME, FAISS_NAME, VECTORS_NAME, WHITENING_NAME, make_manifest, write_manifest
from .partial import PartialBuild
from .stages import WorkItem
from .storage import atomic_write, write_error
from .summary import BuildSummary, IdRanges, ShardClock, SkippedFile
from .whiten import whitening_for_build

# catalog rows per transaction of stage 2 (a few MB of Python objects at most)
CATALOG_CHUNK = 50_000


def partial_dir_for(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def extract_to_partial(
    folder: Path,
    items: list[WorkItem],
    partial: PartialBuild,
    config: IndexConfig,
    extractor,
    *,
    stores_rows: bool,
    progress: bool,
    desc: str,
    clock: ShardClock | None = None,
) -> tuple[int, int, object]:
    """Stage 1 over `items` into `partial`. Returns (images processed now, shards resumed, extractor).

    `clock` times each committed shard (the build's start-up and steady rate).
    """
    # the plan is the settings; the files are checked shard by shard (partial.py: a changed or
    # new file redoes only its own shard)
    plan = {"source_root": str(folder), "settings": config.extraction_fingerprint() | {"stores_rows": stores_rows}}
    size = config.shard_size
    planned = [(g, items[g * size:(g + 1) * size]) for g in range((len(items) + size - 1) // size)]
    keyed = [(g, [it.id for it in group], [(it.stored_path, *_stat_key(it.path)) for it in group]) for g, group in planned]
    completed, discarded = partial.open(plan, keyed)
    if discarded and progress:
        print(f"note: {partial.folder} belonged to a build with other settings; starting over")
    groups = [(g, group) for g, group in planned if g not in completed]
    todo = sum(len(group) for _, group in groups)

    def commit(g: int, decoded: list, results: list) -> None:
        partial.commit_shard(g, decoded, results, stores_rows)

    writer = commit if clock is None else clock.wrap(commit)

    def commit_from_ray(g: int, decoded: list, results: list, finished_at: float) -> None:
        commit(g, decoded, results)
        if clock is not None:
            clock.record(len(decoded), finished_at)  # when the worker finished it, not when it arrived

    if todo and config.ray_address is not None:
        from .ray_build import run_extraction_on_ray

        # the same stage functions in an actor pool; the writer (commit_shard) stays in this process
        with progress_bar(len(items), len(items) - todo, progress, desc) as bar:
            identity = run_extraction_on_ray(
                groups,
                commit_from_ray,
                config,
                stores_rows=stores_rows,
                bar=bar,
            )
        # stage 2 needs only the workers' extractor identity: no backbone in the driver
        extractor = extractor or identity
    elif todo:
        if extractor is None:
            extractor = make_extractor(config)
        with progress_bar(len(items), len(items) - todo, progress, desc) as bar:
            run_extraction(
                groups,
                extractor,
                writer,
                config,
                stores_rows=stores_rows,
                max_pixels=config.max_pixels,
                bar=bar,
            )
    return todo, len(completed), extractor


def _stat_key(path: Path) -> tuple[int, int]:
    try:
        return stat_key(path.stat())
    except OSError:
        return -1, -1


def build_index(
    folder: str | Path,
    out: str | Path,
    config: IndexConfig | None = None,
    progress: bool = True,
    *,
    extractor=None,
) -> BuildSummary:
    """Index every image under `folder` into the new index directory `out` (see module docstring).

    Raises `NoImagesError` (nothing written) when the folder holds no usable image,
    `IndexExistsError` when `out` exists (unless `config.overwrite`), `IndexWriteError` when the
    output cannot be written (the previous index, if any, is untouched), `FaissTrainingError`
    when the FAISS factory needs more vectors than the collection has.
    """
    config = config or IndexConfig()
    started = time.perf_counter()
    if config.ray_address is not None:
        from .ray_cluster import import_ray

        import_ray()  # a missing [ray] extra fails here, before anything is written
    folder = Path(folder).expanduser().resolve()
    out = Path(os.path.abspath(Path(out).expanduser()))
    if not folder.is_dir():
        raise NoImagesError(f"{folder} is not a folder; give the folder of images to index")
    if out.exists() and not config.overwrite and (not out.is_dir() or any(out.iterdir())):
        raise IndexExistsError(f"{out} already exists; choose another --out or pass --overwrite to replace it")
    partial = PartialBuild(partial_dir_for(out))
    files = list(iter_image_files(folder, exclude=[out, partial.folder]))
    if not files:
        raise NoImagesError(f"{folder}: no image files found (looked for .jpg .jpeg .png .webp, recursively)")
    items = [WorkItem(i, f, catalog_path(f, folder, out)) for i, f in enumerate(files)]
    stores_rows = config.stores_rows
    clock = ShardClock(time.time() - (time.perf_counter() - started))
    processed, resumed, extractor = extract_to_partial(
        folder, items, partial, config, extractor, stores_rows=stores_rows, progress=progress, desc="extract",
        clock=clock,
    )
    if config.ray_address is not None:
        from descriptors.threads import apply_process_threads

        apply_process_threads()  # the thread settings the CLI deferred until torch is needed here
    try:
        if extractor is None:
            # every shard was resumed; the manifest and the --whiten-on check still need the
            # extractor's identity (the backbone trunk is cached, so this is cheap)
            extractor = make_extractor(config)
        summary = _assemble(folder, out, partial, config, extractor, len(items), progress)
    except NoImagesError:
        partial.remove()
        raise
    summary.seconds = time.perf_counter() - started
    summary.processed_this_run = processed
    summary.resumed_shards = resumed
    summary.first_shard_seconds = clock.first_shard_seconds
    summary.steady_images_per_second = clock.steady_images_per_second
    return summary


def _assemble(
    folder: Path, out: Path, partial: PartialBuild, config: IndexConfig, extractor, n_items: int, progress: bool
) -> BuildSummary:
    """Stage 2: whitening, vectors, FAISS, catalog, manifest; then rename into place."""
    shard_meta = [_shard_meta(partial, i) for i in partial.completed()]
    n_indexed = sum(m for m, _ in shard_meta)
    if n_indexed == 0:
        reasons = sorted({r for _, rs in shard_meta for r in rs})
        raise NoImagesError(
            f"{folder}: none of the {n_items} image file(s) could be decoded ({', '.join(reasons)}); nothing written"
        )
    staged = partial.folder / "staged"
    shutil.rmtree(staged, ignore_errors=True)
    try:
        staged.mkdir()
    except OSError as exc:
        raise write_error(staged, exc) from exc
    whitening, whitening_info = whitening_for_build(partial, config, extractor, progress=progress)
    if whitening is not None:
        whitening.save(staged / WHITENING_NAME)

    factor = _FactorRowsWriter(partial, whitening, config, staged, n_items) if config.rerank_dim > 0 else None
    summary = BuildSummary(index_dir=str(out))
    now = time.time()
    vectors_path = staged / VECTORS_NAME
    vectors = None
    try:
        # the catalog is written as the shards are read, CATALOG_CHUNK rows per transaction, so
        # the driver's memory does not grow with the collection (staged/ is not the commit point:
        # the rename below is, so several transactions are safe)
        id_parts: list[np.ndarray] = []
        with Catalog(staged / CATALOG_NAME) as catalog:
            pending: list[CatalogRow] = []
            for shard in partial.iter_shards():
                shard_vectors = shard.vectors if shard.vectors is not None else _aggregate_shard(shard, whitening)
                # a shard whose images all failed to decode has no vector width: size the file from
                # the first shard that has one
                if vectors is None and shard_vectors.shape[1] > 0:
                    vectors = np.lib.format.open_memmap(vectors_path, mode="w+", dtype=np.float32, shape=(n_items, shard_vectors.shape[1]))
                if factor is not None:
                    factor.add_shard(shard)
                indexed = np.array([s == STATUS_INDEXED for s in shard.statuses], dtype=bool)
                if indexed.any():
                    shard_ids = np.asarray(shard.ids, dtype=np.int64)[indexed]
                    vectors[shard_ids] = shard_vectors[indexed]
                    id_parts.append(shard_ids)
                pending.extend(_catalog_rows(shard, now))
                summary.skipped.extend(
                    SkippedFile(os.path.join(folder, shard.stored_paths[j]), shard.statuses[j].split(":", 1)[1], shard.messages[j])
                    for j in np.nonzero(~indexed)[0]
                )
                if len(pending) >= CATALOG_CHUNK:
                    catalog.apply(insert=pending, generation=1)
                    pending = []
            catalog.apply(insert=pending, generation=1)
        assert vectors is not None
        vectors.flush()
        dim = int(vectors.shape[1])
        ids = np.concatenate(id_parts) if id_parts else np.empty(0, np.int64)
        factory, search_params = resolve_faiss_factory(config.faiss, len(ids), config.faiss_search_params, dim)
        index = build_faiss_index(vectors, ids, factory, train_max=config.faiss_train_max, seed=config.seed, device=config.device)
        write_faiss_index(index, staged / FAISS_NAME)
        del vectors, index
        factor_files = factor.finish() if factor is not None else {}
        counts = {"files": n_items, "indexed": len(ids), "skipped": summary.skipped_reasons}
        manifest = make_manifest(
            config, extractor.backbone, config.descriptor_config(),
            source_root=str(folder), dim=dim, factory=factory, search_params=search_params,
            whitening_info=whitening_info, counts=counts, next_id=n_items,
        )
        if factor is not None:
            manifest["segments"][0]["files"].update(factor_files)
            manifest["factor_rows"] = manifest_entry(factor.codec, factor.fit_rows)
        write_manifest(staged, manifest)
    except OSError as exc:
        raise write_error(staged, exc) from exc
    _move_into_place(staged, out, config.overwrite)
    partial.remove()
    summary.indexed = len(ids)
    summary.ids = IdRanges.from_ids(ids)
    summary.total_indexed = len(ids)
    summary.factory = factory
    summary.dim = dim
    return summary


def _catalog_rows(shard, now: float) -> list[CatalogRow]:
    return [
        CatalogRow(
            int(image_id), shard.stored_paths[j], shard.sha256[j],
            int(shard.widths[j]) if shard.widths[j] >= 0 else None,
            int(shard.heights[j]) if shard.heights[j] >= 0 else None,
            shard.statuses[j], now,
        )
        for j, image_id in enumerate(shard.ids)
    ]


def _shard_meta(partial: PartialBuild, index: int) -> tuple[int, set[str]]:
    with np.load(partial.shard_path(index), allow_pickle=False) as data:
        statuses = [str(s) for s in data["statuses"]]
    return sum(s == STATUS_INDEXED for s in statuses), {s.split(":", 1)[1] for s in statuses if s != STATUS_INDEXED}


class _FactorRowsWriter:
    """The build's re-ranking rows (`indexer/factor_rows.py`): the codec fitted on a seeded sample
    of the collection's rows, then every indexed image's rows encoded into the base segment's
    `factor_rows.npy` (row = offsets[id]) and `factor_rows_offsets.npy`, shard by shard."""

    def __init__(self, partial: PartialBuild, whitening, config: IndexConfig, staged: Path, n_items: int) -> None:
        from descriptors.rerank import row_features

        from .factor_rows import CODEC_TRAIN_ROWS
        from .whiten import sample_rows

        sample = sample_rows(partial, CODEC_TRAIN_ROWS, config.seed)
        self.codec = fit_codec(row_features(sample, whitening), config.rerank_dim)
        self.fit_rows = len(sample)
        self.whitening, self.staged = whitening, staged
        atomic_write(staged / FACTOR_CODEC_NAME, codec_writer(self.codec), suffix=".npy")
        counts = np.zeros(n_items, np.int64)
        for index in partial.completed():
            with np.load(partial.shard_path(index), allow_pickle=False) as data:
                indexed = data["statuses"] == STATUS_INDEXED
                counts[data["ids"][indexed]] = data["row_counts"][indexed]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.rows = np.lib.format.open_memmap(
            staged / f"{ROWS}.npy", mode="w+", dtype=np.float16, shape=(int(self.offsets[-1]), self.codec.dim)
        )

    def add_shard(self, shard) -> None:
        for image_id, rows in zip(shard.ids, shard.rows_of(), strict=True):
            if rows is not None and len(rows):
                start, stop = self.offsets[image_id], self.offsets[image_id + 1]
                self.rows[start:stop] = encode_rows(rows, self.whitening, self.codec)

    def finish(self) -> dict[str, str]:
        self.rows.flush()
        del self.rows
        offsets = self.offsets

        def write(temp: str) -> None:
            with open(temp, "wb") as handle:
                np.save(handle, offsets, allow_pickle=False)

        atomic_write(self.staged / f"{OFFSETS}.npy", write, suffix=".npy")
        return {ROWS: f"{ROWS}.npy", OFFSETS: f"{OFFSETS}.npy"}


def _aggregate_shard(shard, whitening) -> np.ndarray:
    from descriptors.aggregate import aggregate_rows

    per_image = shard.rows_of()
    dim = whitening.dim if whitening is not None else shard.rows.shape[1]
    out = np.zeros((len(per_image), dim), np.float32)
    for i, rows in enumerate(per_image):
        if rows is not None and len(rows):
            out[i] = aggregate_rows(rows, whitening)
    return out


def _move_into_place(staged: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished directory to `out`; an existing `out` is replaced only at the very end."""
    old = None
    try:
        if out.exists():
            if not overwrite and (not out.is_dir() or any(out.iterdir())):
                raise IndexExistsError(f"{out} appeared during the build; nothing was replaced")
            old = out.with_name(f"{out.name}.old-{os.getpid()}")
            os.rename(out, old)
        os.rename(staged, out)
    except OSError as exc:
        if old is not None and not out.exists():
            with contextlib.suppress(OSError):
                os.rename(old, out)
        raise IndexWriteError(f"cannot move the new index into {out}: {exc.strerror or exc}; the previous index is untouched") from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["IndexerError", "build_index", "extract_to_partial", "partial_dir_for"]
