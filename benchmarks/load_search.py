"""Load test of the gRPC searcher: QPS and latency vs concurrent clients, per-stage breakdown,
and the bare backbone forward rate on the same images in the same run as the reference.

    python benchmarks/load_search.py --clients 1,4,8 --duration 20 [--json out.json]
    python benchmarks/load_search.py --target host:port [--token-file F] ...

Without --target it builds a small real index (the Paris subset in $DFF_SHARED_DATA, docs/data.md, when present,
else scikit-image's sample photos) with the default backbone at --image-size (default 512, the
product default), starts `dff-serve` on a free port, and stops it at the end. Each client is a
thread with its own channel sending Search requests back to back (the indexed photos, cycled).
Also measures FAISS search on --faiss-vectors random unit vectors (exact, inner product) with
the real query descriptors, against the measured query time.

--json FILE writes {"errors": n, "forward_qps": x, "forward_ms": x, "forward_runtime": name,
"forward_ms_by_runtime": {"openvino": x, "torch": x}, "qps": {"1": x, ...}, "qps_ratio": {...},
"p50_ratio": x, "p50_ms": {...}, "p99_ms": {...}, "qps_ratio_ceiling": x, "outside_forward_ms": x}. The reference `forward_ms` / `forward_qps` is the
bare forward through the runtime the server runs (the index's, `backbone.runtime` in its manifest:
the same as bench_indexer.py's), at the faster of 1 and all threads; PyTorch eager is printed and
stored beside it. `qps_ratio` = QPS / forward_qps (target >= 0.85 at 8 clients), `p50_ratio` =
p50 at 1 client / forward_ms (target <= 1.5), docs/searcher.md. `qps_ratio_ceiling` (with 1 client
measured) is the most `qps_ratio` this machine allows: `outside_forward_ms` (the 1-client p50 minus
the server's forward stage: decode, NMF, re-rank, gRPC, one thread each) is CPU the forward cannot
share, and the forward costs at least its 1-thread time in CPU (`qps_ratio_ceiling`'s docstring).

--rerank-compare N also times one client re-ranking the first N results by the stored factor
rows against re-ranking off, in --rounds alternating rounds of --duration / --rounds seconds each
(a busy machine drifts: alternating spreads the drift over both), and adds to the JSON
"rerank_latency_ratio" (median p50 with N / median p50 with 0; target <= 1.3), "rerank_p50_ms"
{"0": x, "N": x}, "rerank_stage_ms" (the server's rerank stage) and "rerank_bytes_per_image"
(the factor rows on disk per indexed image; a --target server's index is not read: null). The
index needs >= N images for the comparison to mean N (--images).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = ("queue", "decode", "forward", "nmf", "descriptor", "faiss", "rerank", "expansion", "localization")


def collection(count: int, folder: Path) -> list[Path]:
    """Write `count` real photos into `folder` (Paris subset if present, else scikit-image)."""
    from descriptors.sample_photos import write_sample_photos

    folder.mkdir(parents=True, exist_ok=True)
    shared = (
        Path(os.environ.get("DFF_SHARED_DATA", REPO.parent / "shared" / "data")) / "paris6k-subset" / "jpg"
    )
    if shared.is_dir():
        files = sorted(shared.rglob("*.jpg"))[:: max(1, len(list(shared.rglob("*.jpg"))) // count)][:count]
        out = []
        for path in files:
            target = folder / path.name
            target.write_bytes(path.read_bytes())
            out.append(target)
        return out
    names = [
        "chelsea",
        "coffee",
        "astronaut",
        "rocket",
        "hubble_deep_field",
        "immunohistochemistry",
        "colorwheel",
        "camera",
        "coins",
        "brick",
        "grass",
        "gravel",
        "moon",
        "retina",
    ][:count]
    return write_sample_photos(folder, names, quality=92)


def reference_backbones(manifest: dict) -> dict:
    """runtime name -> the backbone run through it: the server's (`build_extractor` on the served
    manifest, as dff-serve loads it: the index's runtime, torch where it is not installed) and
    PyTorch eager, for comparison."""
    from descriptors.backbones import load_backbone
    from descriptors.runtimes import use_runtime
    from indexer.manifest import build_extractor

    served = build_extractor(manifest).backbone
    out = {served.runtime: served}
    if served.runtime != "torch":
        info = manifest["backbone"]
        out["torch"] = use_runtime(
            load_backbone(info["name"], weights=info.get("weights"), reflection_padding=bool(info.get("reflection_padding", False))),
            "torch",
        )
    return out


def bare_forward(backbone, images: list[bytes], image_size: int, seconds: float, threads: int) -> float:
    """ms per image of the backbone forward alone (batch 1, `threads` compute threads, same
    images), run in a worker thread like the server's; `backbone` runs through its runtime."""
    import torch

    from descriptors.images import decode_image
    from descriptors.openvino_shapes import STATIC_AFTER

    tensors = [backbone.preprocess(decode_image(data), image_size) for data in images]
    result: list[float] = []

    def measure() -> None:
        torch.set_num_threads(threads)  # a compiled runtime runs on the session for these threads
        with torch.inference_mode():
            for shape in {
                tuple(t.shape) for t in tensors
            }:  # first calls per input shape are slow (oneDNN setup; OpenVINO compiles the shape)
                first = next(t for t in tensors if tuple(t.shape) == shape)
                for _ in range(STATIC_AFTER if backbone.runtime == "openvino" else 2):
                    backbone.forward(first[None])
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds or count < len(tensors):
                backbone.forward(tensors[count % len(tensors)][None])
                count += 1
        result.append((time.perf_counter() - start) * 1000.0 / count)

    default_threads = torch.get_num_threads()
    worker = threading.Thread(target=measure)
    worker.start()
    worker.join()
    torch.set_num_threads(default_threads)
    return result[0]


