"""The search engine: query image -> descriptor -> FAISS -> re-ranking -> query expansion -> localization.

No gRPC in here: the servicer, the tests, the benchmarks and the evaluation harness all call
`SearchEngine` directly. Errors are exceptions with a message a person can act on
(`InvalidQueryError`, `QueryDeadlineError`); the servicer maps them to gRPC status codes.

Concurrency: searches share no Python lock during compute. All torch work (forward, NMF,
localization) runs on small fixed thread pools of `compute_slots` threads (one pool for the
backbone, one for the NMF, so that one request's NMF overlaps the next one's forward): few,
stable OpenMP teams, and N concurrent requests do not oversubscribe the cores. FAISS search +
catalog lookup run under the read side of a readers-writer lock on one `OpenIndex` at one
generation. Adds and removes run on their own one-thread executor (`write` pool, one torch
thread): the upload is decoded, encoded and committed as a new generation on disk there while
searches go on; only then is the commit applied to the in-memory index (`OpenIndex.apply`: FAISS
add of the batch, tombstones hidden, catalog generation bumped) under the write side of the lock,
a pause of O(batch). A search therefore sees the old or the new generation, never a mix.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from descriptors.atomic_files import atomic_write_bytes
from descriptors.encode import backbone_input, decode_options
from descriptors.images import (
    DEFAULT_MAX_PIXELS,
    ImageDecodeError,
    decode_image,
    enable_array_decoder,
    full_size,
)
from descriptors.query_expansion import EXPANSIONS
from descriptors.rerank import DEFAULT_DEPTH
from descriptors.threads import available_cpus
from indexer.graph import GraphAffinity

from .batching import ForwardBatcher
from .concurrency import QUEUE_STAGE, ComputePool, ReadWriteLock, StageClock
from .errors import InvalidQueryError, QueryDeadlineError, SearchEngineError, validate_box
from .localize import Concept, Localizer
from .ranking import MAX_RERANK, apply_localization, rank, rerank_problem
from .stored_images import ImageNotFoundError, StoredImage, indexed_image_path, load_stored_image
from .uploads import UploadKeys

STAGES = ("decode", "forward", "nmf", "descriptor", "faiss", "rerank", "expansion", "localization")
_FORMAT_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}

Box = tuple[float, float, float, float]
__all__ = [
    "QUEUE_STAGE",
    "STAGES",
    "AddedImage",
    "Concept",
    "EngineConfig",
    "ImageNotFoundError",
    "InvalidQueryError",
    "QueryDeadlineError",
    "SearchEngine",
    "SearchEngineError",
    "SearchHit",
    "SearchOutcome",
    "StoredImage",
    "validate_box",
]


@dataclass
class EngineConfig:
    """Everything `SearchEngine` can be told; `dff-serve` flags map onto it one to one."""

    index_dir: Path
    device: str = "cpu"
    max_top_k: int = 100
    max_query_expansion: int = 50
    # re-ranking by the stored factor rows (descriptors.rerank, indexer/factor_rows.py): the depth
    # of a request that does not say (dff-serve --rerank; 0: off), and the most a request may ask
    rerank: int = DEFAULT_DEPTH
    max_rerank: int = MAX_RERANK
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = 16
    # dynamic batching of concurrent forwards: <= 1 means off (the right choice on a CPU)
    max_batch: int = 1
    batch_timeout_ms: float = 5.0
    # how many requests may run backbone/NMF work at once (None: the CPUs; concurrent forwards
    # share the compute threads, searcher.concurrency.ComputePool.split_threads)
    compute_slots: int | None = None
    # separate slots for the backbone (forward, localization) and for the NMF, so that one
    # request's NMF can overlap the next one's forward; False = one slot pool for all of it
    pipelined: bool = True
    # torch threads of the NMF pool when pipelined: its ops are small (h*w x C times C x K) and
    # gain little from threads, and a 1-thread NMF leaves the cores to the concurrent forward
    nmf_threads: int | None = 1
    localization_size: int = 224
    localization_k: int | None = None  # None: the index's K
    # bounded memory (dff-serve flags): images decoded at once (a PNG cannot be decoded at a
    # reduced scale: 64 MP = 192 MB each), and results localized per request
    decode_slots: int = 2
    max_localize: int = 100


@dataclass
class SearchHit:
    id: int
    path: str
    score: float
    rank: int
    key: str = ""
    box: Box | None = None
    image_missing: bool = False
    width: int = 0
    height: int = 0
    heatmap: np.ndarray | None = None  # (h, w) in [0, 1], localization grid
    shared_concept: int | None = None  # with_concepts: index into SearchOutcome.concepts
    shared_concept_heatmap: np.ndarray | None = None


@dataclass
class SearchOutcome:
    hits: list[SearchHit]
    stages_ms: dict[str, float] = field(default_factory=dict)
    query_factors: int = 0
    query_size: tuple[int, int] = (0, 0)
    query_heatmap: np.ndarray | None = None
    concepts: list[Concept] = field(default_factory=list)  # with_concepts: the joint NMF's factors
    query_vector: np.ndarray | None = None  # (D,) the query's descriptor, before any expansion
    reranked: int = 0  # how many first-stage results the match kernel re-ranked (0: none)
    notes: list[str] = field(default_factory=list)  # what the search could not do as asked, and why


NO_FACTOR_ROWS_NOTE = (
    "not re-ranked: this index stores no factor rows (built before them or with --rerank-dim 0); "
    "rebuild it with dff-index build to re-rank"
)

# per-input outcomes of AddImages
ADDED, DUPLICATE, SKIPPED = "added", "duplicate", "skipped"


@dataclass
class AddedImage:
    """What happened to one input of `add_images`: `added` under `id`, `duplicate` of `id`, or
    `skipped` (id -1) for `reason`."""

    id: int
    key: str
    path: str
    duplicate: bool = False
    outcome: str = ADDED
    reason: str = ""
    message: str = ""


def _container_format(data: bytes) -> str:
    """PIL's format name from the header (decode_image's result no longer carries it)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.format or ""


