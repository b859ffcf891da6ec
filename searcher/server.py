"""`dff-serve`: the gRPC search service over an index directory.

    dff-serve --index DIR [--host 127.0.0.1] [--port 50051] [--max-batch N] [--batch-timeout-ms 5]
              [--token-file F] [--tls-cert C --tls-key K] [--metrics-port P] [--device cpu|cuda]

Serves `dffsearch.v1.SearchService`, the standard `grpc.health.v1` health service (SERVING once
the index and model are loaded) and server reflection. SIGTERM/SIGINT: new RPCs get UNAVAILABLE, health
goes NOT_SERVING, in-flight ones get `--grace` seconds to finish, exit status 0. Every request is
logged at INFO (method, status, ms, request id); limits per request are flags (`--max-pixels`,
`--decode-slots`, `--max-localize`, `--max-add-images`, `--max-add-mb`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from dffsearch.v1 import search_pb2, search_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from descriptors.images import DEFAULT_MAX_PIXELS
from descriptors.rerank import DEFAULT_DEPTH

from .auth import BearerTokenInterceptor, is_loopback, read_token_file
from .engine import NO_FACTOR_ROWS_NOTE, EngineConfig, SearchEngine
from .metrics import SearcherMetrics
from .ranking import MAX_RERANK, rerank_problem
from .servicer import SearchServicer, ServiceLimits

log = logging.getLogger("dff-serve")
SERVICE_NAME = search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name


@dataclass
class ServerConfig:
    """All of dff-serve's settings (the CLI flags)."""

    index: Path
    host: str = "127.0.0.1"
    port: int = 50051
    device: str = "cpu"
    max_batch: int | None = None  # None: 1 on CPU (measured: batching is slower there), 16 on CUDA
    batch_timeout_ms: float = 5.0
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    metrics_port: int | None = None
    max_top_k: int = 100
    rerank: int = DEFAULT_DEPTH  # re-ranking depth of a search that does not say (0: off)
    max_rerank: int = MAX_RERANK
    max_message_mb: float = 32.0
    workers: int = 16
    # SearchService RPCs in flight at once; None: workers - max(2, workers // 4), which keeps
    # threads free for health checks and GetIndexInfo (the excess gets RESOURCE_EXHAUSTED)
    max_in_flight: int | None = None
    # compute threads of torch, FAISS and BLAS (`--threads`); None: the CPUs free of other work,
    # re-measured while serving (descriptors.threads)
    torch_threads: int | None = None
    compute_slots: int | None = None
    pipelined: bool = True
    nmf_threads: int | None = 1
    grace_s: float = 30.0
    # bounded memory: what one request may cost (each refusal names its flag)
    max_pixels: int = DEFAULT_MAX_PIXELS  # pixels per image (header check, before decoding)
    decode_slots: int = 2  # images decoded at once
    max_localize: int = 100  # results localized per request
    max_add_images: int = 1000  # images per AddImages call
    max_add_mb: float = 256.0  # image bytes per AddImages call
    verbose: bool = False  # print the thread settings chosen

    def check_rerank(self) -> None:
        if (problem := rerank_problem(self.rerank, self.max_rerank)) is not None:
            raise ValueError(problem)

    def resolved_max_in_flight(self) -> int:
        if self.max_in_flight is None:
            return max(1, self.workers - max(2, self.workers // 4))
        if not 1 <= self.max_in_flight < self.workers:
            raise ValueError(
                f"--max-in-flight {self.max_in_flight} must be at least 1 and below --workers {self.workers}: "
                "the threads left over answer health checks while heavy requests are in flight"
            )
        return self.max_in_flight

    def resolved_max_batch(self) -> int:
        if self.max_batch is not None:
            return max(1, self.max_batch)
        return 16 if self.device.startswith("cuda") else 1


class RunningServer:
    """A started server: `.port`, `.engine`, `.servicer`, `.metrics`, `.stop(grace)`."""

    def __init__(
        self, server: grpc.Server, port: int, engine: SearchEngine, health_servicer, metrics, servicer
    ) -> None:
        self.server, self.port, self.engine, self.health, self.metrics = server, port, engine, health_servicer, metrics
        self.servicer = servicer
        self._metrics_http = None

    def begin_shutdown(self) -> None:
        """New RPCs get UNAVAILABLE from now on; the ones in flight go on. Safe in a signal handler
        (it only sets an event)."""
        self.servicer.draining.set()

    def stop(self, grace: float | None = 5.0) -> None:
        self.begin_shutdown()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.engine.close()
        if self._metrics_http is not None:
            self._metrics_http[0].shutdown()

    def wait(self) -> None:
        self.server.wait_for_termination()


def _credentials(config: ServerConfig):
    if config.tls_cert is None and config.tls_key is None:
        return None
    if config.tls_cert is None or config.tls_key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    return grpc.ssl_server_credentials([(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())])


def start_server(config: ServerConfig, engine: SearchEngine | None = None) -> RunningServer:
    """Load the index (unless an engine is given), bind, register services, start serving."""
    from descriptors.openvino_shapes import compile_in_background
    from descriptors.threads import setup_threads

    from .memory import bound_malloc

    max_in_flight = config.resolved_max_in_flight()  # a bad value fails before the model loads
    config.check_rerank()
    bound_malloc()  # large buffers back to the OS when freed (searcher/memory.py says why)
    # BLAS on one thread: a search's matrix products are small (re-ranking: 8 x 800 x 1280), and
    # OpenBLAS's threads synchronize by spinning; with concurrent searches they spun against each
    # other (8% of the server's CPU in `inner_thread` at 8 clients; docs/searcher.md)
    setup_threads(config.torch_threads or 0, verbose=config.verbose, prog="dff-serve", blas=1)
    # an input shape's own OpenVINO model compiles beside the requests, not in one of them
    compile_in_background()
    token = read_token_file(config.token_file) if config.token_file else None
    loopback = is_loopback(config.host)
    if engine is None:
        engine = SearchEngine(
            EngineConfig(
                index_dir=Path(config.index),
                device=config.device,
                max_top_k=config.max_top_k,
                rerank=config.rerank,
                max_rerank=config.max_rerank,
                max_batch=config.resolved_max_batch(),
                batch_timeout_ms=config.batch_timeout_ms,
                compute_slots=config.compute_slots,
                pipelined=config.pipelined,
                nmf_threads=config.nmf_threads,
                max_pixels=config.max_pixels,
                decode_slots=config.decode_slots,
                max_localize=config.max_localize,
            )
        )
    metrics = SearcherMetrics()
    max_bytes = int(config.max_message_mb * 1024 * 1024)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="grpc"),
        interceptors=[BearerTokenInterceptor(token, require_for_writes_without_token=not loopback)],
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.so_reuseport", 0),
        ],
    )
    limits = ServiceLimits(
        max_add_images=config.max_add_images, max_add_bytes=int(config.max_add_mb * 1024 * 1024),
        max_in_flight=max_in_flight,
    )
    servicer = SearchServicer(engine, metrics, limits)
    search_pb2_grpc.add_SearchServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
        server,
    )
    address = f"[{config.host}]:{config.port}" if ":" in config.host else f"{config.host}:{config.port}"
    credentials = _credentials(config)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind {address}: the port is in use or the address is not local")
    server.start()
    running = RunningServer(server, port, engine, health_servicer, metrics, servicer)
    if config.metrics_port is not None:
        running._metrics_http = metrics.serve(config.metrics_port, host=config.host)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return running