def run_clients(
    target: str,
    token: str | None,
    images: list[bytes],
    clients: int,
    duration: float,
    warmup: float,
    request: dict,
) -> dict:
    from searcher.client import SearchClient

    host, port = target.rsplit(":", 1)
    latencies: list[float] = []
    stages: dict[str, list[float]] = defaultdict(list)
    errors: list[str] = []
    lock = threading.Lock()
    start_at = time.monotonic() + 0.2
    measure_from, stop_at = start_at + warmup, start_at + warmup + duration

    def worker(offset: int) -> None:
        with SearchClient(host, int(port), token=token, timeout=120) as client:
            i = offset
            while time.monotonic() < start_at:
                time.sleep(0.001)
            while True:
                began = time.monotonic()
                if began >= stop_at:
                    return
                try:
                    response = client.search(images[i % len(images)], **request)
                except Exception as exc:  # counted, reported, never hidden
                    detail = exc.details() if hasattr(exc, "details") else str(exc)
                    with lock:
                        errors.append(f"{type(exc).__name__}: {detail}")
                    i += 1
                    continue
                ended = time.monotonic()
                i += 1
                if began >= measure_from and ended <= stop_at:
                    with lock:
                        latencies.append((ended - began) * 1000.0)
                        for stage in response.stages:
                            stages[stage.stage].append(stage.milliseconds)

    threads = [threading.Thread(target=worker, args=(c * 3,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return float(np.percentile(ordered, q)) if ordered else float("nan")

    return {
        "clients": clients,
        "requests": len(ordered),
        "qps": len(ordered) / duration,
        "errors": len(errors),
        "error_samples": errors[:3],
        "p50": pct(50),
        "p95": pct(95),
        "p99": pct(99),
        "stages": {s: statistics.fmean(v) for s, v in stages.items()},
    }


def rerank_compare(target: str, token, images: list[bytes], args, request: dict) -> dict:
    """Median over alternating rounds of one client's p50 with re-ranking depth N and with 0."""
    off, on, stage = [], [], []
    rounds = max(1, args.rounds)
    for _ in range(rounds):
        for depth, out in ((0, off), (args.rerank_compare, on)):
            row = run_clients(target, token, images, 1, args.duration / rounds, 1.0, request | {"rerank": depth})
            out.append(row["p50"])
            if depth:
                stage.append(row["stages"].get("rerank", float("nan")))
    p50_off, p50_on = statistics.median(off), statistics.median(on)
    return {"p50_off": p50_off, "p50_on": p50_on, "ratio": p50_on / p50_off, "stage_ms": statistics.median(stage)}


def faiss_share(index_dir: Path, n_vectors: int, query_ms: float, images: list[bytes]) -> list[dict]:
    """Exact inner-product search (one thread, as dff-serve runs it) on n random unit vectors of
    the index's dimension and of 256 (a whitened index), timed with the real query descriptors
    (first 256 dims for the latter), as a share of the measured query time."""
    import faiss

    faiss.omp_set_num_threads(1)

    from searcher.engine import SearchEngine

    engine = SearchEngine(index_dir)
    queries = []
    for data in images[:8]:
        tensor = engine.backbone.preprocess(engine._decode(data, None), engine.extractor.image_size)
        act = engine.backbone.extract([tensor])[0]
        rows = engine.extractor.rows_from_activations([act], [(1, 1)], None)[0]
        queries.append(engine.extractor.global_descriptor(rows, engine.index.whitening))
    engine.close()
    full = np.asarray(queries, dtype=np.float32)
    return [
        _time_flat(full[:, :dim], n_vectors, query_ms) for dim in sorted({full.shape[1], 256}, reverse=True)
    ]


def _time_flat(queries: np.ndarray, n_vectors: int, query_ms: float) -> dict:
    import faiss

    queries = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True))
    dim = queries.shape[1]
    rng = np.random.default_rng(0)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    for start in range(0, n_vectors, 20_000):
        block = rng.standard_normal((min(20_000, n_vectors - start), dim)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        index.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))
    index.search(queries[:1], 10)
    samples = []
    for _ in range(5):
        for q in queries:
            began = time.perf_counter()
            index.search(q[None], 10)
            samples.append((time.perf_counter() - began) * 1000.0)
    ms = statistics.median(samples)
    return {
        "vectors": n_vectors,
        "dim": dim,
        "search_ms": ms,
        "share": ms / query_ms if query_ms else float("nan"),
    }


