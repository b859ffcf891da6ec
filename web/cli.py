"""`dff-web`: the search page for a dffsearch index.

    dff-web --grpc HOST:PORT [--token-file F] [--tls-ca CA] [--port 8080] [--host 127.0.0.1]
    dff-web --index INDEX [--port 8080] [--host 127.0.0.1]     (starts its own dff-serve)

Talks to `dff-serve` (or any server speaking `dffsearch.v1`, such as a Ray Serve gRPC ingress)
through `searcher.client.SearchClient`; with `--index` it starts `dff-serve` on a free loopback
port itself and stops it on exit. Prints `dff-web: page at http://HOST:PORT/` once it listens.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from pathlib import Path

from .config import WebConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dff-web", description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--grpc", help="the dff-serve to talk to, HOST:PORT")
    where.add_argument("--index", type=Path, help="start a dff-serve on this index directory (and stop it on exit)")
    parser.add_argument("--token-file", type=Path, help="bearer token of the dff-serve (its --token-file)")
    parser.add_argument("--tls-ca", type=Path, help="CA certificate (PEM) of a TLS dff-serve")
    parser.add_argument("--host", default="127.0.0.1", help="address the page listens on (default loopback)")
    parser.add_argument("--port", type=int, default=8080, help="port of the page; 0 picks a free one (printed)")
    parser.add_argument("--max-upload-mb", type=float, default=32.0)
    parser.add_argument("--thumbnail-side", type=int, default=320, help="longer side of thumbnails, pixels")
    parser.add_argument("--thumbnail-cache-mb", type=float, default=64.0)
    parser.add_argument(
        "--serve-arg", action="append", default=[], metavar="ARG",
        help="with --index: one more argument for the dff-serve it starts (repeat: --serve-arg=--torch-threads --serve-arg=1)",
    )
    return parser


def config_from_args(args: argparse.Namespace, grpc_target: str) -> WebConfig:
    return WebConfig(
        grpc=grpc_target, token_file=args.token_file, tls_ca=args.tls_ca, host=args.host, port=args.port,
        max_upload_mb=args.max_upload_mb, thumbnail_side=args.thumbnail_side,
        thumbnail_cache_mb=args.thumbnail_cache_mb,
    )


def _bind(host: str, port: int) -> socket.socket:
    """Bind the page's socket first, so a busy port is said in words before anything loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"dff-web: cannot listen on {host}:{port}: {exc.strerror} (another program uses it? try --port)"
        ) from exc
    return sock


def serve(config: WebConfig, sock: socket.socket) -> None:
    import uvicorn

    from .app import create_app

    app = create_app(config)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"dff-web: page at http://{shown}:{port}/ (search server {config.grpc})", flush=True)
    server.run(sockets=[sock])


class _Stop(Exception):
    """SIGTERM: unwinds like Ctrl-C, so that a dff-serve started here is stopped too."""


def _stop(*_: object) -> None:
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    # uvicorn drains on SIGTERM/SIGINT and then re-raises the signal to the handler it found:
    # this one, which turns it into an exception that unwinds (and stops a child dff-serve)
    signal.signal(signal.SIGTERM, _stop)
    try:
        return _run(args)
    except (_Stop, KeyboardInterrupt):
        return 0


def _run(args: argparse.Namespace) -> int:
    sock = _bind(args.host, args.port)
    if args.grpc is not None:
        config = config_from_args(args, args.grpc)
        try:
            config.grpc_host_port()
        except ValueError as exc:
            print(f"dff-web: {exc}", file=sys.stderr)
            return 2
        serve(config, sock)
        return 0
    if not (args.index / "manifest.json").is_file():
        print(f"dff-web: {args.index} is not an index directory; build one with dff-index build", file=sys.stderr)
        return 2
    from searcher.launcher import launch_serve

    extra = list(args.serve_arg)
    if args.token_file is not None:
        extra += ["--token-file", str(args.token_file)]
    print(f"dff-web: starting dff-serve on {args.index}", flush=True)
    try:
        server = launch_serve(args.index, extra)
    except RuntimeError as exc:
        print(f"dff-web: {exc}", file=sys.stderr)
        return 1
    with server:
        print(f"dff-web: dff-serve listening on {server.target}", flush=True)
        serve(config_from_args(args, server.target), sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
