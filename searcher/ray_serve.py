"""`dff-serve --ray`: the search service as a Ray Serve application with gRPC ingress.

Deployments (one application, `dffsearch`):

- `SearchIngress` (gRPC, `dffsearch.v1.SearchService` + `grpc.health.v1.Health`): checks the
  bearer token, asks an encoder for the query vector, fans the FAISS search out to every shard,
  merges the top-k (`searcher.shards.merge_top_k`), re-ranks the first N by the factor rows and
  runs query expansion with the engine's ranking (`searcher.ranking.rank` over a `ShardedIndex`: the
  same code as `dff-serve`), looks the paths up, answers;
- `QueryEncoder` (replicated; fixed `--replicas` or autoscaling between `--min-replicas` and
  `--max-replicas`): decode -> backbone -> NMF -> descriptor with the index's extractor and
  whitening (`Extractor.local_rows` + `global_descriptor`, the encoding of `descriptors.encode`),
  and the localization of results (`searcher.localize.Localizer`);
- `IndexShard0..S-1`: shard s holds the vectors with `id % S == s` (`searcher.shards`), and
  answers for their stored factor rows (re-ranking) and paths.

The application follows the index directory: every `follow_s` seconds each shard reads the
manifest's generation (the commit point of `dff-index add/remove/compact`) and, when it changed,
reopens its part of the new generation and swaps it in; the ingress re-reads the manifest and
the count as often. So an offline `dff-index add INDEX ...` becomes visible to the app within
~`follow_s` seconds plus the time to reopen a shard. The app itself does not write:
AddImages/RemoveImages answer UNIMPLEMENTED and name the command to use instead. Every node must
see the index directory at the same path.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from descriptors.rerank import DEFAULT_DEPTH

from .ranking import MAX_RERANK, apply_localization, rank, rerank_problem
from .shards import merge_top_k, open_index_part, shard_of

APP_NAME = "dffsearch"
# how often the shards and the ingress look for a new generation of the index (seconds)
FOLLOW_S = 2.0
log = logging.getLogger("dffsearch.ray_serve")
SERVICER_FUNCTIONS = [
    "dffsearch.v1.search_pb2_grpc.add_SearchServiceServicer_to_server",
    "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",
]


@dataclass
class RayServeConfig:
    """`dff-serve --ray` settings (its flags)."""

    index: Path
    address: str = "local"
    port: int = 50051
    http_port: int = 0  # Ray Serve's HTTP proxy (unused by us, but Serve starts one): 0 = a free port
    replicas: int = 1  # query encoder replicas (fixed)
    min_replicas: int | None = None  # with max_replicas: autoscaling bounds instead of `replicas`
    max_replicas: int | None = None
    shards: int = 1
    encoder_cpus: float = 1.0
    encoder_gpus: float = 0.0
    device: str = "cpu"
    token: str | None = None
    max_top_k: int = 100
    max_query_expansion: int = 50
    rerank: int = DEFAULT_DEPTH  # re-ranking depth of a search that does not say (dff-serve --rerank; 0: off)
    max_rerank: int = MAX_RERANK
    follow_s: float = FOLLOW_S  # 0: serve the generation found at start-up (a snapshot)
    extra: dict = field(default_factory=dict)

    def encoder_scaling(self) -> dict:
        if self.min_replicas is None and self.max_replicas is None:
            return {"num_replicas": max(1, self.replicas)}
        low = max(1, self.min_replicas or 1)
        high = max(low, self.max_replicas or low)
        return {"autoscaling_config": {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": 2}}


@dataclass
class EncodedQuery:
    descriptor: np.ndarray | None
    rows: np.ndarray | None = None  # the query's local rows (a box query: the factors it kept), for re-ranking
    query_factors: int = 0
    size: tuple[int, int] = (0, 0)
    stages_ms: dict = field(default_factory=dict)
    error: tuple[str, str] | None = None  # (InvalidQueryError.reason, message)


class QueryEncoder:
    def __init__(self, index_dir: str, device: str = "cpu") -> None:
        import indexer
        from descriptors.whitening import PCAWhitening
        from indexer.manifest import WHITENING_NAME

        from .localize import Localizer

        manifest = indexer.read_manifest(index_dir)
        self.extractor = indexer.build_extractor(manifest, device)
        self.whitening = None
        if int(manifest["whitening"].get("dim", 0)) > 0:
            self.whitening = PCAWhitening.load(Path(index_dir) / WHITENING_NAME)
        self.localizer = Localizer(self.extractor.backbone, self.extractor.config, image_size=224)

    def _image(self, image: bytes, box):
        from descriptors.encode import decode_options
        from descriptors.images import DEFAULT_MAX_PIXELS, decode_image, full_size

        from .errors import validate_box

        # decoded as dff-serve, the indexer and dff-eval decode (descriptors.encode.decode_options)
        options = decode_options(self.extractor.image_size, box, self.extractor.config)
        img = decode_image(image, max_pixels=DEFAULT_MAX_PIXELS, min_side=16, **options)
        return img, validate_box(box, *full_size(img))

    def encode(self, image: bytes, box) -> EncodedQuery:
        from descriptors.images import ImageDecodeError, full_size

        from .errors import InvalidQueryError

        started = time.perf_counter()
        try:
            img, query_box = self._image(image, box)
        except ImageDecodeError as exc:
            return EncodedQuery(None, error=(exc.reason, str(exc)))
        except InvalidQueryError as exc:
            return EncodedQuery(None, error=(getattr(exc, "reason", "bad-box"), str(exc)))
        decoded = time.perf_counter()
        rows = self.extractor.local_rows([img], [query_box])[0]
        encoded = time.perf_counter()
        descriptor = np.asarray(self.extractor.global_descriptor(rows, self.whitening), dtype=np.float32)
        stages = {
            "decode": 1000 * (decoded - started),
            "forward+nmf": 1000 * (encoded - decoded),
            "descriptor": 1000 * (time.perf_counter() - encoded),
        }
        return EncodedQuery(descriptor, np.asarray(rows, np.float32), int(rows.shape[0]), full_size(img), stages)

    def localize(self, image: bytes, box, paths: list[str], with_heatmaps: bool, with_concepts: bool = False):
        img, query_box = self._image(image, box)
        return self.localizer.localize(
            img, query_box, paths, with_heatmaps=with_heatmaps, with_concepts=with_concepts
        )


def manifest_generation(index_dir: str) -> int:
    import indexer

    return int(indexer.read_manifest(index_dir)["generation"])


class IndexShard:
    """Shard `shard` of `shards` of the index, reopened when the index moves to a new generation."""

    def __init__(self, index_dir: str, shard: int, shards: int, follow_s: float = FOLLOW_S) -> None:
        self.index_dir, self.shard, self.shards = index_dir, shard, shards
        self.index = open_index_part(index_dir, shard, shards)
        if follow_s > 0:
            threading.Thread(target=self._follow, args=(follow_s,), name="follow-generation", daemon=True).start()

    def _follow(self, every: float) -> None:
        while True:
            time.sleep(every)
            try:
                if manifest_generation(self.index_dir) != self.index.generation:
                    # built beside the old part, then swapped: searches in flight finish on the old
                    # one (released when they drop it), new ones see the new generation whole
                    self.index = open_index_part(self.index_dir, self.shard, self.shards)
                    log.info("shard %d/%d: now at generation %d", self.shard, self.shards, self.index.generation)
            except Exception:  # a half-visible commit, a compaction in progress: try again next time
                log.warning("shard %d/%d: cannot follow the index yet", self.shard, self.shards, exc_info=True)

    def generation(self) -> int:
        return self.index.generation

    def count(self) -> int:
        return self.index.count

    def search(self, queries: np.ndarray, k: int):
        return self.index.search(queries, k)

    def vectors(self, ids: list[int]) -> np.ndarray:
        return self.index.vectors(ids)

    def paths(self, ids: list[int]) -> list[str | None]:
        return self.index.paths(ids)

    def factor_rows(self, ids: list[int]) -> list[np.ndarray]:
        """The stored re-ranking rows of ids this shard owns (`OpenIndex.factor_rows`)."""
        return self.index.factor_rows(ids)

    def encode_query_rows(self, rows: np.ndarray) -> np.ndarray:
        """A query's rows in the stored rows' space (the index's whitening and codec, one per index)."""
        return self.index.encode_query_rows(rows)


class ShardedIndex:
    """The `.count / .search / .vectors / .paths / .factor_rows / .encode_query_rows` of an
    OpenIndex, answered by shard deployments: what `searcher.ranking.rank` needs."""

    def __init__(self, handles: list, follow_s: float = FOLLOW_S) -> None:
        self.handles, self.follow_s = handles, follow_s
        self._count: tuple[float, int] | None = None  # (when asked, count)

    @property
    def count(self) -> int:
        # asked on first use, not in __init__: a replica's constructor must not block on handles;
        # then again every follow_s seconds (the shards follow the index's generation)
        now = time.monotonic()
        if self._count is None or (self.follow_s > 0 and now - self._count[0] >= self.follow_s):
            self._count = (now, sum(p.result() for p in [h.count.remote() for h in self.handles]))
        return self._count[1]

    def search(self, queries: np.ndarray, k: int):
        pending = [h.search.remote(queries, k) for h in self.handles]  # all shards at once
        return merge_top_k([p.result() for p in pending], k)

    def _by_owner(self, method: str, ids) -> list:
        ids = [int(i) for i in ids]
        owners = shard_of(np.asarray(ids, dtype=np.int64), len(self.handles)) if ids else []
        out: list = [None] * len(ids)
        pending = []
        for s, handle in enumerate(self.handles):
            positions = [p for p, o in enumerate(owners) if o == s]
            if positions:
                pending.append((positions, getattr(handle, method).remote([ids[p] for p in positions])))
        for positions, response in pending:
            for p, value in zip(positions, response.result(), strict=True):
                out[p] = value
        return out

    def vectors(self, ids) -> np.ndarray:
        rows = self._by_owner("vectors", ids)
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)

    def paths(self, ids) -> list[str | None]:
        return self._by_owner("paths", ids)

    def factor_rows(self, ids) -> list[np.ndarray]:
        return self._by_owner("factor_rows", ids)

    def encode_query_rows(self, rows: np.ndarray) -> np.ndarray:
        # every shard holds the index's codec and whitening: the first one answers
        return self.handles[0].encode_query_rows.remote(rows).result()