def port_in_use(host: str, port: int) -> str | None:
    """Why `host:port` cannot be bound, or None: checked before the model loads, so that a busy
    port fails in a second with its reason instead of after the load with "Failed to bind"."""
    import errno
    import socket

    if port == 0:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is not busy
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is in use"
            return f"cannot bind {host}:{port}: {exc.strerror or exc}"
    return None


def warn_about_plaintext_token(config: ServerConfig) -> bool:
    """Log a warning when a bearer token would travel unencrypted over a network."""
    if config.token_file is None or is_loopback(config.host) or config.tls_cert is not None:
        return False
    log.warning(
        "--token-file on %s without TLS: the bearer token crosses the network in plaintext and can be "
        "read by anyone on the path; add --tls-cert/--tls-key (or listen on 127.0.0.1 behind a TLS proxy)",
        config.host,
    )
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dff-serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, type=Path, help="index directory built by dff-index")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=50051, help="0 picks a free port (printed)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--max-batch", type=int, default=None,
        help="dynamic batching of concurrent forwards (default: 1 = off on CPU, 16 on CUDA)",
    )
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0)
    parser.add_argument("--token-file", type=Path, help="require 'authorization: Bearer <token>'")
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port")
    parser.add_argument("--max-top-k", type=int, default=100)
    parser.add_argument(
        "--rerank", type=int, default=DEFAULT_DEPTH, metavar="N",
        help="re-rank the first N results by the NMF factor rows stored in the index (match kernel) "
        f"when a search does not say; 0: off (default: {DEFAULT_DEPTH})",
    )
    parser.add_argument("--max-rerank", type=int, default=MAX_RERANK, help="the most a search may ask to re-rank")
    parser.add_argument("--max-message-mb", type=float, default=32.0)
    parser.add_argument("--workers", type=int, default=16, help="gRPC thread pool size")
    parser.add_argument(
        "--max-in-flight", type=_positive_int, default=None,
        help="SearchService requests in flight at once, below --workers; the excess gets RESOURCE_EXHAUSTED "
        "at once (default: workers - max(2, workers // 4), keeping threads for health checks)",
    )
    parser.add_argument(
        "--threads", "--torch-threads", dest="torch_threads", type=int,
        help="compute threads of torch, FAISS and BLAS (default: the CPUs not busy with other work, re-measured while serving)",
    )
    parser.add_argument("--verbose", action="store_true", help="print the thread settings chosen")
    parser.add_argument("--compute-slots", type=int, help="requests computing at once (default: the CPUs; concurrent forwards split the compute threads)")
    parser.add_argument(
        "--no-pipeline", action="store_true",
        help="one slot pool for forward and NMF (default: separate, so NMF overlaps the next forward)",
    )
    parser.add_argument("--nmf-threads", type=int, default=1, help="torch threads of the NMF pool (0: default)")
    parser.add_argument("--grace", type=float, default=30.0, help="seconds to drain on SIGTERM")
    limits = parser.add_argument_group("limits per request (bounded memory; each refusal names its flag)")
    limits.add_argument(
        "--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS,
        help=f"pixels per image, checked before decoding (default {DEFAULT_MAX_PIXELS:,})",
    )
    limits.add_argument(
        "--decode-slots", type=_positive_int, default=2,
        help="images decoded at once (a PNG decodes in full: 64 MP = 192 MB each; default 2)",
    )
    limits.add_argument("--max-localize", type=_positive_int, default=100, help="results localized per request")
    limits.add_argument("--max-add-images", type=_positive_int, default=1000, help="images per AddImages call")
    limits.add_argument("--max-add-mb", type=float, default=256.0, help="MiB of images per AddImages call")
    ray = parser.add_argument_group("Ray Serve (docs/scaling.md; needs the [ray] extra)")
    ray.add_argument(
        "--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
        help="serve as a Ray Serve app with gRPC ingress on --port: no ADDRESS starts a local Ray, "
        "'auto' joins the running cluster, or ray://host:10001",
    )
    ray.add_argument("--replicas", type=int, default=1, help="query encoder replicas (backbone + NMF)")
    ray.add_argument("--min-replicas", type=int, help="autoscale the encoders from this many ...")
    ray.add_argument("--max-replicas", type=int, help="... up to this many")
    ray.add_argument("--shards", type=int, default=1, help="split the index into this many shard deployments")
    ray.add_argument("--encoder-cpus", type=float, default=1.0, help="CPUs reserved per encoder replica")
    ray.add_argument("--encoder-gpus", type=float, default=0.0, help="GPUs per encoder replica")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _serve_on_ray(args: argparse.Namespace, stop: threading.Event) -> int:
    """`dff-serve --ray`: deploy, print the port, wait for SIGTERM/SIGINT, delete the app."""
    from indexer import IndexerError

    from .ray_serve import RayServeConfig, start_on_ray, stop_on_ray

    try:
        config = RayServeConfig(
            index=args.index, address=args.ray, port=args.port, replicas=args.replicas,
            min_replicas=args.min_replicas, max_replicas=args.max_replicas, shards=args.shards,
            encoder_cpus=args.encoder_cpus, encoder_gpus=args.encoder_gpus,
            device="cuda" if args.encoder_gpus > 0 and args.device == "cpu" else args.device,
            token=read_token_file(args.token_file) if args.token_file else None, max_top_k=args.max_top_k,
            rerank=args.rerank, max_rerank=args.max_rerank,
        )
        if args.tls_cert or args.tls_key or args.metrics_port:
            log.warning("--ray: TLS and --metrics-port do not apply (see docs/scaling.md: Ray's proxy and metrics)")
        port = start_on_ray(config)
    except (IndexerError, ValueError, RuntimeError, OSError) as exc:
        print(f"dff-serve: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGINT):  # ray.init installed its own (aborting) handlers
        signal.signal(signum, lambda *_: stop.set())
    log.info("serving %s on Ray: %d shard(s), encoders %s", args.index, args.shards, config.encoder_scaling())
    print(f"dff-serve: listening on 0.0.0.0:{port} (Ray Serve gRPC proxy)", flush=True)
    while not stop.wait(1.0):
        pass
    log.info("deleting the Ray Serve application")
    stop_on_ray(disconnect=True)
    return 0


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        index=args.index, host=args.host, port=args.port, device=args.device, max_batch=args.max_batch,
        batch_timeout_ms=args.batch_timeout_ms, token_file=args.token_file, tls_cert=args.tls_cert,
        tls_key=args.tls_key, metrics_port=args.metrics_port, max_top_k=args.max_top_k,
        rerank=args.rerank, max_rerank=args.max_rerank, max_message_mb=args.max_message_mb, workers=args.workers, torch_threads=args.torch_threads,
        compute_slots=args.compute_slots, grace_s=args.grace, pipelined=not args.no_pipeline,
        nmf_threads=args.nmf_threads or None, verbose=args.verbose, max_pixels=args.max_pixels,
        decode_slots=args.decode_slots, max_localize=args.max_localize, max_add_images=args.max_add_images,
        max_add_mb=args.max_add_mb, max_in_flight=args.max_in_flight,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # faiss logs which SIMD build it tried at INFO level on every start: noise for an operator
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    if not Path(config.index).is_dir():
        print(f"dff-serve: index directory {config.index} does not exist; build it with dff-index", file=sys.stderr)
        return 2
    busy = port_in_use(config.host, config.port)
    if busy:
        print(f"dff-serve: {busy}; stop what holds it or pick another port with --port", file=sys.stderr)
        return 2
    stop = threading.Event()
    started: list[RunningServer] = []

    def on_signal(*_) -> None:
        stop.set()
        if started:  # from now on new requests get UNAVAILABLE; in-flight ones finish
            started[0].begin_shutdown()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    if args.ray is not None:
        return _serve_on_ray(args, stop)
    try:
        running = start_server(config)
    except Exception as exc:
        print(f"dff-serve: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    started.append(running)
    if stop.is_set():
        running.begin_shutdown()
    warn_about_plaintext_token(config)
    info = running.engine.info()
    if not is_loopback(config.host) and config.token_file is None:
        log.warning("listening on %s without --token-file: AddImages/RemoveImages are refused", config.host)
    if config.rerank and not info["rerank"]:  # said once here, and in each search's notes
        log.warning("re-ranking (--rerank %d) is skipped for every search: %s", config.rerank, NO_FACTOR_ROWS_NOTE)
    log.info(
        "serving %s (%d images, %s, %s px) on %s:%d; batch %d, compute slots %d, re-rank %d, pid %d",
        config.index, info["count"], info["backbone"], info["image_size"], config.host, running.port,
        info["max_batch"], info["compute_slots"], info["rerank"], os.getpid(),
    )
    log.info("warmed up before serving: %s", ", ".join(f"{k} {v:.0f} ms" for k, v in running.engine.warmup_ms.items()))
    print(f"dff-serve: listening on {config.host}:{running.port}", flush=True)
    while not stop.wait(1.0):
        pass
    log.info("shutting down: draining in-flight requests (grace %.0f s)", config.grace_s)
    running.stop(config.grace_s)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
