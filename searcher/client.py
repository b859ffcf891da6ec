"""`SearchClient` (Python) and `dff-query` (shell) for the dffsearch gRPC service.

    dff-query IMAGE [--box x0,y0,x1,y1] [--top-k 10] [--qe 5] [--localize] [--json] [--show out.png]
              [--host 127.0.0.1] [--port 50051] [--token-file F] [--tls-ca CA] [--timeout S]

Prints a ranked table (or JSON: {"results": [{rank, id, path, key, score, box, image_missing}],
"stages_ms": {...}}); `--show out.png` writes a figure: the query with its box and the NMF
heatmap, then the top results with their scores and predicted boxes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import grpc
from dffsearch.v1 import search_pb2, search_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .auth import read_token_file

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class SearchClient:
    """A connection to `dff-serve`. Methods raise `grpc.RpcError` (`.code()`, `.details()`)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 50051,
        token: str | None = None,
        tls_ca: str | Path | bytes | None = None,
        timeout: float | None = 60.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if tls_ca is not None:
            root = tls_ca if isinstance(tls_ca, bytes) else Path(tls_ca).read_bytes()
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root), options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self.stub = search_pb2_grpc.SearchServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def wait_until_serving(self, timeout: float = 60.0) -> None:
        """Block until the health service says SERVING; raises TimeoutError otherwise."""
        import time

        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                status = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
            except grpc.RpcError as exc:
                last = f"{exc.code().name}: {exc.details()}"
            time.sleep(0.1)
        raise TimeoutError(f"server not SERVING after {timeout:.0f} s (last: {last})")

    def search(
        self,
        image: bytes | str | Path,
        box: Sequence[float] | None = None,
        top_k: int = 10,
        query_expansion: int = 0,
        localize: bool = False,
        return_heatmaps: bool = False,
        timeout: float | None = None,
        return_concepts: bool = False,
    ) -> search_pb2.SearchResponse:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        request = search_pb2.SearchRequest(
            image=data, top_k=top_k, query_expansion=query_expansion, localize=localize,
            return_heatmaps=return_heatmaps, return_concepts=return_concepts,
        )
        if box is not None:
            x0, y0, x1, y1 = (float(v) for v in box)
            request.box.CopyFrom(search_pb2.Box(x0=x0, y0=y0, x1=x1, y1=y1))
        return self.stub.Search(request, timeout=self._timeout(timeout), metadata=self.metadata)

    def add_images(
        self, items: Iterable[tuple[str, bytes]], timeout: float | None = None
    ) -> search_pb2.AddImagesResponse:
        """Stream (key, image bytes) pairs; the server stores and indexes them."""
        requests = (search_pb2.AddImageRequest(key=key, image=data) for key, data in items)
        return self.stub.AddImages(requests, timeout=self._timeout(timeout), metadata=self.metadata)

    def add_files(self, paths: Iterable[str | Path], timeout: float | None = None) -> search_pb2.AddImagesResponse:
        """Upload image files; each one's key is its file name."""
        return self.add_images(((Path(p).name, Path(p).read_bytes()) for p in paths), timeout)

    def remove_images(
        self, ids: Sequence[int] = (), paths: Sequence[str] = (), timeout: float | None = None
    ) -> search_pb2.RemoveImagesResponse:
        request = search_pb2.RemoveImagesRequest(ids=list(ids), paths=list(paths))
        return self.stub.RemoveImages(request, timeout=self._timeout(timeout), metadata=self.metadata)

    def get_image(self, image_id: int, max_side: int = 0, timeout: float | None = None) -> search_pb2.ImageData:
        """The stored image of an indexed id (max_side > 0: a JPEG at most that large); NOT_FOUND otherwise."""
        request = search_pb2.GetImageRequest(id=int(image_id), max_side=int(max_side))
        return self.stub.GetImage(request, timeout=self._timeout(timeout), metadata=self.metadata)

    def info(self, timeout: float | None = None) -> search_pb2.IndexInfo:
        return self.stub.GetIndexInfo(
            search_pb2.GetIndexInfoRequest(), timeout=self._timeout(timeout), metadata=self.metadata
        )


def result_dicts(response: search_pb2.SearchResponse) -> list[dict]:
    out = []
    for result in response.results:
        box = [result.box.x0, result.box.y0, result.box.x1, result.box.y1] if result.HasField("box") else None
        out.append(
            {
                "rank": result.rank,
                "id": result.id,
                "path": result.path,
                "key": result.key,
                "score": round(float(result.score), 6),
                "box": [round(float(v), 1) for v in box] if box else None,
                "image_missing": result.image_missing,
            }
        )
    return out


def format_table(response: search_pb2.SearchResponse) -> str:
    rows = result_dicts(response)
    lines = [f"{'rank':>4}  {'id':>7}  {'score':>7}  {'box':<25}  path"]
    for row in rows:
        if row["box"]:
            box = ",".join(f"{v:.0f}" for v in row["box"])
        else:
            box = "(image missing)" if row["image_missing"] else "-"
        name = row["path"] + (f"  [{row['key']}]" if row["key"] else "")
        lines.append(f"{row['rank']:>4}  {row['id']:>7}  {row['score']:>7.4f}  {box:<25}  {name}")
    stages = "  ".join(f"{s.stage} {s.milliseconds:.1f}" for s in response.stages)
    lines.append(f"server ms: {stages}")
    return "\n".join(lines)


def parse_box(text: str) -> tuple[float, float, float, float]:
    parts = text.replace(" ", "").split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--box needs x0,y0,x1,y1 (4 numbers), got {text!r}")
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--box: {text!r} has a value that is not a number") from exc
    return x0, y0, x1, y1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dff-query", description="Query a dff-serve index with an image.")
    parser.add_argument("image", type=Path, help="query image file")
    parser.add_argument("--box", type=parse_box, help="region of interest x0,y0,x1,y1 in pixels of IMAGE")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--qe", type=int, default=0, help="query expansion: average with the top n (0 = off)")
    parser.add_argument("--localize", action="store_true", help="predict a box in each result")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--show", type=Path, help="write a figure (query, heatmap, results) to this PNG")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051)
    parser.add_argument("--token-file", type=Path)
    parser.add_argument("--tls-ca", type=Path, help="CA certificate (PEM) for a TLS server")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before giving up")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="threads of the local work (reading the image, --show's figure); default 0: the free CPUs",
    )
    parser.add_argument("--verbose", action="store_true", help="print the thread settings chosen")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.image.is_file():
        print(f"dff-query: {args.image} is not a file", file=sys.stderr)
        return 2
    if args.threads or args.verbose:  # the client computes little: measure the load only when asked
        from descriptors.threads import setup_threads

        setup_threads(args.threads, verbose=args.verbose, prog="dff-query", load_libraries=False)
    token = read_token_file(args.token_file) if args.token_file else None
    localize = args.localize or args.show is not None
    with SearchClient(args.host, args.port, token=token, tls_ca=args.tls_ca, timeout=args.timeout) as client:
        try:
            response = client.search(
                args.image, box=args.box, top_k=args.top_k, query_expansion=args.qe, localize=localize,
                return_heatmaps=args.show is not None,
            )
        except grpc.RpcError as exc:
            print(f"dff-query: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    if args.json:
        stages = {s.stage: round(s.milliseconds, 3) for s in response.stages}
        print(json.dumps({"results": result_dicts(response), "stages_ms": stages}, indent=1))
    else:
        print(format_table(response))
    if args.show is not None:
        from .show import draw_results

        draw_results(args.image, args.box, response, args.show)
        print(f"dff-query: wrote {args.show}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
