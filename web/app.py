"""The FastAPI app of `dff-web`: the page, its static files and its HTTP API.

    GET  /                        the page (web/static/index.html; state in the URL's query string)
    GET  /static/...              app.js, app.css (shipped in the package; no CDN)
    GET  /api/info                the index panel: images, backbone, descriptor, FAISS type, last update
    POST /api/queries             upload a query image (multipart field `file`) -> {query, width, height}
    GET  /api/queries/{query}     the bytes of a query (an upload "u-..." or an indexed image "id-N")
    POST /api/search              {query, box?, top_k, qe, localize, rerank?} -> ranked results, boxes, concepts
    GET  /api/thumbs/{id}         a thumbnail of an indexed image (resized by dff-serve, cached here)
    GET  /api/images/{id}         the indexed image itself

Errors are JSON `{"error": {"code", "message"}}` with an HTTP status; nothing the page sends makes
the app fail. Image routes take only decimal ids and serve only what GetImage serves (ids in the
index): anything else is 404.
"""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .backend import ImageAnswer, SearchBackend, WebError, static_dir
from .config import WebConfig

log = logging.getLogger("dff-web")


class SearchRequest(BaseModel):
    query: str
    box: list[float] | None = Field(default=None, min_length=4, max_length=4)
    top_k: int = Field(default=12, ge=1, le=1000)
    qe: int = Field(default=0, ge=0, le=1000)
    # re-rank the first N by the factor rows stored in the index (the page's rr=; absent: the
    # server's default, 0: off; above dff-serve's --max-rerank the server refuses with words)
    rerank: int | None = Field(default=None, ge=0, le=100_000)
    localize: bool = True


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _image_response(answer: ImageAnswer, request: Request, max_age: int) -> Response:
    headers = {"ETag": f'"{answer.etag}"', "Cache-Control": f"private, max-age={max_age}"}
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    return Response(answer.data, media_type=answer.content_type, headers=headers)


def create_app(config: WebConfig, backend: SearchBackend | None = None) -> FastAPI:
    backend = backend or SearchBackend(config)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        backend.close()

    app = FastAPI(title="dffsearch", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.backend = backend
    static = static_dir()

    @app.exception_handler(WebError)
    async def web_error(_: Request, exc: WebError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return _error(400, "bad-request", problems or "the request is malformed")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = "not-found" if exc.status_code == 404 else "http"
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error(500, "internal", f"the page's server failed: {type(exc).__name__}: {exc}")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(static / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=static), name="static")

    @app.get("/api/info")
    def info() -> dict:
        return backend.info()

    @app.post("/api/queries")
    def upload(file: UploadFile = File(...)) -> dict:
        limit = int(config.max_upload_mb * 2**20)
        data = file.file.read(limit + 1)  # never more than the limit + 1 byte in memory
        return backend.add_query(data, file.filename or "")

    @app.get("/api/queries/{query_id}")
    def query_image(query_id: str) -> Response:
        found = backend.query_image(query_id)
        return Response(found.data, media_type=found.content_type,
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/search")
    def search(request: SearchRequest) -> dict:
        return backend.search(
            request.query, request.box, request.top_k, request.qe, request.localize, rerank=request.rerank
        )

    @app.get("/api/thumbs/{image_id}")
    def thumbnail(image_id: str, request: Request) -> Response:
        return _image_response(backend.thumbnail(image_id), request, max_age=60)

    @app.get("/api/images/{image_id}")
    def full_image(image_id: str, request: Request) -> Response:
        return _image_response(backend.full_image(image_id), request, max_age=60)

    return app