def qps_ratio_ceiling(one_client: dict, forward_ms: float, forward_1_thread_ms: float, cpus: int) -> dict:
    """The highest QPS / bare-forward-rate this machine allows, from the 1-client row.

    What a query spends outside the forward (p50 minus the server's forward stage, at 1 client:
    decode, NMF, re-rank, gRPC; each on one thread) is CPU time that the forward cannot share, and
    the forward costs at least its 1-thread time in CPU (more threads never cost less). With every
    core busy, QPS <= cpus / (forward CPU + outside), so the ratio to the bare forward's rate
    (1 / forward_ms) is at most cpus x forward_ms / (forward_1_thread_ms + outside)."""
    outside = max(0.0, one_client["p50"] - one_client["stages"].get("forward", 0.0))
    return {
        "qps_ratio": cpus * forward_ms / (forward_1_thread_ms + outside),
        "outside_forward_ms": outside,
        "forward_cpu_ms": forward_1_thread_ms,
    }


def main(argv: list[str] | None = None) -> int:
    from descriptors.backbones import retrieval_image_size

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per client count")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--target", help="host:port of a running dff-serve (default: start one)")
    parser.add_argument("--token-file", type=Path)
    parser.add_argument("--images", type=int, default=12, help="photos in the small index / query set")
    parser.add_argument("--image-size", type=int, default=retrieval_image_size("efficientnet-lite0"), help="default: the product's")
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--qe", type=int, default=0)
    parser.add_argument("--localize", action="store_true")
    parser.add_argument(
        "--rerank-compare", type=int, default=0, metavar="N",
        help="also time 1 client re-ranking the first N results against re-ranking off (alternating rounds)",
    )
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds of --rerank-compare")
    parser.add_argument("--forward-seconds", type=float, default=10.0)
    parser.add_argument("--faiss-vectors", type=int, default=100_000, help="0 skips the FAISS share")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra dff-serve flag (repeatable)")
    parser.add_argument("--workdir", type=Path, help="keep the index here (default: a temp dir)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.clients.split(",")]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="dff-load-"))
    token = None
    if args.token_file:
        from searcher.auth import read_token_file

        token = read_token_file(args.token_file)
    photos = collection(args.images, workdir / "photos")
    images = [p.read_bytes() for p in photos]
    index = workdir / "index"
    process = None
    if args.target is None:
        if not index.exists():
            from indexer import IndexConfig, build_index

            print(f"building a {len(photos)}-image index at {args.image_size} px ...", file=sys.stderr)
            build_index(workdir / "photos", index, IndexConfig(image_size=args.image_size), progress=False)
        from searcher.launcher import launch_serve

        process = launch_serve(
            index, [a for extra in args.serve_arg for a in extra.split()], log_path=workdir / "serve.log"
        )
        target = process.target
    else:
        target = args.target
    try:
        from searcher.client import SearchClient

        host, port = target.rsplit(":", 1)
        with SearchClient(host, int(port), token=token, timeout=600) as client:
            client.wait_until_serving(300)
            info = client.info()
            # warm passes: the first forwards of each input shape are slow, and an OpenVINO server
            # compiles a shape's own model on its STATIC_AFTER-th forward (the steady state)
            from descriptors.openvino_shapes import STATIC_AFTER

            for _ in range(STATIC_AFTER):
                for data in images:
                    client.search(data, top_k=args.top_k)
        import torch

        cores = torch.get_num_threads()
        thread_counts = sorted({1, cores})
        backbones = reference_backbones(json.loads(info.manifest_json))
        served_runtime = next(iter(backbones))  # the reference: what the server runs

        def forward_table() -> dict:
            return {
                (name, t): bare_forward(backbone, images, info.image_size, args.forward_seconds / 2, t)
                for name, backbone in backbones.items() for t in thread_counts
            }

        # the machine may be shared: measure the reference before and after the load, average
        before = forward_table()
        request = {"top_k": args.top_k, "query_expansion": args.qe, "localize": args.localize}
        rows = [run_clients(target, token, images, c, args.duration, args.warmup, request) for c in counts]
        compare = rerank_compare(target, token, images, args, request) if args.rerank_compare else None
        after = forward_table()
        forward_by = {key: (before[key] + after[key]) / 2 for key in before}
        forward_ms_by_runtime = {name: min(forward_by[name, t] for t in thread_counts) for name in backbones}
        forward_ms = forward_ms_by_runtime[served_runtime]
    finally:
        if process is not None:
            print(f"dff-serve stopped with exit code {process.stop(120)}", file=sys.stderr)

    forward_qps = 1000.0 / forward_ms
    print(
        f"\nindex: {info.count} images, {info.backbone} at {info.image_size} px, {info.method}; target {target}"
    )
    print("bare backbone forward, batch 1, same images, this process:")
    for name in backbones:
        measured = ", ".join(
            f"{t} thread(s) {forward_by[name, t]:.1f} ms (before {before[name, t]:.1f}, after {after[name, t]:.1f})"
            for t in thread_counts
        )
        role = "the server's runtime" if name == served_runtime else "for comparison"
        print(f"  {name:<12} ({role}): {measured}")
    print(f"reference = the server's runtime ({served_runtime}), the faster thread count: "
          f"{forward_ms:.1f} ms = {forward_qps:.2f} img/s")
    header = (
        f"{'clients':>7} {'QPS':>6} {'xfwd':>5} {'p50':>7} {'p95':>7} {'p99':>7} {'err':>4}  "
        + " ".join(f"{s[:6]:>7}" for s in STAGES)
    )
    print(header + "   (latency and stage columns: ms)")
    for row in rows:
        stage_cells = " ".join(f"{row['stages'].get(s, float('nan')):7.1f}" for s in STAGES)
        print(
            f"{row['clients']:>7} {row['qps']:6.2f} {row['qps'] / forward_qps:5.2f} {row['p50']:7.1f} "
            f"{row['p95']:7.1f} {row['p99']:7.1f} {row['errors']:>4}  {stage_cells}"
        )
        for sample in row["error_samples"]:
            print(f"        error: {sample}")
    one = next((r for r in rows if r["clients"] == 1), rows[0])
    print(f"p50 at {one['clients']} client(s) / one bare forward: {one['p50'] / forward_ms:.2f} (target <= 1.5); "
          f"QPS / bare forward rate (target >= 0.85 at 8 clients): "
          + ", ".join(f"{r['clients']}: {r['qps'] / forward_qps:.2f}" for r in rows))
    ceiling = qps_ratio_ceiling(one, forward_ms, forward_by[served_runtime, 1], cores) if one["clients"] == 1 else None
    if ceiling is not None:
        print(f"ceiling on this machine: QPS / bare forward rate <= {ceiling['qps_ratio']:.2f} "
              f"({ceiling['outside_forward_ms']:.1f} ms of the 1-client query is outside the forward, one thread; "
              f"the forward costs >= {ceiling['forward_cpu_ms']:.1f} ms of CPU (its 1-thread time); {cores} CPU(s))")
    if args.faiss_vectors and args.target is None:
        for share in faiss_share(index, args.faiss_vectors, one["p50"], images):
            print(
                f"FAISS exact search (1 thread), {share['vectors']:,} vectors x {share['dim']}: "
                f"{share['search_ms']:.2f} ms = {100 * share['share']:.1f}% of the {one['p50']:.0f} ms query"
            )
    rerank_bytes = None
    if compare is not None:
        if args.target is None:
            from indexer import index_info

            rerank_bytes = index_info(index).get("factor_rows_on_disk", {}).get("bytes_per_image")
        reranked = min(args.rerank_compare, info.count)
        print(
            f"re-ranking the first {args.rerank_compare} ({reranked} in this {info.count}-image index), 1 client, "
            f"median p50 of {args.rounds} alternating rounds: off {compare['p50_off']:.1f} ms, on "
            f"{compare['p50_on']:.1f} ms (its rerank stage {compare['stage_ms']:.2f} ms): ratio {compare['ratio']:.3f} "
            f"(target <= 1.3); factor rows {rerank_bytes} bytes per image"
        )
    if args.json:
        payload = {
            "errors": sum(r["errors"] for r in rows),
            "forward_qps": forward_qps,
            "forward_ms": forward_ms,
            "forward_runtime": served_runtime,
            "forward_ms_by_runtime": forward_ms_by_runtime,
            "qps_ratio": {str(r["clients"]): r["qps"] / forward_qps for r in rows},
            "p50_ratio": one["p50"] / forward_ms,
            "qps": {str(r["clients"]): r["qps"] for r in rows},
            "p50_ms": {str(r["clients"]): r["p50"] for r in rows},
            "p99_ms": {str(r["clients"]): r["p99"] for r in rows},
            "qps_ratio_ceiling": ceiling["qps_ratio"] if ceiling else None,
            "outside_forward_ms": ceiling["outside_forward_ms"] if ceiling else None,
        }
        if compare is not None:
            payload["rerank_latency_ratio"] = compare["ratio"]
            payload["rerank_p50_ms"] = {"0": compare["p50_off"], str(args.rerank_compare): compare["p50_on"]}
            payload["rerank_stage_ms"] = compare["stage_ms"]
            payload["rerank_bytes_per_image"] = rerank_bytes
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
