"""Abuse test of a live `dff-serve`: does a hostile or careless load stay within bounded memory,
get the right status codes, and leave the service healthy and answering?

    python benchmarks/abuse_search.py [--json FILE] [--clients 16] [--megapixels 60]
        [--add-images 1000] [--localize-top-k 100] [--index-images 120] [--rounds 2]

Builds an index of --index-images real photos (variants of scikit-image's samples) at the
product's default size, starts `dff-serve` on a free port with its default limits, measures its
RSS after start-up and one warm-up query (`idle_rss_mb`) and the p50 of a normal query on an idle
server, then, all at once:
  - --clients threads each send --rounds queries with a --megapixels JPEG (60 MP by default);
  - one client sends one AddImages of --add-images photos (--add-side px);
  - one client asks Search with localize and top_k = --localize-top-k;
  - one client sends garbage bytes in a loop;
  - one client sends normal queries in a loop (their p50 is `p50_ms_normal_query_during_abuse`);
  - the health service is asked every 0.5 s;
while the server's RSS is sampled every 50 ms (`peak_rss_mb`). Targets: peak <= 2.5 x idle, never
killed, no UNKNOWN/INTERNAL, SERVING throughout.

--json FILE writes {"idle_rss_mb", "peak_rss_mb", "peak_over_idle", "server_alive", "status_counts",
"status_by_client" (big / add / localize / garbage / normal; final outcomes), "busy_refusals"
(per client: RESOURCE_EXHAUSTED from --max-in-flight, retried with backoff), "unexpected", "health_serving_throughout", "health_checks", "p50_ms_normal_query_idle",
"p50_ms_normal_query_during_abuse", "p50_ratio_during_over_idle", "big_jpeg_mb", "big_jpeg_size",
"add_images_mb", "seconds", "settings"}.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "proto"))


PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "coins", "brick", "camera", "hubble_deep_field")


def photo_variants(count: int, side: int, seed: int = 0) -> list[bytes]:
    """`count` distinct real-looking JPEGs: random crops (and flips) of scikit-image's photos."""
    from PIL import Image

    from descriptors.sample_photos import sample_photo

    rng = np.random.default_rng(seed)
    sources = [sample_photo(name) for name in PHOTOS]
    out = []
    for i in range(count):
        img = sources[i % len(sources)]
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = img.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = side / max(crop.size)
        crop = crop.resize((max(16, round(cw * scale)), max(16, round(ch * scale))), Image.BILINEAR)
        buffer = io.BytesIO()
        crop.save(buffer, format="JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def big_jpeg(megapixels: float, quality: int) -> tuple[bytes, tuple[int, int]]:
    """A photo upscaled to `megapixels` (4:3) with sensor-like noise, as a camera would write it."""
    from PIL import Image

    from descriptors.sample_photos import sample_photo

    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = int(megapixels * 1e6 / width)
    img = sample_photo("astronaut").resize((width, height), Image.BICUBIC)
    noise = np.random.default_rng(1).integers(-6, 7, size=(height, width, 1), dtype=np.int16)
    array = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    del img, noise
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), (width, height)


