"""`WebConfig`: every setting of `dff-web` (the CLI flags map onto it one to one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class WebConfig:
    # the dff-serve (or Ray Serve gRPC ingress) to talk to, HOST:PORT
    grpc: str = "127.0.0.1:50051"
    token_file: Path | None = None
    tls_ca: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    # uploads larger than this are refused in the page's words (dff-serve's default message limit)
    max_upload_mb: float = 32.0
    # the longer side of the thumbnails the app serves (resized by dff-serve, cached here)
    thumbnail_side: int = 320
    # memory for cached thumbnails and for the uploaded query images (each an LRU)
    thumbnail_cache_mb: float = 64.0
    query_cache_mb: float = 256.0
    # how long the index state behind the thumbnail cache is trusted before it is asked again:
    # after an add/remove the cache is dropped within this time
    info_ttl_s: float = 2.0
    # seconds a search may take on the server (localization of 100 results is the slow case)
    search_timeout_s: float = 120.0
    # page defaults
    default_top_k: int = 12

    def grpc_host_port(self) -> tuple[str, int]:
        host, _, port = self.grpc.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--grpc needs HOST:PORT (e.g. 127.0.0.1:50051), got {self.grpc!r}")
        return host.strip("[]"), int(port)
