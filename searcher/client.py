"""`SearchClient` (Python) and `dff-query` (shell) for the dffsearch gRPC service.

    dff-query IMAGE [--box x0,y0,x1,y1] [--top-k 10] [--qe 5] [--rerank 100] [--localize] [--json] [--show out.png]
              [--host 127.0.0.1] [--port 50051] [--token-file F] [--tls-ca CA] [--timeout S]

Prints a ranked table (or JSON: {"results": [{rank, id, path, key, score, box, image_missing}],
"stages_ms": {...}}); `--show out.png` writes a figure: the query with its box, then the top
results with their scores (with `--localize`: the NMF heatmaps and the predicted boxes too).
Bad arguments end with a one-line error and exit status 2; a server error with exit status 1.
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

from descriptors.query_expansion import EXPANSIONS

from .auth import read_token_file

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_RETRIES = 3

# RPCs that change nothing, so gRPC may safely send them again. AddImages/RemoveImages are not
# retried: a retry after a lost answer would be a second write the caller did not ask for.
_IDEMPOTENT_METHODS = ("Search", "GetImage", "GetIndexInfo")


def retry_service_config(retries: int) -> str:
    """gRPC's own retry policy (a channel service config): read-only RPCs refused with
    RESOURCE_EXHAUSTED (`dff-serve --max-in-flight`) or UNAVAILABLE (a draining or restarting
    server) are sent again up to `retries` times with exponential, jittered backoff (0.1 s doubling
    up to 2 s), always within the call's deadline."""
    policy = {
        "maxAttempts": retries + 1,
        "initialBackoff": "0.1s",
        "maxBackoff": "2s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["RESOURCE_EXHAUSTED", "UNAVAILABLE"],
    }
    names = [{"service": "dffsearch.v1.SearchService", "method": m} for m in _IDEMPOTENT_METHODS]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


class SearchClient:
    """A connection to `dff-serve`. Methods raise `grpc.RpcError` (`.code()`, `.details()`).

    Read-only calls refused because the server is busy or restarting are retried by gRPC itself
    (`retries` times, backoff; see `retry_service_config`); `retries=0` turns that off."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 50051,
        token: str | None = None,
        tls_ca: str | Path | bytes | None = None,
        timeout: float | None = 60.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        if retries < 0 or retries > 4:  # gRPC caps maxAttempts at 5
            raise ValueError(f"retries must be between 0 and 4, got {retries}")
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", int(retries > 0)),
        ]
        if retries > 0:
            options.append(("grpc.service_config", retry_service_config(retries)))
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
        expansion: str = "",
        rerank: int | None = None,
    ) -> search_pb2.SearchResponse:
        """`rerank`: re-rank the first N results by the stored factor rows (None: the server's
        default, 0: off); `response.reranked` says how many were, `response.notes` why not."""
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        request = search_pb2.SearchRequest(
            image=data, top_k=top_k, query_expansion=query_expansion, localize=localize,
            return_heatmaps=return_heatmaps, return_concepts=return_concepts, expansion=expansion,
        )
        if rerank is not None:  # absent: the server's default depth
            request.rerank = int(rerank)
        if box is not None:
            x0, y0, x1, y1 = (float(v) for v in box)
            request.box.CopyFrom(search_pb2.Box(x0=x0, y0=y0, x1=x1, y1=y1))
        return self.stub.Search(request, timeout=self._timeout(timeout), metadata=self.metadata)

    def add_images(
        self, items: Iterable[tuple[str, bytes]], timeout: float | None = None, skip_invalid: bool = False
    ) -> search_pb2.AddImagesResponse:
        """Stream (key, image bytes) pairs; the server stores and indexes them. `skip_invalid`:
        undecodable images come back SKIPPED (with their reason) instead of failing the call."""
        requests = (
            search_pb2.AddImageRequest(key=key, image=data, skip_invalid=skip_invalid) for key, data in items
        )
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
        raise argparse.ArgumentTypeError(f"needs x0,y0,x1,y1 (4 numbers), got {text!r}")
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} has a value that is not a number") from exc
    if min(x0, y0, x1, y1) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: coordinates are pixels of the image, 0 or more")
    if x0 >= x1 or y0 >= y1:
        raise argparse.ArgumentTypeError(f"{text!r} is empty: need x0 < x1 and y0 < y1")
    return x0, y0, x1, y1


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}")
        return value

    return parse


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with a one-line error (`PROG: error: ...`, exit 2) instead of usage + error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def join_negative_values(argv: Sequence[str], options: Sequence[str]) -> list[str]:
    """`--box -50,0,9,9` -> `--box=-50,0,9,9`: argparse would take the value for an option."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        if items[i] in options and i + 1 < len(items) and items[i + 1].startswith("-") and items[i + 1][1:2].isdigit():
            out.append(f"{items[i]}={items[i + 1]}")
            i += 2
            continue
        out.append(items[i])
        i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="dff-query", description="Query a dff-serve index with an image.")
    parser.add_argument("image", type=Path, help="query image file")
    parser.add_argument("--box", type=parse_box, help="region of interest x0,y0,x1,y1 in pixels of IMAGE")
    parser.add_argument("--top-k", type=_count(1), default=10, help="results to return (1 or more)")
    parser.add_argument(
        "--qe", type=_count(0), default=0, help="query expansion with the top n (0 = off)"
    )
    parser.add_argument(
        "--expansion", choices=EXPANSIONS, default="average",
        help="with --qe: average QE, alpha-QE, or diffusion on the index's k-NN graph (needs `dff-index graph`)",
    )
    parser.add_argument(
        "--rerank", type=_count(0), default=None, metavar="N",
        help="re-rank the first N results by the NMF factor rows stored in the index (0 = off; default: the server's)",
    )
    parser.add_argument("--localize", action="store_true", help="predict a box in each result")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--show", type=Path,
        help="write a figure (query, results; heatmaps and boxes with --localize) to this PNG",
    )
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


