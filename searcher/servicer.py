"""gRPC servicer: protobuf <-> `SearchEngine`, every outcome -> a gRPC status code, one log line
per request (method, status, ms, request id), metrics."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from dffsearch.v1 import search_pb2, search_pb2_grpc

from indexer import IndexerError

from .engine import (
    ImageNotFoundError,
    InvalidQueryError,
    QueryDeadlineError,
    SearchEngine,
    SearchEngineError,
    SearchOutcome,
)
from .metrics import SearcherMetrics

_ADD_OUTCOMES = {"added": search_pb2.ADDED, "duplicate": search_pb2.DUPLICATE, "skipped": search_pb2.SKIPPED}
log = logging.getLogger("dff-serve.requests")
REQUEST_ID_HEADER = "x-request-id"
SHUTTING_DOWN = "dff-serve is shutting down; retry on another replica or once it has restarted"


def heatmap_message(heatmap: np.ndarray | None) -> search_pb2.Heatmap | None:
    if heatmap is None:
        return None
    array = np.asarray(heatmap, dtype=np.float32)
    return search_pb2.Heatmap(height=array.shape[0], width=array.shape[1], values=array.ravel().tolist())


def search_response(outcome: SearchOutcome) -> search_pb2.SearchResponse:
    response = search_pb2.SearchResponse(
        query_factors=outcome.query_factors,
        query_width=outcome.query_size[0],
        query_height=outcome.query_size[1],
        reranked=outcome.reranked,
        notes=outcome.notes,
    )
    for hit in outcome.hits:
        result = response.results.add(
            id=hit.id,
            path=hit.path,
            key=hit.key,
            score=hit.score,
            rank=hit.rank,
            image_missing=hit.image_missing,
            width=hit.width,
            height=hit.height,
        )
        if hit.box is not None:
            result.box.CopyFrom(search_pb2.Box(x0=hit.box[0], y0=hit.box[1], x1=hit.box[2], y1=hit.box[3]))
        heatmap = heatmap_message(hit.heatmap)
        if heatmap is not None:
            result.heatmap.CopyFrom(heatmap)
        if hit.shared_concept is not None:
            result.shared_concept = hit.shared_concept
            result.shared_concept_heatmap.CopyFrom(heatmap_message(hit.shared_concept_heatmap))
    heatmap = heatmap_message(outcome.query_heatmap)
    if heatmap is not None:
        response.query_heatmap.CopyFrom(heatmap)
    for concept in outcome.concepts:
        response.query_concepts.add(
            index=concept.index, heatmap=heatmap_message(concept.heatmap), kept=concept.kept, weight=concept.weight
        )
    for stage, milliseconds in outcome.stages_ms.items():
        response.stages.add(stage=stage, milliseconds=milliseconds)
    return response


class RpcRefusal(Exception):
    """A refusal with a status code and a message for the client (raised inside a handler)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class ServiceLimits:
    """What one request may cost (dff-serve flags); each refusal names its flag."""

    max_add_images: int = 1000
    max_add_bytes: int = 256 * 1024 * 1024
    # SearchService RPCs in flight at once (`--max-in-flight`); kept below the gRPC thread pool so
    # that the threads left over always answer health checks and GetIndexInfo, however many heavy
    # requests arrive (a handler thread waiting for a decode slot still occupies its thread)
    max_in_flight: int | None = None


class AdmissionGate:
    """At most `limit` requests in flight; one more is refused at once (RESOURCE_EXHAUSTED naming
    the flag) rather than queued on a handler thread, where it would hold the thread that a health
    probe needs."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self.in_flight = 0
        self.refused = 0  # requests refused so far (tests and logs)

    def enter(self, method: str) -> None:
        if self.limit is None:
            return
        with self._lock:
            if self.in_flight >= self.limit:
                self.refused += 1
                raise RpcRefusal(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"dff-serve is busy: {self.in_flight} requests in flight, the most it takes at once "
                    f"(dff-serve --max-in-flight {self.limit}); retry {method} with backoff",
                )
            self.in_flight += 1

    def leave(self) -> None:
        if self.limit is None:
            return
        with self._lock:
            self.in_flight -= 1


class RequestHold:
    """Test hook: `DFF_SERVE_TEST_HOLD=DIR` makes every Search create `DIR/held` once it is in
    flight and wait until `DIR/release` exists (at most `timeout` seconds), so that a test can
    send SIGTERM or run out a deadline while a request is provably in flight."""

    ENV = "DFF_SERVE_TEST_HOLD"

    def __init__(self, folder: str | Path, timeout: float = 120.0) -> None:
        self.folder, self.timeout = Path(folder), timeout

    @classmethod
    def from_env(cls) -> RequestHold | None:
        folder = os.environ.get(cls.ENV)
        return cls(folder) if folder else None

    def wait(self) -> None:
        (self.folder / "held").touch()
        give_up = time.monotonic() + self.timeout
        while not (self.folder / "release").exists() and time.monotonic() < give_up:
            time.sleep(0.01)


def _request_id(context: grpc.ServicerContext) -> str:
    """The caller's `x-request-id` (if sane) or a fresh one; sent back as trailing metadata."""
    supplied = dict(context.invocation_metadata() or ()).get(REQUEST_ID_HEADER, "")
    if isinstance(supplied, str) and 0 < len(supplied) <= 64 and all(c.isalnum() or c in "-_." for c in supplied):
        return supplied
    return uuid.uuid4().hex[:16]


