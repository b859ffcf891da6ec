"""The search page's cost on top of gRPC: page load, a search through the page's HTTP API vs the
same search over gRPC directly, and the results grid with its thumbnails cold and warm.

    python benchmarks/bench_web.py [--rounds 8] [--top-k 12] [--json out.json]

Builds (once, in --workdir) an index of scikit-image's sample photos at the product's defaults,
starts `dff-serve` (--torch-threads, default 1) and two `dff-web` beside it: one with the
thumbnail cache off (every thumbnail cold: resized by dff-serve) and one with it on (warm after
the first round). Each round, for each query photo, interleaved so a shared machine's noise hits
every path alike:
  grpc            SearchClient.search with what the page asks for (localize, heatmaps, concepts)
  web             POST /api/search (the upload is made once, as the page does)
  web + thumbs    POST /api/search, then GET every result's thumbnail (6 at a time, as a browser)
(each pair back to back, which of the two goes first alternating) and the same pair with localize off (the cheapest search, where the page's overhead shows most).
Page load: Chromium (when installed) from navigation to the page being ready (index panel
filled); else the HTML, JS, CSS and /api/info over HTTP.

--json FILE writes: page_load_ms, page_load_method, grpc_search_ms, web_search_ms,
web_overhead_ratio (web / grpc, target <= 1.15), grpc_search_plain_ms, web_search_plain_ms,
web_overhead_ratio_plain (localize off), web_with_thumbs_cold_ms, web_with_thumbs_warm_ms,
thumbs_cold_ratio, thumbs_warm_ratio (each / grpc_search_ms), thumbnail_cold_ms,
thumbnail_warm_ms (one thumbnail, median), rounds, top_k, images, cpu_count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera", "coins", "brick", "colorwheel",
          "hubble_deep_field", "immunohistochemistry", "retina", "moon")
QUERIES = ("chelsea", "coffee", "rocket", "astronaut")


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def page_load_ms(url: str, repeats: int = 3) -> tuple[float, str]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        chromium = ""
    if chromium and Path(chromium).exists():
        times = []
        with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=chromium, headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
            )
            page = context.new_page()
            for _ in range(repeats + 1):  # the first load warms the browser itself
                start = time.perf_counter()
                page.goto(url)
                page.wait_for_selector("body[data-ready='1']", timeout=60_000)
                times.append(_ms(start))
            context.close()
        return statistics.median(times[1:]), "chromium (navigation to index panel filled)"
    import httpx

    times = []
    with httpx.Client(base_url=url) as client:
        for _ in range(repeats + 1):
            start = time.perf_counter()
            for path in ("/", "/static/app.js", "/static/app.css", "/api/info"):
                client.get(path).raise_for_status()
            times.append(_ms(start))
    return statistics.median(times[1:]), "http (html, js, css, /api/info)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=12)
    parser.add_argument("--torch-threads", type=int, default=1, help="dff-serve's torch threads")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "dff-bench-web")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import httpx

    from descriptors.sample_photos import write_sample_photos
    from indexer import IndexConfig, build_index
    from searcher.client import SearchClient
    from searcher.launcher import launch_serve, launch_web

    photos = args.workdir / "photos"
    index = args.workdir / "index"
    if not index.exists():
        write_sample_photos(photos, PHOTOS, quality=90)
        print(f"building a {len(PHOTOS)}-image index at the default settings ...", file=sys.stderr)
        build_index(photos, index, IndexConfig(), progress=False)
    queries = [(photos / f"{name}.jpg").read_bytes() for name in QUERIES]
    log = args.workdir / "servers.log"
    rows: dict[str, list[float]] = {k: [] for k in (
        "grpc", "web", "grpc_plain", "web_plain", "web_thumbs_cold", "web_thumbs_warm", "thumb_cold", "thumb_warm")}
    with launch_serve(index, ["--torch-threads", str(args.torch_threads)], log_path=log) as server, \
            launch_web(server.target, ["--thumbnail-cache-mb", "0"], log_path=log) as cold_web, \
            launch_web(server.target, log_path=log) as warm_web, \
            SearchClient(server.host, server.port, timeout=600) as client, \
            httpx.Client(base_url=cold_web.url, timeout=600) as cold, \
            httpx.Client(base_url=warm_web.url, timeout=600) as warm, \
            ThreadPoolExecutor(6) as pool:
        load_ms, load_method = page_load_ms(warm_web.url)
        uploads = {}
        for http in (cold, warm):
            for position, data in enumerate(queries):
                answer = http.post("/api/queries", files={"file": (f"q{position}.jpg", data, "image/jpeg")})
                uploads[(id(http), position)] = answer.raise_for_status().json()["query"]

        def web_search(http, position: int, localize: bool) -> list[int]:
            body = {"query": uploads[(id(http), position)], "top_k": args.top_k, "localize": localize}
            return [r["id"] for r in http.post("/api/search", json=body).raise_for_status().json()["results"]]

        def thumbnails(http, ids: list[int], key: str) -> None:
            def one(image_id: int) -> None:
                start = time.perf_counter()
                http.get(f"/api/thumbs/{image_id}").raise_for_status()
                rows[key].append(_ms(start))
            list(pool.map(one, ids))

        for position, data in enumerate(queries):  # warm-up: first forwards, connections, browser caches
            client.search(data, top_k=args.top_k, localize=True, return_heatmaps=True, return_concepts=True)
            thumbnails(warm, web_search(warm, position, True), "thumb_warm")
        rows["thumb_warm"].clear()

        def timed(key: str, call) -> None:
            start = time.perf_counter()
            call()
            rows[key].append(_ms(start))

        for round_number in range(args.rounds):
            for position, data in enumerate(queries):
                pairs = [
                    [("grpc", lambda d=data: client.search(d, top_k=args.top_k, localize=True, return_heatmaps=True,
                                                           return_concepts=True)),
                     ("web", lambda p=position: web_search(warm, p, True))],
                    [("grpc_plain", lambda d=data: client.search(d, top_k=args.top_k)),
                     ("web_plain", lambda p=position: web_search(warm, p, False))],
                    [("web_thumbs_cold", lambda p=position: thumbnails(cold, web_search(cold, p, True), "thumb_cold")),
                     ("web_thumbs_warm", lambda p=position: thumbnails(warm, web_search(warm, p, True), "thumb_warm"))],
                ]
                for pair in pairs:  # each pair back to back, its order alternating between rounds
                    for key, call in (pair if (round_number + position) % 2 == 0 else pair[::-1]):
                        timed(key, call)
            print(f"round {round_number + 1}/{args.rounds} done", file=sys.stderr)

    med = {key: statistics.median(values) for key, values in rows.items()}
    result = {
        "page_load_ms": round(load_ms, 1),
        "page_load_method": load_method,
        "grpc_search_ms": round(med["grpc"], 1),
        "web_search_ms": round(med["web"], 1),
        "web_overhead_ratio": round(med["web"] / med["grpc"], 3),
        "grpc_search_plain_ms": round(med["grpc_plain"], 1),
        "web_search_plain_ms": round(med["web_plain"], 1),
        "web_overhead_ratio_plain": round(med["web_plain"] / med["grpc_plain"], 3),
        "web_with_thumbs_cold_ms": round(med["web_thumbs_cold"], 1),
        "web_with_thumbs_warm_ms": round(med["web_thumbs_warm"], 1),
        "thumbs_cold_ratio": round(med["web_thumbs_cold"] / med["grpc"], 3),
        "thumbs_warm_ratio": round(med["web_thumbs_warm"] / med["grpc"], 3),
        "thumbnail_cold_ms": round(med["thumb_cold"], 2),
        "thumbnail_warm_ms": round(med["thumb_warm"], 2),
        "rounds": args.rounds,
        "top_k": args.top_k,
        "images": len(PHOTOS),
        "cpu_count": os.cpu_count(),
    }
    print(f"\npage load: {result['page_load_ms']} ms ({load_method})")
    print(f"{'path (median of ' + str(args.rounds * len(queries)) + ')':<44} {'ms':>9} {'x gRPC':>8}")
    table = [
        ("gRPC search (localize, heatmaps, concepts)", med["grpc"], med["grpc"]),
        ("page API search, same request", med["web"], med["grpc"]),
        ("gRPC search, localize off", med["grpc_plain"], med["grpc_plain"]),
        ("page API search, localize off", med["web_plain"], med["grpc_plain"]),
        (f"page API search + {args.top_k} thumbnails, cold", med["web_thumbs_cold"], med["grpc"]),
        (f"page API search + {args.top_k} thumbnails, warm", med["web_thumbs_warm"], med["grpc"]),
    ]
    for label, value, reference in table:
        print(f"{label:<44} {value:>9.1f} {value / reference:>8.3f}")
    print(f"one thumbnail: cold {med['thumb_cold']:.1f} ms, warm {med['thumb_warm']:.2f} ms")
    print(f"web_overhead_ratio = {result['web_overhead_ratio']} (target <= 1.15: "
          f"{'met' if result['web_overhead_ratio'] <= 1.15 else 'NOT met'})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
