"""gRPC servicer: protobuf <-> `SearchEngine`, engine errors -> gRPC status codes, metrics."""

from __future__ import annotations

import time

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

MAX_ADD_IMAGES = 1000


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


class _Call:
    """Times one RPC and records its final status code (set by `fail`)."""

    def __init__(self, metrics: SearcherMetrics | None, method: str) -> None:
        self.metrics, self.method, self.code = metrics, method, grpc.StatusCode.OK
        self.start = time.perf_counter()

    def __enter__(self):
        if self.metrics is not None:
            self.metrics.in_flight.inc()
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and self.code == grpc.StatusCode.OK:
            self.code = grpc.StatusCode.UNKNOWN  # what grpc reports for an unhandled exception
        if self.metrics is not None:
            self.metrics.in_flight.dec()
            self.metrics.observe_request(self.method, self.code.name, time.perf_counter() - self.start)
        return False

    def fail(self, context: grpc.ServicerContext, code: grpc.StatusCode, message: str):
        self.code = code
        context.abort(code, message)


class SearchServicer(search_pb2_grpc.SearchServiceServicer):
    def __init__(self, engine: SearchEngine, metrics: SearcherMetrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        if metrics is not None:
            metrics.indexed_images.set(engine.count)

    def Search(self, request, context):
        with _Call(self.metrics, "Search") as call:
            remaining = context.time_remaining()
            deadline = time.monotonic() + remaining if remaining is not None else None
            box = None
            if request.HasField("box"):
                box = (request.box.x0, request.box.y0, request.box.x1, request.box.y1)
            try:
                outcome = self.engine.query(
                    request.image,
                    box,
                    top_k=request.top_k,
                    query_expansion=request.query_expansion,
                    localize=request.localize,
                    with_heatmaps=request.return_heatmaps,
                    with_concepts=request.return_concepts,
                    deadline=deadline,
                )
            except InvalidQueryError as exc:
                call.fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except QueryDeadlineError as exc:
                call.fail(context, grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
            if self.metrics is not None:
                self.metrics.observe_stages(outcome.stages_ms)
            return search_response(outcome)

    def AddImages(self, request_iterator, context):
        with _Call(self.metrics, "AddImages") as call:
            items = []
            for message in request_iterator:
                items.append((message.key, message.image))
                if len(items) > MAX_ADD_IMAGES:
                    call.fail(
                        context,
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"AddImages takes at most {MAX_ADD_IMAGES} images per call; split the upload",
                    )
            try:
                added = self.engine.add_images(items)
            except InvalidQueryError as exc:
                call.fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except (SearchEngineError, IndexerError, OSError) as exc:  # disk full, index damaged, ...
                call.fail(context, grpc.StatusCode.INTERNAL, f"adding failed: {type(exc).__name__}: {exc}")
            if self.metrics is not None:
                self.metrics.indexed_images.set(self.engine.count)
            response = search_pb2.AddImagesResponse(count=self.engine.count)
            for item in added:
                response.added.add(id=item.id, key=item.key, path=item.path, duplicate=item.duplicate)
            return response

    def RemoveImages(self, request, context):
        with _Call(self.metrics, "RemoveImages") as call:
            try:
                removed = self.engine.remove_images(ids=list(request.ids), paths=list(request.paths))
            except InvalidQueryError as exc:
                call.fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except (SearchEngineError, IndexerError, OSError) as exc:
                call.fail(context, grpc.StatusCode.INTERNAL, f"removing failed: {type(exc).__name__}: {exc}")
            if removed == 0:
                call.fail(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"none of ids {list(request.ids)} / paths {list(request.paths)} is in the index; "
                    "nothing was removed (search first to get ids)",
                )
            if self.metrics is not None:
                self.metrics.indexed_images.set(self.engine.count)
            return search_pb2.RemoveImagesResponse(removed=removed, count=self.engine.count)

    def GetIndexInfo(self, request, context):
        import json

        with _Call(self.metrics, "GetIndexInfo"):
            info = self.engine.info()
            return search_pb2.IndexInfo(
                count=info["count"],
                backbone=info["backbone"],
                method=info["method"],
                image_size=info["image_size"],
                dimension=info["dimension"],
                max_top_k=info["max_top_k"],
                manifest_json=json.dumps(info["manifest"], sort_keys=True, default=str),
                index_dir=info["index_dir"],
            )

    def GetImage(self, request, context):
        with _Call(self.metrics, "GetImage") as call:
            try:
                image = self.engine.image(request.id, max_side=request.max_side)
            except ImageNotFoundError as exc:
                call.fail(context, grpc.StatusCode.NOT_FOUND, str(exc))
            return search_pb2.ImageData(
                id=image.id, data=image.data, content_type=image.content_type, width=image.width,
                height=image.height, path=image.path, key=image.key,
            )