class SearchIngress:
    """gRPC methods of `dffsearch.v1.SearchService` and `grpc.health.v1.Health` (by method name)."""

    def __init__(
        self, index_dir: str, encoder, shards: list, token: str | None, max_top_k: int, max_qe: int,
        follow_s: float = FOLLOW_S, rerank: int = DEFAULT_DEPTH, max_rerank: int = MAX_RERANK,
    ) -> None:
        import indexer

        self.index_dir, self.encoder, self.max_top_k, self.max_qe = index_dir, encoder, max_top_k, max_qe
        self.rerank, self.max_rerank = rerank, max_rerank
        self.follow_s = follow_s
        self._manifest = (time.monotonic(), indexer.read_manifest(index_dir))
        self.index = ShardedIndex(shards, follow_s)
        from .uploads import UploadKeys

        self.keys = UploadKeys(Path(index_dir))
        self.catalog = None  # GetImage's read-only view of the catalog
        self.expected = f"Bearer {token}".encode() if token else None
        self.stage_seconds = None
        try:  # exported through Ray's metrics agent (Prometheus) with Serve's own request metrics
            from ray.serve.metrics import Histogram

            from .metrics import LATENCY_BUCKETS

            self.stage_seconds = Histogram(
                "dffsearch_stage_seconds", "Search latency per stage", boundaries=list(LATENCY_BUCKETS),
                tag_keys=("stage",),
            )
        except Exception:  # metrics are best effort; searching is not
            pass

    @property
    def manifest(self) -> dict:
        """The index's manifest, re-read every follow_s seconds (GetIndexInfo, GetImage)."""
        if self.follow_s > 0 and time.monotonic() - self._manifest[0] >= self.follow_s:
            return self._reread_manifest()
        return self._manifest[1]

    def _fail(self, grpc_context, code, message: str):
        grpc_context.set_code(code)
        grpc_context.set_details(message)
        raise RuntimeError(message)  # Serve keeps the code and details set above

    def _authorize(self, grpc_context) -> None:
        import grpc

        from .auth import token_problem

        if self.expected is not None:
            problem = token_problem(self.expected, grpc_context.invocation_metadata())
            if problem is not None:
                self._fail(grpc_context, grpc.StatusCode.UNAUTHENTICATED, problem)

    def Search(self, request, grpc_context):
        import grpc

        from indexer.factor_rows import has_factor_rows

        from .concurrency import StageClock
        from .engine import NO_FACTOR_ROWS_NOTE, SearchHit, SearchOutcome
        from .servicer import search_response

        self._authorize(grpc_context)
        top_k, depth = int(request.top_k), int(request.query_expansion)
        if not 1 <= top_k <= self.max_top_k:
            self._fail(grpc_context, grpc.StatusCode.INVALID_ARGUMENT,
                       f"top_k={top_k} is out of range; ask for 1 to {self.max_top_k} results")
        if not 0 <= depth <= self.max_qe:
            self._fail(grpc_context, grpc.StatusCode.INVALID_ARGUMENT,
                       f"query_expansion={depth} is out of range; use 0 (off) to {self.max_qe}")
        if request.expansion not in ("", "average"):  # the shards hold no diffusion graph
            self._fail(grpc_context, grpc.StatusCode.INVALID_ARGUMENT,
                       f"expansion={request.expansion!r}: the Ray Serve deployment serves average query expansion only; "
                       "use dff-serve for alpha and diffusion")
        # absent: the deployment's default depth (dff-serve --rerank); 0: off
        rerank = int(request.rerank) if request.HasField("rerank") else self.rerank
        problem = rerank_problem(rerank, self.max_rerank)
        if problem is not None:
            self._fail(grpc_context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        notes = []
        if rerank and not has_factor_rows(self.manifest):
            notes.append(NO_FACTOR_ROWS_NOTE)
            rerank = 0
        box = None
        if request.HasField("box"):
            box = (request.box.x0, request.box.y0, request.box.x1, request.box.y1)
        query = self.encoder.encode.remote(request.image, box).result()
        if query.error is not None:
            self._fail(grpc_context, grpc.StatusCode.INVALID_ARGUMENT, query.error[1])
        clock = StageClock(None)
        scores, ids = rank(
            self.index, query.descriptor, top_k, depth, clock, rows=query.rows if rerank else None, rerank=rerank
        )
        keep = ids >= 0
        scores, ids = scores[keep], ids[keep]
        paths = self.index.paths(ids)
        hits = [
            SearchHit(id=int(i), path=p or "", score=float(s), rank=r, key=self.keys.key_for(p))
            for r, (i, s, p) in enumerate(zip(ids, scores, paths, strict=True), start=1)
        ]
        outcome = SearchOutcome(
            hits=hits, query_factors=query.query_factors, query_size=query.size,
            reranked=min(rerank, int(self.index.count)), notes=notes,
        )
        outcome.stages_ms = {**query.stages_ms, **clock.ms}
        if request.localize and hits:
            started = time.perf_counter()
            result = self.encoder.localize.remote(
                request.image, box, [h.path for h in hits], bool(request.return_heatmaps),
                bool(request.return_concepts),
            ).result()
            apply_localization(outcome, result, bool(request.return_heatmaps))
            outcome.stages_ms["localization"] = 1000 * (time.perf_counter() - started)
        if self.stage_seconds is not None:
            for stage, ms in outcome.stages_ms.items():
                self.stage_seconds.observe(ms / 1000.0, tags={"stage": stage})
        return search_response(outcome)

    def GetIndexInfo(self, request, grpc_context):
        from dffsearch.v1 import search_pb2

        from indexer.factor_rows import has_factor_rows

        self._authorize(grpc_context)
        m = self.manifest
        return search_pb2.IndexInfo(
            count=self.index.count, backbone=m["backbone"]["name"], method=str(m.get("descriptor", {}).get("method", "")),
            image_size=int(m["image_size"]), dimension=int(m["dim"]), max_top_k=self.max_top_k,
            # the default depth a search gets (0: the index stores no factor rows), as dff-serve says it
            rerank=self.rerank if has_factor_rows(m) else 0, max_rerank=self.max_rerank,
            manifest_json=json.dumps(m, sort_keys=True, default=str), index_dir=str(self.index_dir),
        )

    def _reread_manifest(self) -> dict:
        import indexer

        self._manifest = (time.monotonic(), indexer.read_manifest(self.index_dir))
        return self._manifest[1]

    def _stored_path(self, image_id: int, manifest: dict) -> str:
        """The absolute path of an indexed image at the manifest's generation."""
        from indexer.catalog import Catalog
        from indexer.manifest import CATALOG_NAME

        from .stored_images import indexed_image_path

        if self.catalog is None:  # opened on first use (read-only), at the manifest's generation
            self.catalog = Catalog(Path(self.index_dir) / CATALOG_NAME, readonly=True, generation=int(manifest["generation"]))
        self.catalog.set_generation(int(manifest["generation"]))
        return indexed_image_path(self.catalog, image_id, manifest["source_root"], self.index_dir)

    def GetImage(self, request, grpc_context):
        import grpc
        from dffsearch.v1 import search_pb2

        from .stored_images import ImageNotFoundError, load_stored_image

        self._authorize(grpc_context)
        try:
            try:
                path = self._stored_path(request.id, self.manifest)
            except ImageNotFoundError:
                # the shards follow the index on their own clock: a search may already have returned
                # an id of a generation newer than the manifest cached here, so look once more, fresh
                path = self._stored_path(request.id, self._reread_manifest())
            image = load_stored_image(request.id, path, request.max_side, key=self.keys.key_for(path))
        except ImageNotFoundError as exc:
            self._fail(grpc_context, grpc.StatusCode.NOT_FOUND, str(exc))
        return search_pb2.ImageData(
            id=image.id, data=image.data, content_type=image.content_type, width=image.width,
            height=image.height, path=image.path, key=image.key,
        )

    def _read_only(self, grpc_context, method: str):
        import grpc

        self._authorize(grpc_context)
        command = "dff-index add INDEX FILE..." if method == "AddImages" else "dff-index remove INDEX --ids ..."
        then = (
            f"the app follows the index and serves the new generation within ~{self.follow_s:g} s"
            if self.follow_s > 0 else "then redeploy (this app serves a snapshot: follow_s=0)"
        )
        self._fail(grpc_context, grpc.StatusCode.UNIMPLEMENTED,
                   f"{method}: dff-serve --ray does not write the index; run `{command}` on {self.index_dir} "
                   f"(on any node that sees it): {then}")

    def AddImages(self, request_iterator, grpc_context):
        self._read_only(grpc_context, "AddImages")

    def RemoveImages(self, request, grpc_context):
        self._read_only(grpc_context, "RemoveImages")

    def Check(self, request, grpc_context=None):
        from grpc_health.v1 import health_pb2

        # this replica runs only once Serve found every deployment of the app healthy
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def build_app(config: RayServeConfig):
    """The Serve application (not yet running): ingress bound to the encoder and the shards."""
    from ray import serve

    index_dir = str(Path(config.index).resolve())
    encoder = serve.deployment(
        QueryEncoder, name="QueryEncoder", max_ongoing_requests=4,
        ray_actor_options={"num_cpus": config.encoder_cpus, "num_gpus": config.encoder_gpus},
        **config.encoder_scaling(),
    ).bind(index_dir, config.device)
    shards = [
        serve.deployment(IndexShard, name=f"IndexShard{s}", ray_actor_options={"num_cpus": 0.1}).bind(
            index_dir, s, config.shards, config.follow_s
        )
        for s in range(config.shards)
    ]
    ingress = serve.deployment(
        SearchIngress, name="SearchIngress", max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.1}
    )
    return ingress.bind(
        index_dir, encoder, shards, config.token, config.max_top_k, config.max_query_expansion, config.follow_s,
        config.rerank, config.max_rerank,
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_on_ray(config: RayServeConfig) -> int:
    """Join/start Ray, start Serve's gRPC proxy on `config.port`, deploy the app; returns the port."""
    from indexer.ray_cluster import connect

    connect(config.address)
    from ray import serve

    if config.shards < 1:
        raise ValueError(f"--shards must be >= 1, got {config.shards}")
    if (problem := rerank_problem(config.rerank, config.max_rerank)) is not None:
        raise ValueError(problem)
    import indexer
    from indexer.factor_rows import has_factor_rows

    from .engine import NO_FACTOR_ROWS_NOTE

    if config.rerank and not has_factor_rows(indexer.read_manifest(config.index)):  # once here, and in each search's notes
        log.warning("re-ranking (--rerank %d) is skipped for every search: %s", config.rerank, NO_FACTOR_ROWS_NOTE)
    serve.start(
        http_options={"host": "127.0.0.1", "port": config.http_port or _free_port()},
        grpc_options={"port": config.port, "grpc_servicer_functions": SERVICER_FUNCTIONS},
    )
    # a route prefix registers the app with the proxies (None would hide it from gRPC routing too)
    serve.run(build_app(config), name=APP_NAME, route_prefix=f"/{APP_NAME}", blocking=False)
    return config.port


def stop_on_ray(disconnect: bool = False) -> None:
    """Delete the application; `disconnect`: also leave the cluster (stops a local one)."""
    import ray
    from ray import serve

    serve.delete(APP_NAME)
    if disconnect:
        ray.shutdown()