class RssSampler(threading.Thread):
    """The peak RSS of a process, sampled every `interval` seconds until `stop()`."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import psutil

        super().__init__(daemon=True)
        self.process, self.interval = psutil.Process(pid), interval
        self.peak = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except Exception:  # the process died: the caller reports it
                return
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return self.peak


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


class Abuse:
    """The concurrent clients; every RPC's status code goes into `codes`."""

    def __init__(self, port: int, timeout: float) -> None:
        self.port, self.timeout = port, timeout
        self.codes: Counter = Counter()
        self.busy_refusals: Counter = Counter()  # RESOURCE_EXHAUSTED for --max-in-flight, retried
        self._rng = np.random.default_rng(3)
        self.codes_by_client: dict[str, Counter] = {}
        self.normal_ms: list[float] = []
        self.health: list[bool] = []
        self.done = threading.Event()
        self._lock = threading.Lock()

    def client(self):
        from searcher.client import SearchClient

        return SearchClient("127.0.0.1", self.port, timeout=self.timeout, retries=0)  # the server's refusals, not the client's retries

    def call(self, kind: str, fn, *args, **kwargs):
        """One RPC; refused as busy (`--max-in-flight`), it is retried with backoff as a well-behaved
        client would, each refusal counted (`busy_refusals`), so that every load in the mix runs."""
        import grpc

        backoff = 0.1
        while True:
            try:
                result = fn(*args, **kwargs)
                code = "OK"
            except grpc.RpcError as exc:
                result, code = None, exc.code().name
                if code == "RESOURCE_EXHAUSTED" and "--max-in-flight" in (exc.details() or ""):
                    with self._lock:
                        self.busy_refusals[kind] += 1
                    time.sleep(backoff * (0.5 + self._rng.random()))
                    backoff = min(2.0, backoff * 2)
                    continue
            break
        with self._lock:
            self.codes[code] += 1
            self.codes_by_client.setdefault(kind, Counter())[code] += 1
        return result

    def big_queries(self, data: bytes, rounds: int) -> None:
        with self.client() as client:
            for _ in range(rounds):
                self.call("big", client.search, data, top_k=10)

    def add(self, items: list[tuple[str, bytes]]) -> None:
        with self.client() as client:
            self.call("add", client.add_images, items)

    def localize(self, data: bytes, top_k: int) -> None:
        with self.client() as client:
            self.call("localize", client.search, data, top_k=top_k, localize=True)

    def garbage(self) -> None:
        rng = np.random.default_rng(2)
        with self.client() as client:
            while not self.done.is_set():
                self.call("garbage", client.search, rng.bytes(1 << 20), top_k=5)

    def normal(self, data: bytes) -> None:
        with self.client() as client:
            while not self.done.is_set():
                start = time.perf_counter()
                if self.call("normal", client.search, data, top_k=10) is not None:
                    self.normal_ms.append((time.perf_counter() - start) * 1000.0)

    def watch_health(self) -> None:
        import grpc
        from grpc_health.v1 import health_pb2

        with self.client() as client:
            while not self.done.is_set():
                try:
                    status = client.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2.0).status
                    self.health.append(status == health_pb2.HealthCheckResponse.SERVING)
                except grpc.RpcError:
                    self.health.append(False)
                self.done.wait(0.5)


def normal_p50(port: int, data: bytes, count: int, timeout: float) -> float:
    from searcher.client import SearchClient

    times = []
    with SearchClient("127.0.0.1", port, timeout=timeout, retries=0) as client:
        for _ in range(count):
            start = time.perf_counter()
            client.search(data, top_k=10)
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def build_index(folder: Path, images: list[bytes], threads: int) -> Path:
    from indexer import IndexConfig
    from indexer import build_index as build

    photos = folder / "photos"
    photos.mkdir(parents=True)
    for i, data in enumerate(images):
        (photos / f"photo_{i:04d}.jpg").write_bytes(data)
    index = folder / "index"
    build(photos, index, IndexConfig(workers=1, threads=threads), progress=False)
    return index