class _Call:
    """One RPC: its request id, the mapping of every outcome to a status code, one log line and
    the metrics. Engine errors map to INVALID_ARGUMENT / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED;
    anything unexpected to INTERNAL (logged with its traceback under the request id); any failure
    while the server is shutting down to UNAVAILABLE."""

    def __init__(
        self, servicer: SearchServicer, method: str, context: grpc.ServicerContext, gated: bool = True
    ) -> None:
        self.servicer, self.method, self.context = servicer, method, context
        self.gated, self.admitted = gated, False
        self.metrics = servicer.metrics
        self.code = grpc.StatusCode.OK
        self.request_id = _request_id(context)
        self.start = time.perf_counter()

    def __enter__(self) -> _Call:
        with contextlib.suppress(Exception):  # the client may already be gone
            self.context.set_trailing_metadata(((REQUEST_ID_HEADER, self.request_id),))
        if self.metrics is not None:
            self.metrics.in_flight.inc()
        if self.servicer.draining.is_set():
            self._finish()
            self.code = grpc.StatusCode.UNAVAILABLE
            self._record()
            self.context.abort(self.code, SHUTTING_DOWN)
        if self.gated:
            try:
                self.servicer.gate.enter(self.method)
            except RpcRefusal as refusal:
                self._finish()
                self.code = refusal.code
                self._record()
                self.context.abort(refusal.code, str(refusal))
            self.admitted = True
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self._finish()
            self._record()
            return False
        code, message = self._status_for(exc)
        self.code = code
        self._finish()
        self._record()
        if code is None:  # context.abort's own exception: the status is already set
            return False
        self.context.abort(code, message)
        return False  # not reached: abort raises

    def _status_for(self, exc: BaseException) -> tuple[grpc.StatusCode | None, str]:
        if isinstance(exc, RpcRefusal):
            if exc.code == grpc.StatusCode.INTERNAL:  # a failure we named (disk full, ...): log its cause
                cause = exc.__cause__ or exc
                log.error(
                    "%s request_id=%s: %s", self.method, self.request_id, exc,
                    exc_info=(type(cause), cause, cause.__traceback__),
                )
                return exc.code, f"{exc} (request id {self.request_id})"
            return exc.code, str(exc)
        if isinstance(exc, InvalidQueryError):
            return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        if isinstance(exc, QueryDeadlineError):
            return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)
        if self.servicer.draining.is_set():
            return grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN
        if type(exc) is Exception and self.context.code() not in (None, grpc.StatusCode.OK):
            return None, ""  # raised by context.abort (a bare Exception)
        log.error(
            "%s request_id=%s failed unexpectedly", self.method, self.request_id,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return grpc.StatusCode.INTERNAL, (
            f"internal error in {self.method} ({type(exc).__name__}); the server log has the details "
            f"under request id {self.request_id}"
        )

    def _finish(self) -> None:
        if self.admitted:
            self.admitted = False
            self.servicer.gate.leave()
        if self.metrics is not None:
            self.metrics.in_flight.dec()

    def _record(self) -> None:
        seconds = time.perf_counter() - self.start
        code = self.code if self.code is not None else (self.context.code() or grpc.StatusCode.UNKNOWN)
        if self.metrics is not None:
            self.metrics.observe_request(self.method, code.name, seconds)
        log.info("%s %s %.1f ms request_id=%s", self.method, code.name, seconds * 1000.0, self.request_id)


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(
        self,
        engine: SearchEngine,
        metrics: SearcherMetrics | None = None,
        limits: ServiceLimits | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.limits = limits or ServiceLimits()
        self.gate = AdmissionGate(self.limits.max_in_flight)
        # set when the server starts shutting down: new RPCs get UNAVAILABLE, in-flight ones finish
        self.draining = threading.Event()
        self.hold = RequestHold.from_env()
        if metrics is not None:
            metrics.indexed_images.set(engine.count)

    def Search(self, request, context):
        with _Call(self, "Search", context):
            if self.hold is not None:
                self.hold.wait()
            remaining = context.time_remaining()
            deadline = time.monotonic() + remaining if remaining is not None else None
            box = None
            if request.HasField("box"):
                box = (request.box.x0, request.box.y0, request.box.x1, request.box.y1)
            outcome = self.engine.query(
                request.image,
                box,
                top_k=request.top_k,
                query_expansion=request.query_expansion,
                localize=request.localize,
                # absent: the server's default depth (dff-serve --rerank); 0: off
                rerank=request.rerank if request.HasField("rerank") else None,
                with_heatmaps=request.return_heatmaps,
                with_concepts=request.return_concepts,
                deadline=deadline,
                expansion=request.expansion,
            )
            if self.metrics is not None:
                self.metrics.observe_stages(outcome.stages_ms)
            return search_response(outcome)

    def _receive_uploads(self, request_iterator) -> tuple[list[tuple[str, bytes]], bool]:
        """The uploads, and the first message's `skip_invalid`."""
        items, total, skip_invalid = [], 0, False
        limits = self.limits
        for message in request_iterator:
            if not items:
                skip_invalid = bool(message.skip_invalid)
            items.append((message.key, message.image))
            total += len(message.image)
            if len(items) > limits.max_add_images:
                raise RpcRefusal(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"AddImages takes at most {limits.max_add_images} images per call (dff-serve "
                    "--max-add-images); split the upload; nothing was added",
                )
            if total > limits.max_add_bytes:
                raise RpcRefusal(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"AddImages takes at most {limits.max_add_bytes / 2**20:.0f} MiB of images per call "
                    "(dff-serve --max-add-mb); split the upload; nothing was added",
                )
        return items, skip_invalid

    def AddImages(self, request_iterator, context):
        with _Call(self, "AddImages", context):
            items, skip_invalid = self._receive_uploads(request_iterator)
            remaining = context.time_remaining()
            deadline = time.monotonic() + remaining if remaining is not None else None
            try:
                added = self.engine.add_images(items, skip_invalid=skip_invalid, deadline=deadline)
            except (InvalidQueryError, QueryDeadlineError):
                raise
            except (SearchEngineError, IndexerError, OSError) as exc:  # disk full, index damaged, ...
                raise RpcRefusal(
                    grpc.StatusCode.INTERNAL, f"adding failed: {type(exc).__name__}: {exc}"
                ) from exc
            if self.metrics is not None:
                self.metrics.indexed_images.set(self.engine.count)
            response = search_pb2.AddImagesResponse(count=self.engine.count, generation=self.engine.generation)
            for item in added:
                response.added.add(
                    id=item.id, key=item.key, path=item.path, duplicate=item.duplicate,
                    outcome=_ADD_OUTCOMES[item.outcome], reason=item.reason, message=item.message,
                )
            return response

    def RemoveImages(self, request, context):
        with _Call(self, "RemoveImages", context):
            try:
                removed = self.engine.remove_images(ids=list(request.ids), paths=list(request.paths))
            except (InvalidQueryError, QueryDeadlineError):
                raise
            except (SearchEngineError, IndexerError, OSError) as exc:
                raise RpcRefusal(
                    grpc.StatusCode.INTERNAL, f"removing failed: {type(exc).__name__}: {exc}"
                ) from exc
            if removed == 0:
                raise RpcRefusal(
                    grpc.StatusCode.NOT_FOUND,
                    f"none of ids {list(request.ids)} / paths {list(request.paths)} is in the index; "
                    "nothing was removed (search first to get ids)",
                )
            if self.metrics is not None:
                self.metrics.indexed_images.set(self.engine.count)
            return search_pb2.RemoveImagesResponse(
                removed=removed, count=self.engine.count, generation=self.engine.generation
            )

    def GetIndexInfo(self, request, context):
        import json

        with _Call(self, "GetIndexInfo", context, gated=False):  # cheap: never refused
            info = self.engine.info()
            return search_pb2.IndexInfo(
                count=info["count"],
                backbone=info["backbone"],
                method=info["method"],
                image_size=info["image_size"],
                dimension=info["dimension"],
                max_top_k=info["max_top_k"],
                rerank=info["rerank"],
                max_rerank=info["max_rerank"],
                manifest_json=json.dumps(info["manifest"], sort_keys=True, default=str),
                index_dir=info["index_dir"],
            )

    def GetImage(self, request, context):
        with _Call(self, "GetImage", context):
            try:
                image = self.engine.image(request.id, max_side=request.max_side)
            except ImageNotFoundError as exc:
                raise RpcRefusal(grpc.StatusCode.NOT_FOUND, str(exc)) from exc
            return search_pb2.ImageData(
                id=image.id, data=image.data, content_type=image.content_type, width=image.width,
                height=image.height, path=image.path, key=image.key,
            )