def _check_paths(args: argparse.Namespace) -> str | None:
    """What is wrong with the local paths, before anything is sent."""
    if not args.image.is_file():
        return f"{args.image} is not a file"
    if args.show is not None:
        folder = args.show.parent if str(args.show.parent) else Path(".")
        if not folder.is_dir():
            return f"--show {args.show}: folder {folder} does not exist; create it or pick another path"
        if args.show.is_dir():
            return f"--show {args.show} is a folder; give a file name such as {args.show / 'results.png'}"
    return None


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(join_negative_values(raw, ("--box",)))
    problem = _check_paths(args)
    if problem:
        print(f"dff-query: error: {problem}", file=sys.stderr)
        return 2
    try:
        token = read_token_file(args.token_file) if args.token_file else None
    except ValueError as exc:
        print(f"dff-query: error: {exc}", file=sys.stderr)
        return 2
    if args.threads or args.verbose:  # the client computes little: measure the load only when asked
        from descriptors.threads import setup_threads

        setup_threads(args.threads, verbose=args.verbose, prog="dff-query", load_libraries=False)
    with SearchClient(args.host, args.port, token=token, tls_ca=args.tls_ca, timeout=args.timeout) as client:
        try:
            response = client.search(
                args.image, box=args.box, top_k=args.top_k, query_expansion=args.qe, localize=args.localize,
                expansion=args.expansion,
                return_heatmaps=args.show is not None and args.localize, rerank=args.rerank,
            )
        except grpc.RpcError as exc:
            print(f"dff-query: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    if args.json:
        stages = {s.stage: round(s.milliseconds, 3) for s in response.stages}
        print(json.dumps({
            "results": result_dicts(response), "stages_ms": stages, "reranked": response.reranked,
            "notes": list(response.notes),
        }, indent=1))
    else:
        print(format_table(response))
        for note in response.notes:
            print(f"dff-query: note: {note}", file=sys.stderr)
    if args.show is not None:
        from .show import draw_results

        try:
            draw_results(args.image, args.box, response, args.show)
        except OSError as exc:
            print(f"dff-query: error: cannot write {args.show}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"dff-query: wrote {args.show}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
