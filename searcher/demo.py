"""`dff-demo [FOLDER] [--query IMAGE]`: the whole product in one command.

Indexes FOLDER (default: real photos that scikit-image ships, written to a cache folder), starts
`dff-serve` on a free loopback port, waits for its health check to say SERVING, runs one query
through `dff-query`, prints the ranked results and stops the server. With no FOLDER the query is
the right view of scikit-image's stereo motorcycle pair, whose left view is in the index.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DEMO_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
)


def default_cache_dir() -> Path:
    return Path(os.environ.get("DFF_DEMO_DIR", Path.home() / ".cache" / "dffsearch" / "demo"))


def write_demo_photos(folder: Path) -> Path:
    """Write scikit-image's colour sample photos (+ the left motorcycle view) as JPEGs; return the query."""
    import skimage.data
    from PIL import Image

    from descriptors.sample_photos import sample_photo, write_sample_photos

    write_sample_photos(folder, DEMO_PHOTOS, quality=92, overwrite=False)
    left_path = folder / "motorcycle_left.jpg"
    if not left_path.exists():
        sample_photo("stereo_motorcycle").save(left_path, quality=92)  # the pair's left view
    query = folder.parent / "query_motorcycle_right.jpg"
    if not query.exists():
        _, right, _ = skimage.data.stereo_motorcycle()
        Image.fromarray(right).save(query, quality=92)
    return query


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_serving(port: int, server: subprocess.Popen, timeout: float = 180.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"dff-serve exited with code {server.returncode} before it was ready")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise SystemExit(f"dff-serve did not report SERVING within {timeout:.0f} s")


def _tool(name: str) -> str:
    """The console script next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dff-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folder", nargs="?", type=Path, help="images to index (default: scikit-image sample photos)"
    )
    parser.add_argument("--query", type=Path, help="query image (default: the first image of FOLDER)")
    parser.add_argument("--index", type=Path, help="index directory (default: a cache folder)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--rebuild", action="store_true", help="delete and rebuild the demo index")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="compute threads for dff-index and dff-serve (default 0: the CPUs not busy with other work)",
    )
    parser.add_argument("--verbose", action="store_true", help="dff-index and dff-serve print their thread settings")
    args = parser.parse_args(argv)
    thread_flags = (["--threads", str(args.threads)] if args.threads else []) + (["--verbose"] if args.verbose else [])

    cache = default_cache_dir()
    if args.folder is None:
        folder = cache / "photos"
        default_query = write_demo_photos(folder)
    else:
        folder = args.folder.expanduser().resolve()
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder")
        from descriptors.images import iter_image_files

        images = list(iter_image_files(folder))
        if not images:
            parser.error(f"{folder} holds no .jpg/.jpeg/.png/.webp images")
        default_query = images[0]
    query = (args.query or default_query).expanduser().resolve()
    # the tag covers the default settings too: after an upgrade that changes them (image size,
    # K, ...) the demo builds a fresh index instead of serving one made with the old ones
    from indexer.config import IndexConfig

    settings = json.dumps(IndexConfig().extraction_fingerprint(), sort_keys=True)
    folder_tag = hashlib.sha1(f"{folder}\n{settings}".encode()).hexdigest()[:10]
    index_dir = (args.index or cache / f"index-{folder_tag}").expanduser().resolve()
    if args.rebuild and index_dir.exists():
        shutil.rmtree(index_dir)

    if not (index_dir / "manifest.json").exists():
        print(f"== indexing {folder} -> {index_dir}", flush=True)
        subprocess.run([_tool("dff-index"), "build", str(folder), "--out", str(index_dir), *thread_flags], check=True)
    else:
        print(f"== using the existing index {index_dir} (--rebuild to redo it)", flush=True)

    port = free_port()
    print(f"== starting dff-serve on 127.0.0.1:{port}", flush=True)
    server = subprocess.Popen([_tool("dff-serve"), "--index", str(index_dir), "--port", str(port), *thread_flags])
    try:
        wait_serving(port, server)
        print(f"== query {query}", flush=True)
        result = subprocess.run(
            [_tool("dff-query"), str(query), "--port", str(port), "--top-k", str(args.top_k), "--localize"],
            check=False,
        )
        return result.returncode
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        print("== server stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