def run(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="dff-abuse-"))
    print(f"building an index of {args.index_images} photos in {workdir} ...", file=sys.stderr)
    index = build_index(workdir, photo_variants(args.index_images, 480), args.threads)
    normal_query = photo_variants(1, 480, seed=99)[0]
    big, big_size = big_jpeg(args.megapixels, args.jpeg_quality)
    uploads = [(f"upload-{i}", data) for i, data in enumerate(photo_variants(args.add_images, args.add_side, seed=7))]
    print(f"big JPEG {big_size[0]}x{big_size[1]} = {len(big) / 2**20:.1f} MB; "
          f"AddImages {len(uploads)} images = {sum(len(d) for _, d in uploads) / 2**20:.1f} MB", file=sys.stderr)

    from searcher.launcher import launch_serve  # the one dff-serve start-up (demo, load test, tests)

    server = launch_serve(index, ["--torch-threads", str(args.threads)], log_path=workdir / "serve.log")
    process, port = server.process, server.port
    try:
        abuse = Abuse(port, args.timeout)
        with abuse.client() as client:
            client.wait_until_serving(120)
            client.search(normal_query, top_k=10)  # warm-up
        idle_rss = rss_mb(process.pid)
        p50_idle = normal_p50(port, normal_query, args.idle_queries, args.timeout)

        sampler = RssSampler(process.pid)
        sampler.start()
        started = time.perf_counter()
        background = [threading.Thread(target=abuse.garbage), threading.Thread(target=abuse.normal, args=(normal_query,)),
                      threading.Thread(target=abuse.watch_health)]
        finite = [threading.Thread(target=abuse.big_queries, args=(big, args.rounds)) for _ in range(args.clients)]
        finite += [threading.Thread(target=abuse.add, args=(uploads,)),
                   threading.Thread(target=abuse.localize, args=(normal_query, args.localize_top_k))]
        for thread in background + finite:
            thread.start()
        for thread in finite:
            thread.join()
        abuse.done.set()
        for thread in background:
            thread.join()
        seconds = time.perf_counter() - started
        peak_rss = sampler.stop() / 2**20
        alive = process.poll() is None
    finally:
        if process.poll() is None:
            process.terminate()  # drains for --grace (30 s); work a client gave up on may outlast it
            try:
                process.wait(120)
            except subprocess.TimeoutExpired:
                print("dff-serve did not exit within 120 s of SIGTERM; killed", file=sys.stderr)
                process.kill()
                process.wait()
    codes = dict(sorted(abuse.codes.items()))
    p50_during = statistics.median(abuse.normal_ms) if abuse.normal_ms else float("nan")
    return {
        "idle_rss_mb": round(idle_rss, 1),
        "peak_rss_mb": round(peak_rss, 1),
        "peak_over_idle": round(peak_rss / idle_rss, 3),
        "server_alive": alive,
        "status_counts": codes,
        "status_by_client": {kind: dict(sorted(c.items())) for kind, c in sorted(abuse.codes_by_client.items())},
        "busy_refusals": dict(sorted(abuse.busy_refusals.items())),
        "unexpected": codes.get("UNKNOWN", 0) + codes.get("INTERNAL", 0),
        "health_serving_throughout": bool(abuse.health) and all(abuse.health),
        "health_checks": len(abuse.health),
        "p50_ms_normal_query_idle": round(p50_idle, 1),
        "p50_ms_normal_query_during_abuse": round(p50_during, 1),
        "p50_ratio_during_over_idle": round(p50_during / p50_idle, 2),
        "big_jpeg_mb": round(len(big) / 2**20, 2),
        "big_jpeg_size": list(big_size),
        "add_images_mb": round(sum(len(d) for _, d in uploads) / 2**20, 2),
        "seconds": round(seconds, 1),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16, help="clients sending the big JPEG")
    parser.add_argument("--rounds", type=int, default=2, help="big queries per client")
    parser.add_argument("--megapixels", type=float, default=60.0)
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--add-images", type=int, default=1000, help="images in the one AddImages call")
    parser.add_argument("--add-side", type=int, default=320, help="longer side of each uploaded photo")
    parser.add_argument("--localize-top-k", type=int, default=100)
    parser.add_argument("--index-images", type=int, default=120, help="photos in the served index")
    parser.add_argument("--idle-queries", type=int, default=15, help="normal queries on the idle server")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server and the build")
    parser.add_argument("--timeout", type=float, default=900.0, help="client deadline per RPC, seconds")
    parser.add_argument("--json", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    result = run(args)
    rows = [
        ("server RSS idle / peak (MB)", f"{result['idle_rss_mb']} / {result['peak_rss_mb']}"),
        ("peak / idle (target <= 2.5)", f"{result['peak_over_idle']}"),
        ("server alive at the end", f"{result['server_alive']}"),
        ("status counts", json.dumps(result["status_counts"])),
        ("  by client", json.dumps(result["status_by_client"])),
        ("busy refusals, retried (--max-in-flight)", json.dumps(result["busy_refusals"])),
        ("unexpected UNKNOWN/INTERNAL (target 0)", f"{result['unexpected']}"),
        ("health SERVING every 0.5 s", f"{result['health_serving_throughout']} ({result['health_checks']} checks)"),
        ("normal query p50 idle / during abuse (ms)",
         f"{result['p50_ms_normal_query_idle']} / {result['p50_ms_normal_query_during_abuse']} "
         f"(x{result['p50_ratio_during_over_idle']})"),
        ("big JPEG", f"{result['big_jpeg_size'][0]}x{result['big_jpeg_size'][1]}, {result['big_jpeg_mb']} MB"),
        ("abuse phase (s)", f"{result['seconds']}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