class SearchEngine:
    """An index directory, loaded with its extractor, answering searches and taking changes."""

    def __init__(self, index_dir: str | Path | EngineConfig, device: str = "cpu", **options) -> None:
        import indexer

        if isinstance(index_dir, EngineConfig):
            config = index_dir
        else:
            config = EngineConfig(index_dir=Path(index_dir), device=device, **options)
        config.index_dir = Path(config.index_dir)
        self.config = config
        self._index = indexer.open_index(config.index_dir)
        self._graph = GraphAffinity()  # the diffusion graph, loaded by the first diffusion query
        self.extractor = indexer.build_extractor(self._index.manifest, config.device)
        self.backbone = self.extractor.backbone
        self._write_lock = threading.Lock()  # one writer at a time
        self._index_guard = ReadWriteLock()  # searches read; applying a commit writes
        # CPU: as many slots as CPUs; the backbone pool splits the compute threads among the
        # forwards running at once (ComputePool.split_threads)
        slots = config.compute_slots or available_cpus()
        if self.backbone.device.type != "cpu":
            slots = max(slots, config.max_batch)  # the batcher needs concurrent submitters
        self.compute_slots = slots
        # adds and removes: their own thread (and one torch thread), so searches never queue
        # behind an upload's encoding in the backbone pool
        self._write_pool = ComputePool(1, "write", torch_threads=1)
        forward_threads = torch.get_num_threads()
        self._backbone_pool = ComputePool(
            slots, "backbone", torch_threads=forward_threads, follow_load=True, split_threads=True
        )
        self._nmf_pool = (
            ComputePool(slots, "nmf", torch_threads=config.nmf_threads)
            if config.pipelined
            else self._backbone_pool
        )
        # the batcher decides the batch; the backbone forwards each group it hands over as one batch
        self.backbone.max_batch = max(1, config.max_batch)
        self._batcher = ForwardBatcher(
            self.backbone.extract, config.max_batch, config.batch_timeout_ms / 1000.0
        )
        self.localizer = Localizer(
            self.backbone,
            self.extractor.config,
            image_size=config.localization_size,
            k=config.localization_k,
            decode=self._decode_result,
        )
        self._keys = UploadKeys(config.index_dir)
        self._decode_slots = threading.BoundedSemaphore(max(1, int(config.decode_slots)))
        self.warmup_ms = self._warm_up()

    def _warm_up(self) -> dict[str, float]:
        """Before the server reports SERVING: compile (or load from disk) the NMF kernels and run
        the backbone runtime and the rows once on a synthetic photo, so that the first query pays
        for none of it (the demo's first query spent 1318 ms compiling the NMF). Returns each
        step's milliseconds."""
        from PIL import Image

        from descriptors.nmf import warm_up as warm_up_nmf

        timings: dict[str, float] = {}
        start = time.perf_counter()
        warm_up_nmf(self.extractor.config.nmf_algorithm)  # the index's algorithm (manifest)
        timings["nmf_compile"] = 1000 * (time.perf_counter() - start)
        start = time.perf_counter()
        enable_array_decoder()  # queries' JPEGs decoded straight into arrays (descriptors.images)
        timings["array_decoder"] = 1000 * (time.perf_counter() - start)
        size = self.extractor.image_size
        noise = np.random.default_rng(0).integers(0, 256, (size, size * 4 // 3, 3), dtype=np.uint8)
        image = Image.fromarray(noise)
        start = time.perf_counter()
        activations = self.backbone.extract([self.backbone.preprocess(image, size)])
        timings["forward"] = 1000 * (time.perf_counter() - start)
        if self.backbone.compiled_trunk is not None:
            # the one-thread session too: the load-following pool falls back to it when other
            # work takes the CPUs, and compiling it then would cost that request seconds
            start = time.perf_counter()
            self.backbone.compiled_trunk.prepare(1)
            timings["runtime_one_thread"] = 1000 * (time.perf_counter() - start)
        start = time.perf_counter()
        self.extractor.rows_from_activations(activations, [image.size], [None])
        timings["rows"] = 1000 * (time.perf_counter() - start)
        return timings

    # ------------------------------------------------------------------------------------------
    # read side

    @property
    def index(self):
        """The current `OpenIndex` (replaced as a whole by add/remove)."""
        return self._index

    @property
    def count(self) -> int:
        return int(self._index.count)

    @property
    def generation(self) -> int:
        """The index generation searches see now."""
        return int(self._index.generation)

    def search(
        self,
        image: bytes,
        box: Sequence[float] | None = None,
        top_k: int = 10,
        query_expansion: int = 0,
        localize: bool = False,
        rerank: int | None = None,
    ) -> list[SearchHit]:
        return self.query(image, box, top_k, query_expansion, localize, rerank=rerank).hits

    def query(
        self,
        image: bytes,
        box: Sequence[float] | None = None,
        top_k: int = 10,
        query_expansion: int = 0,
        localize: bool = False,
        *,
        with_heatmaps: bool = False,
        with_concepts: bool = False,
        deadline: float | None = None,
        expansion: str = "",
        rerank: int | None = None,
    ) -> SearchOutcome:
        """Full search with per-stage timings. `deadline` is a `time.monotonic()` instant.
        `expansion`: average (default, also ""), alpha or diffusion (descriptors.query_expansion).
        `rerank`: re-rank the first-stage top N by the match kernel of the query's rows (a box
        query: the factors the box kept) with each result's stored rows (None: the configured
        depth; 0: off); an index without stored rows is searched without, with a note."""
        self._check_numbers(top_k, query_expansion, localize)
        expansion = self._check_expansion(expansion)
        depth = self._rerank_depth(rerank)
        clock = StageClock(deadline)
        with clock.stage("decode"):
            # a JPEG decodes at the scale the backbone needs (descriptors.encode.decode_options)
            options = decode_options(self.extractor.image_size, box, self.extractor.config)
            img = self._decode(image, deadline, **options)
            query_box = validate_box(box, *full_size(img))
            # descriptors.encode: the one encoding dff-eval and the indexer use (baselines forward
            # the crop, NMF methods the full image with the box for the factor selection)
            seen, rows_box = backbone_input(img, query_box, self.extractor.config)
            tensor = self.backbone.preprocess(seen, self.extractor.image_size)
        activation = self._backbone_pool.run(clock, "forward", self._batcher.run, tensor)
        rows = self._nmf_pool.run(
            clock, "nmf", self.extractor.rows_from_activations, [activation], [full_size(seen)], [rows_box]
        )[0]
        with clock.stage("descriptor"):
            descriptor = np.asarray(
                self.extractor.global_descriptor(rows, self._index.whitening), dtype=np.float32
            )
        notes = []
        with self._index_guard.read():
            index = self._index  # FAISS ids and catalog paths from one and the same generation
            if depth and not index.has_factor_rows:
                notes.append(NO_FACTOR_ROWS_NOTE)
                depth = 0
            scores, ids = rank(
                index, descriptor, int(top_k), int(query_expansion), clock, expansion=expansion, graph=self._graph,
                rows=rows if depth else None, rerank=depth,
            )
            keep = ids >= 0
            scores, ids = scores[keep], ids[keep]
            paths = index.paths([int(i) for i in ids])
        hits = [
            SearchHit(
                id=int(i),
                path=str(p) if p is not None else "",
                score=float(s),
                rank=rank,
                key=self._keys.key_for(p),
            )
            for rank, (i, s, p) in enumerate(zip(ids, scores, paths, strict=True), start=1)
        ]
        outcome = SearchOutcome(
            hits=hits, query_factors=int(rows.shape[0]), query_size=full_size(img), query_vector=descriptor,
            reranked=min(depth, int(index.count)), notes=notes,
        )
        if localize and hits:
            result = self._backbone_pool.run(
                clock,
                "localization",
                partial(
                    self.localizer.localize,
                    deadline=deadline,
                    with_heatmaps=with_heatmaps,
                    with_concepts=with_concepts,
                ),
                img,
                query_box,
                [hit.path for hit in hits],  # absolute catalog paths (OpenIndex.paths)
            )
            apply_localization(outcome, result, with_heatmaps)
        outcome.stages_ms = clock.ms
        return outcome

    def info(self) -> dict:
        index = self._index
        manifest = dict(index.manifest)
        return {
            "index_dir": str(self.config.index_dir),
            "count": int(index.count),
            "backbone": self.backbone.name,
            "image_size": int(self.extractor.image_size),
            "method": str(getattr(self.extractor.config, "method", manifest.get("method", ""))),
            "dimension": int(manifest.get("dim", 0)),
            "max_top_k": self.config.max_top_k,
            "rerank": self.config.rerank if index.has_factor_rows else 0,
            "max_rerank": self.config.max_rerank,
            "device": str(self.backbone.device),
            "max_batch": self._batcher.max_batch,
            "compute_slots": self.compute_slots,
            "pipelined": self.config.pipelined,
            "manifest": manifest,
        }

    def image(self, image_id: int, max_side: int = 0) -> StoredImage:
        """The stored image of an indexed id (`searcher.stored_images`): the file as it is
        (max_side 0) or a JPEG whose longer side is at most `max_side`; ImageNotFoundError for any
        id the catalog does not mark indexed."""
        with self._index_guard.read():
            index = self._index
            path = indexed_image_path(index.catalog, image_id, index.source_root, index.index_dir)
        return load_stored_image(image_id, path, max_side, self.config.max_pixels, self._keys.key_for(path))

    def close(self) -> None:
        self._batcher.close()
        self._backbone_pool.close()
        self._nmf_pool.close()
        self._write_pool.close()

    # ------------------------------------------------------------------------------------------
    # write side (one writer at a time; readers never wait)

    def add_images(
        self, items: Sequence[tuple[str, bytes]], skip_invalid: bool = False, deadline: float | None = None
    ) -> list[AddedImage]:
        """Store uploads under INDEX_DIR/uploads/<sha256>.<ext>, index them as one new generation,
        apply it to the in-memory index. Returns one `AddedImage` per item, in order.

        Every item is decoded first: one bad image rejects the whole request and changes nothing,
        unless `skip_invalid`, where it comes back `skipped` with its reason. Content that is
        already indexed (same sha256) is not added again: its existing id comes back `duplicate`.
        `deadline` (a `time.monotonic()` instant, the client's): checked per image while decoding
        and encoding; when it passes, QueryDeadlineError and nothing is added (no commit, no
        stored upload).
        """
        clock = StageClock(deadline)
        if not items:
            raise InvalidQueryError("empty", "AddImages received no images; send at least one")
        prepared: list[tuple[str, bytes, str] | AddedImage] = []  # (key, bytes to store, extension)
        for position, (key, data) in enumerate(items):
            self._check_add_deadline(clock, "decode")
            try:
                # checked at the backbone's scale (a JPEG's whole stream is still read): bounded memory
                img = self._decode(data, deadline, reduce_to=self.extractor.image_size)
            except InvalidQueryError as exc:
                label = f"image {position}" + (f" (key {key!r})" if key else "")
                if skip_invalid:
                    prepared.append(AddedImage(-1, key, "", outcome=SKIPPED, reason=exc.reason, message=f"{label}: {exc}"))
                    continue
                raise InvalidQueryError(exc.reason, f"{label}: {exc}; nothing was added") from exc
            extension = _FORMAT_EXTENSIONS.get(_container_format(data))
            if extension is None:  # a format the indexer does not list (GIF, BMP, TIFF...): store PNG
                img = self._decode(data, deadline)  # at full size: this is what gets stored
                buffer = io.BytesIO()
                img.save(buffer, format="PNG")
                data, extension = buffer.getvalue(), ".png"
            prepared.append((key, bytes(data), extension))
        with self._write_lock:
            self._check_add_deadline(clock, "add")  # waited for another writer
            return self._write_pool.run(StageClock(None), "add", self._add_prepared, prepared, clock)

    @staticmethod
    def _check_add_deadline(clock: StageClock, stage: str) -> None:
        try:
            clock.check(stage)
        except QueryDeadlineError as exc:
            raise QueryDeadlineError(
                f"deadline exceeded during AddImages ({stage}); nothing was added: allow more time "
                "(a longer client timeout) or send fewer images per call"
            ) from exc

    def _add_prepared(self, prepared: list, clock: StageClock | None = None) -> list[AddedImage]:
        import indexer

        uploads = self._keys.folder
        uploads.mkdir(exist_ok=True)
        stored: dict[int, tuple[str, Path, str, bool]] = {}  # position -> key, file, sha256, created now
        for position, entry in enumerate(prepared):
            if isinstance(entry, AddedImage):
                continue
            key, data, extension = entry
            digest = hashlib.sha256(data).hexdigest()
            target = Path(os.path.abspath(uploads / f"{digest}{extension}"))
            created = not target.exists()
            if created:
                atomic_write_bytes(target, data)
            stored[position] = (key, target, digest, created)
        outcomes: dict[str, object] = {}
        if stored:
            files = sorted({str(path) for _, path, _, _ in stored.values()})
            try:
                summary = indexer.add_images(
                    self.config.index_dir,
                    files,
                    extractor=self.extractor,
                    progress=False,
                    # the uploads were just written from bytes hashed above: no second hash
                    known_sha256={str(path): digest for _, path, digest, _ in stored.values()},
                    check=None if clock is None else (lambda: self._check_add_deadline(clock, "encode")),
                )
            except BaseException:
                # nothing was committed: the files stored for this call are nobody's
                for _key, path, _digest, created in stored.values():
                    if created:
                        path.unlink(missing_ok=True)
                raise
            self._apply(summary.commit)
            outcomes = {o.path: o for o in summary.inputs}
        added: list[AddedImage] = []
        for position, entry in enumerate(prepared):
            if isinstance(entry, AddedImage):
                added.append(entry)
                continue
            key, path, _digest, created = stored[position]
            added.append(self._outcome(key, path, created, outcomes.get(str(path))))
        self._keys.update(set_keys={a.path: a.key for a in added if a.key and a.outcome != SKIPPED})
        return added

    def _outcome(self, key: str, path: Path, created: bool, outcome) -> AddedImage:
        if outcome is None:
            raise SearchEngineError(f"{path} was stored but the indexer did not report on it")
        if outcome.outcome == ADDED:
            return AddedImage(int(outcome.id), key, str(path))
        if outcome.outcome == DUPLICATE and outcome.id is not None:
            indexed_path = self._index.paths([int(outcome.id)])[0]
            if created and indexed_path is not None and Path(indexed_path) != path:
                path.unlink(missing_ok=True)  # the content lives elsewhere; keep no orphan
            return AddedImage(int(outcome.id), key, indexed_path or str(path), duplicate=True, outcome=DUPLICATE)
        if created:
            path.unlink(missing_ok=True)
        return AddedImage(-1, key, "", outcome=SKIPPED, reason=outcome.reason, message=outcome.message)

    def _apply(self, commit) -> None:
        """Bring the in-memory index to the generation just committed (O(batch)); reopen instead
        when another process wrote a generation in between."""
        import indexer

        if commit is None:
            return
        if commit.generation == self._index.generation + 1:
            with self._index_guard.write():
                self._index.apply(commit)
            return
        fresh = indexer.open_index(self.config.index_dir)
        with self._index_guard.write():
            self._index = fresh

    def remove_images(self, ids: Sequence[int] = (), paths: Sequence[str] = ()) -> int:
        """Remove by id and/or path; returns how many indexed images were removed.

        Uploaded files (INDEX_DIR/uploads/) of removed images are deleted with them.
        """
        if not len(ids) and not len(paths):
            raise InvalidQueryError("empty", "RemoveImages needs ids or paths; got neither")
        with self._write_lock:
            return self._write_pool.run(StageClock(None), "remove", self._remove, list(ids), list(paths))

    def _remove(self, ids: list, paths: list) -> int:
        from indexer.update import remove_images_committed

        candidates = {str(p) for p in self._index.paths([int(i) for i in ids]) if p} | {str(p) for p in paths}
        removed, commit = remove_images_committed(
            self.config.index_dir,
            ids=[int(i) for i in ids] or None,
            paths=[str(p) for p in paths] or None,
        )
        self._apply(commit)
        if removed:
            # uploads are named by content and deduplicated, so a removed entry owns its file
            uploaded = [c for c in candidates if self._keys.name(c)]
            for candidate in uploaded:
                Path(candidate).unlink(missing_ok=True)
            self._keys.update(drop=uploaded)
        return int(removed)

    # ------------------------------------------------------------------------------------------
    # internals

    def _check_expansion(self, expansion: str) -> str:
        expansion = expansion or "average"
        if expansion not in EXPANSIONS:
            raise InvalidQueryError(
                "bad-expansion", f"expansion={expansion!r} is not one of {', '.join(EXPANSIONS)}"
            )
        if expansion == "diffusion":
            from indexer.errors import IndexFormatError

            try:
                with self._index_guard.read():
                    self._graph.get(self._index)
            except IndexFormatError as exc:  # no graph, or a stale one: say how to build it
                raise InvalidQueryError("no-diffusion-graph", f"expansion=diffusion: {exc}") from exc
        return expansion

    def _check_numbers(self, top_k: int, query_expansion: int, localize: bool = False) -> None:
        if not 1 <= int(top_k) <= self.config.max_top_k:
            raise InvalidQueryError(
                "bad-top-k",
                f"top_k={top_k} is out of range; ask for 1 to {self.config.max_top_k} results "
                "(the server's --max-top-k)",
            )
        if not 0 <= int(query_expansion) <= self.config.max_query_expansion:
            raise InvalidQueryError(
                "bad-query-expansion",
                f"query_expansion={query_expansion} is out of range; use 0 (off) to "
                f"{self.config.max_query_expansion}",
            )
        if localize and int(top_k) > self.config.max_localize:
            raise InvalidQueryError(
                "too-many-to-localize",
                f"localize with top_k={top_k}: the server localizes at most {self.config.max_localize} "
                "results per request (dff-serve --max-localize); ask for fewer results",
            )

    def _rerank_depth(self, rerank: int | None) -> int:
        depth = self.config.rerank if rerank is None else rerank
        problem = rerank_problem(depth, self.config.max_rerank)
        if problem is not None:
            raise InvalidQueryError("bad-rerank", problem)
        return int(depth)

    def _decode(self, image: bytes | str | Path, deadline: float | None, **options):
        """decode_image with the server's limits, at most `decode_slots` at once (bounded memory)."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not self._decode_slots.acquire(timeout=timeout):
            raise QueryDeadlineError(
                "deadline exceeded while waiting to decode the image (the server decodes at most "
                f"{self.config.decode_slots} at once, dff-serve --decode-slots); allow more time"
            )
        try:
            return decode_image(
                image, max_pixels=self.config.max_pixels, min_side=self.config.min_side, **options
            )
        except ImageDecodeError as exc:
            message = str(exc)
            if exc.reason == "too-large":
                message += " (the server's limit: dff-serve --max-pixels)"
            raise InvalidQueryError(exc.reason, message) from exc
        finally:
            self._decode_slots.release()

    def _decode_result(self, path: str | Path):
        """A result image for localization: the server's limits, at the localization scale."""
        return self._decode(path, None, reduce_to=self.config.localization_size)
