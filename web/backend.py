"""What the page's HTTP API does, over the project's gRPC client (`searcher.client.SearchClient`).

No web framework in here: `web.app` maps routes onto `SearchBackend` methods and `WebError`s onto
HTTP answers. Everything the page shows comes from `dff-serve` (or any server speaking
`dffsearch.v1`, e.g. a Ray Serve gRPC ingress): images only by indexed id (GetImage), never
by a path from the request.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from searcher.client import SearchClient

from .caches import ByteLRU
from .config import WebConfig
from .responses import index_info_json, search_json

_BROWSER_TYPES = {
    "JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
    "GIF": "image/gif", "BMP": "image/bmp",
}
QUERY_ID = re.compile(r"^(u-[0-9a-f]{32}|id-[0-9]{1,18})$")
IMAGE_ID = re.compile(r"^[0-9]{1,18}$")


class WebError(Exception):
    """An answer in words: HTTP `status`, a short `code` the page can branch on, a `message`."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class ImageAnswer:
    data: bytes
    content_type: str
    etag: str


@dataclass
class QueryImage:
    data: bytes
    width: int
    height: int
    content_type: str = "application/octet-stream"


class SearchBackend:
    """One gRPC client, an LRU of uploaded query images and one of thumbnails."""

    def __init__(self, config: WebConfig, client: SearchClient | None = None) -> None:
        from searcher.auth import read_token_file

        self.config = config
        if client is None:
            host, port = config.grpc_host_port()
            token = read_token_file(config.token_file) if config.token_file else None
            client = SearchClient(host, port, token=token, tls_ca=config.tls_ca, timeout=config.search_timeout_s)
        self.client = client
        self.queries: ByteLRU[QueryImage] = ByteLRU(int(config.query_cache_mb * 2**20))
        self.thumbnails: ByteLRU[ImageAnswer] = ByteLRU(int(config.thumbnail_cache_mb * 2**20))
        self._generation: tuple | None = None
        self._generation_checked = 0.0
        self._generation_lock = threading.Lock()

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------------------------------
    # queries

    def add_query(self, data: bytes, filename: str = "") -> dict:
        """Check an upload (an image, not too large) and keep it; the page searches it by id."""
        from descriptors.images import ImageDecodeError, decode_image

        limit = int(self.config.max_upload_mb * 2**20)
        if len(data) > limit:
            raise WebError(
                413, "too-large",
                f"{filename or 'the file'} is {len(data) / 2**20:.1f} MB; this page takes images up to "
                f"{self.config.max_upload_mb:g} MB",
            )
        try:
            img = decode_image(data)
        except ImageDecodeError as exc:
            label = f"{filename}: " if filename else ""
            code = "not-an-image" if exc.reason == "not-an-image" else exc.reason
            words = "this file is not an image this page can read (JPEG, PNG, WebP, ...)"
            raise WebError(400, code, f"{label}{words if code == 'not-an-image' else exc}") from exc
        query_id = "u-" + hashlib.sha256(data).hexdigest()[:32]
        content_type = _BROWSER_TYPES.get(_format_of(data), "application/octet-stream")
        self.queries.put(query_id, QueryImage(data, *img.size, content_type), len(data))
        return {"query": query_id, "width": img.size[0], "height": img.size[1]}

    def query_image(self, query_id: str) -> QueryImage:
        """The bytes of a query: an upload still in the store, or an indexed image ("id-N")."""
        if not QUERY_ID.match(query_id):
            raise WebError(404, "unknown-query", f"{query_id!r} is not a query of this page")
        if query_id.startswith("id-"):
            found = self._call(self.client.get_image, int(query_id[3:]), 0)
            return QueryImage(found.data, found.width, found.height, found.content_type)
        found = self.queries.get(query_id)
        if found is None:
            raise WebError(
                404, "query-expired",
                "this page no longer holds that uploaded query (the app restarted or it was evicted); "
                "upload the image again",
            )
        return found

    def search(
        self,
        query_id: str,
        box: list[float] | None = None,
        top_k: int = 12,
        query_expansion: int = 0,
        localize: bool = True,
        rerank: int | None = None,
    ) -> dict:
        query = self.query_image(query_id)
        started = time.perf_counter()
        response = self._call(
            self.client.search, query.data, box=box, top_k=top_k, query_expansion=query_expansion,
            localize=localize, return_heatmaps=localize, return_concepts=localize, rerank=rerank,
        )
        answer = search_json(response)
        answer["query"].update(id=query_id, box=box, width=query.width, height=query.height)
        answer["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
        return answer

    # ------------------------------------------------------------------------------------------
    # index and images

    def info(self) -> dict:
        answer = index_info_json(self._call(self.client.info, timeout=10.0))
        answer["grpc"] = self.config.grpc
        answer["thumbnail_side"] = self.config.thumbnail_side
        answer["default_top_k"] = min(self.config.default_top_k, answer["max_top_k"] or self.config.default_top_k)
        return answer

    def thumbnail(self, image_id: str) -> ImageAnswer:
        number = self._image_number(image_id)
        self._check_generation()
        key = (number, self.config.thumbnail_side)
        cached = self.thumbnails.get(key)
        if cached is not None:
            return cached
        answer = self._image(number, self.config.thumbnail_side)
        self.thumbnails.put(key, answer, len(answer.data))
        return answer

    def full_image(self, image_id: str) -> ImageAnswer:
        return self._image(self._image_number(image_id), 0)

    # ------------------------------------------------------------------------------------------
    # internals

    @staticmethod
    def _image_number(image_id: str) -> int:
        if not IMAGE_ID.match(image_id):
            raise WebError(404, "unknown-image", f"{image_id!r} is not an image id")
        return int(image_id)

    def _image(self, number: int, max_side: int) -> ImageAnswer:
        found = self._call(self.client.get_image, number, max_side)
        etag = hashlib.sha1(found.data).hexdigest()[:20]
        return ImageAnswer(found.data, found.content_type or "application/octet-stream", etag)

    def _check_generation(self) -> None:
        """Drop the thumbnail cache when the index changed (checked at most every info_ttl_s)."""
        now = time.monotonic()
        if now - self._generation_checked < self.config.info_ttl_s:
            return
        with self._generation_lock:
            if now - self._generation_checked < self.config.info_ttl_s:
                return
            info = self._call(self.client.info, timeout=10.0)
            generation = (info.count, info.manifest_json)
            if generation != self._generation:
                self.thumbnails.clear()
                self._generation = generation
            self._generation_checked = now

    def _call(self, method, *args, **kwargs):
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as exc:
            raise grpc_error(exc, self.config.grpc) from exc


def grpc_error(exc: grpc.RpcError, target: str) -> WebError:
    """A gRPC status as words for the page."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return WebError(400, "invalid", details)
    if code == grpc.StatusCode.NOT_FOUND:
        return WebError(404, "not-found", details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return WebError(413, "too-large", f"the search server refused the request as too large: {details}")
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return WebError(
            502, "auth",
            f"the search server at {target} refused this page's credentials ({details}); "
            "start dff-web with the server's --token-file",
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return WebError(503, "unreachable", f"the search server at {target} is unreachable ({details})")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return WebError(504, "timeout", f"the search server took too long: {details}")
    return WebError(502, "server-error", f"the search server failed: {code.name}: {details}")


def _format_of(data: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.format or ""


def static_dir() -> Path:
    return Path(__file__).resolve().parent / "static"
