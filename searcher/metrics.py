"""Prometheus metrics of the searcher: requests and errors by method and code, per-stage latency.

Each `SearcherMetrics` owns its `CollectorRegistry`, so several servers (tests) in one process do
not collide in the global registry; `serve(port)` exposes it over HTTP for Prometheus.
"""

from __future__ import annotations

from collections.abc import Mapping

# seconds: from 1 ms (FAISS on a small index) to 30 s (a big localization on a busy CPU)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class SearcherMetrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dffsearch_requests", "RPCs handled, by method and gRPC status code", ["method", "code"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "dffsearch_request_seconds", "RPC latency on the server, by method", ["method"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "dffsearch_stage_seconds",
            "Search latency per stage (decode, forward, nmf, descriptor, faiss, expansion, localization)",
            ["stage"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.indexed_images = Gauge("dffsearch_indexed_images", "Images in the index", registry=self.registry)
        self.in_flight = Gauge("dffsearch_in_flight_requests", "RPCs being handled", registry=self.registry)

    def observe_request(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method=method, code=code).inc()
        self.request_seconds.labels(method=method).observe(seconds)

    def observe_stages(self, stages_ms: Mapping[str, float]) -> None:
        for stage, milliseconds in stages_ms.items():
            self.stage_seconds.labels(stage=stage).observe(milliseconds / 1000.0)

    def serve(self, port: int, host: str = "127.0.0.1"):
        """Start the /metrics HTTP endpoint in a daemon thread; returns (server, thread)."""
        from prometheus_client import start_http_server

        return start_http_server(port, addr=host, registry=self.registry)

    def exposition(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
