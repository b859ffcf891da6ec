"""Index updates at scale: add/remove cost vs index size, disk growth, search latency during an add.

    python benchmarks/bench_updates.py --json out.json                  # 10k, 100k, 1M
    python benchmarks/bench_updates.py --sizes 10000,100000 --json out.json   # quicker

Part 1 (storage, synthetic): for each size N an index of N random unit vectors (dimension --dim,
default 256, Flat) with one catalog row each is written in the current format; then
`add_ms[N]` = adding --batch (10) images' vectors through the indexer's commit (the work
`dff-index add` does after encoding: lock, reconcile, new segment, catalog rows, manifest) and
`remove_ms[N]` = `remove_images` of --batch ids, median of --repeats. The encoding of the images
does not depend on N and is measured once, on real photos, as `encode_ms_per_image`.
`disk_bytes_before` / `disk_bytes_after_add` are the index folder's size at the largest N.
`open_ms` is `open_index` at the largest N after the adds (the checkpoint plus the segments).

Part 2 (live server, real): a small real index of the sample photos served by `dff-serve`
(--torch-threads 1); --clients (4) threads send Search requests back to back for --seconds idle,
then again while one AddImages of --upload (100) images runs; p99 of each.

--json FILE writes the keys: add_ms, remove_ms (by N), add_ratio_1m_10k, remove_ratio_1m_10k
(largest / smallest N), disk_bytes_before, disk_bytes_after_add, open_ms, encode_ms_per_image,
search_p99_ms_idle, search_p99_ms_during_add, search_p50_ms_idle, search_p50_ms_during_add,
add_images_seconds, searches_idle, searches_during_add.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def synthetic_index(template: dict, out: Path, n: int, dim: int, seed: int = 0) -> None:
    """An index of `n` random unit vectors in the current format (one build generation)."""
    import faiss

    from indexer.catalog import Catalog
    from indexer.faiss_index import write_faiss_index
    from indexer.manifest import CATALOG_NAME, FAISS_NAME, VECTORS_NAME, write_manifest

    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    vectors = np.lib.format.open_memmap(out / VECTORS_NAME, mode="w+", dtype=np.float32, shape=(n, dim))
    index = faiss.IndexIDMap2(faiss.index_factory(dim, "Flat", faiss.METRIC_INNER_PRODUCT))
    for start in range(0, n, 65_536):
        block = rng.standard_normal((min(65_536, n - start), dim)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        vectors[start:start + len(block)] = block
        index.add_with_ids(block, np.arange(start, start + len(block), dtype=np.int64))
    vectors.flush()
    del vectors
    write_faiss_index(index, out / FAISS_NAME)
    del index
    Catalog(out / CATALOG_NAME).close()  # creates the schema
    conn = sqlite3.connect(out / CATALOG_NAME)
    conn.executemany(
        "INSERT INTO images (id, path, sha256, width, height, status, added_at, generation) VALUES (?, ?, ?, 1, 1, 'indexed', 0, 1)",
        ((i, f"synthetic/{i:08d}.jpg", hashlib.sha256(str(i).encode()).hexdigest()) for i in range(n)),
    )
    conn.commit()
    conn.close()
    manifest = json.loads(json.dumps(template))
    manifest.update(dim=dim, next_id=n, generation=1, counts={"files": n, "indexed": n, "skipped": {}})
    manifest["faiss"] = {"factory": "Flat", "search_params": "", "file": FAISS_NAME, "generation": 1}
    manifest["segments"] = [{"generation": 1, "first_id": 0, "count": n, "files": {"vectors": VECTORS_NAME}}]
    manifest["tombstones"] = []
    manifest["whitening"] = {"dim": 0}
    write_manifest(out, manifest)


def add_vectors(index_dir: Path, vectors: np.ndarray, tag: str) -> float:
    """ms for what `add_images` does after encoding: lock, reconcile, segment, catalog, manifest."""
    from indexer.catalog import STATUS_INDEXED, Catalog, CatalogRow
    from indexer.generations import begin_write, commit_generation
    from indexer.manifest import CATALOG_NAME
    from indexer.storage import exclusive_lock

    started = time.perf_counter()
    with exclusive_lock(index_dir), Catalog(index_dir / CATALOG_NAME) as catalog:
        manifest = begin_write(index_dir, catalog)
        next_id = max(int(manifest["next_id"]), catalog.max_id() + 1)
        shas = [hashlib.sha256(f"{tag}-{i}".encode()).hexdigest() for i in range(len(vectors))]
        catalog.indexed_by_sha256(shas)  # the duplicate check
        rows = [CatalogRow(next_id + i, f"added/{tag}-{i}.jpg", sha, 1, 1, STATUS_INDEXED, time.time()) for i, sha in enumerate(shas)]
        for row in rows:
            catalog.by_path(row.path)  # the replaced-path check
        commit_generation(index_dir, manifest, catalog, insert=rows, vectors=vectors, next_id=next_id + len(rows))
    return (time.perf_counter() - started) * 1000.0


def storage_part(sizes: list[int], dim: int, batch: int, repeats: int, work: Path, template: dict) -> dict:
    from indexer.open_index import open_index
    from indexer.update import remove_images

    rng = np.random.default_rng(1)
    out: dict = {"add_ms": {}, "remove_ms": {}}
    for n in sizes:
        index_dir = work / f"n{n}"
        t0 = time.perf_counter()
        synthetic_index(template, index_dir, n, dim)
        print(f"  wrote a {n:,}-vector index in {time.perf_counter() - t0:.1f} s", flush=True)
        if n == max(sizes):
            out["disk_bytes_before"] = folder_bytes(index_dir)
        os.sync()  # let the writeback of the fresh index finish: it would slow the first fsyncs
        adds, removes = [], []
        to_remove = rng.choice(n, size=(repeats, batch), replace=False)
        for r in range(repeats):  # interleaved, so that I/O noise hits both alike
            block = rng.standard_normal((batch, dim)).astype(np.float32)
            adds.append(add_vectors(index_dir, block / np.linalg.norm(block, axis=1, keepdims=True), f"r{r}"))
            if n == max(sizes) and r == 0:
                out["disk_bytes_after_add"] = folder_bytes(index_dir)
            t0 = time.perf_counter()
            assert remove_images(index_dir, ids=to_remove[r].tolist()) == batch
            removes.append((time.perf_counter() - t0) * 1000.0)
        out["add_ms"][str(n)] = statistics.median(adds)
        out["remove_ms"][str(n)] = statistics.median(removes)
        if n == max(sizes):
            t0 = time.perf_counter()
            with open_index(index_dir) as index:
                assert index.count == n  # as many added as removed
            out["open_ms"] = (time.perf_counter() - t0) * 1000.0
        shutil.rmtree(index_dir)
        print(f"  N={n:>9,}: add {out['add_ms'][str(n)]:.1f} ms, remove {out['remove_ms'][str(n)]:.1f} ms", flush=True)
    small, large = str(min(sizes)), str(max(sizes))
    out["add_ratio_1m_10k"] = out["add_ms"][large] / out["add_ms"][small]
    out["remove_ratio_1m_10k"] = out["remove_ms"][large] / out["remove_ms"][small]
    return out


def _search_loop(port: int, images: list[bytes], stop: threading.Event, latencies: list[float], errors: list[str]) -> None:
    from searcher.client import SearchClient

    with SearchClient("127.0.0.1", port, timeout=120) as client:
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                client.search(images[i % len(images)], top_k=10)
                latencies.append((time.perf_counter() - t0) * 1000.0)
            except Exception as exc:
                errors.append(str(exc))
            i += 1


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def live_part(work: Path, clients: int, seconds: float, upload: int, image_size: int) -> tuple[dict, float]:
    from load_search import collection
    from PIL import Image

    from indexer.build import build_index
    from indexer.config import IndexConfig
    from searcher.client import SearchClient
    from searcher.launcher import launch_serve

    photos = collection(14, work / "photos")
    index_dir = work / "live-index"
    build_index(work / "photos", index_dir, IndexConfig(image_size=image_size, workers=0), progress=False)
    images = [p.read_bytes() for p in photos]
    uploads = []
    for i in range(upload):  # distinct crops of the photos
        base = Image.open(photos[i % len(photos)]).convert("RGB")
        side = max(64, min(base.size) - 9 * (i // len(photos)) - 16)
        crop = base.crop((i % 7, i % 5, i % 7 + side, i % 5 + side)).resize((200, 200))
        path = work / f"upload-{i:03d}.jpg"
        crop.save(path, quality=90)
        uploads.append((path.name, path.read_bytes()))
    server = launch_serve(index_dir, ["--torch-threads", "1"], log_path=work / "serve.log")
    port = server.port
    try:
        with SearchClient("127.0.0.1", port, timeout=600) as client:
            client.wait_until_serving(120)
            for data in images[:4]:
                client.search(data, top_k=10)  # warm up
            results = {}
            for phase in ("idle", "during_add"):
                stop, latencies, errors = threading.Event(), [], []
                threads = [threading.Thread(target=_search_loop, args=(port, images, stop, latencies, errors)) for _ in range(clients)]
                for t in threads:
                    t.start()
                add_seconds = 0.0
                if phase == "idle":
                    time.sleep(seconds)
                else:
                    t0 = time.perf_counter()
                    reply = client.add_images(uploads)
                    add_seconds = time.perf_counter() - t0
                    assert sum(a.outcome == 1 for a in reply.added) >= upload * 0.9, "AddImages added too few"
                stop.set()
                for t in threads:
                    t.join()
                if errors:
                    raise SystemExit(f"{len(errors)} search errors, first: {errors[0]}")
                results[phase] = (latencies, add_seconds)
    finally:
        server.stop()
    idle, during = results["idle"][0], results["during_add"][0]
    return {
        "search_p99_ms_idle": _p(idle, 99), "search_p99_ms_during_add": _p(during, 99),
        "search_p50_ms_idle": _p(idle, 50), "search_p50_ms_during_add": _p(during, 50),
        "searches_idle": len(idle), "searches_during_add": len(during),
        "add_images_seconds": results["during_add"][1],
    }, results["during_add"][1]


def encode_ms_per_image(work: Path, image_size: int) -> tuple[float, dict]:
    """The encoding cost of an add (independent of N), and a real manifest to copy settings from."""
    from load_search import collection

    from indexer.build import build_index
    from indexer.config import IndexConfig
    from indexer.manifest import read_manifest
    from indexer.update import add_images

    collection(8, work / "enc")
    config = IndexConfig(image_size=image_size, workers=0, threads=1)
    build_index(work / "enc", work / "enc-index", config.replace(), progress=False)
    extra = collection(14, work / "enc-extra")[8:]
    t0 = time.perf_counter()
    summary = add_images(work / "enc-index", extra, progress=False, config=config)
    ms = (time.perf_counter() - t0) * 1000.0 / max(1, summary.indexed)
    return ms, read_manifest(work / "enc-index")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0, help="idle search phase length")
    parser.add_argument("--upload", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=None, help="default: the backbone's (320)")
    parser.add_argument("--skip-live", action="store_true")
    parser.add_argument("--workdir", default=None, help="where the indexes go (default: a temp folder)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    from descriptors.backbones import image_size_or_default

    image_size = image_size_or_default("efficientnet-lite0", args.image_size)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-updates-", dir=args.workdir))
    try:
        print("encoding reference (real photos)...", flush=True)
        encode_ms, template = encode_ms_per_image(work, image_size)
        print("storage: add / remove at each size...", flush=True)
        result = storage_part(sizes, args.dim, args.batch, args.repeats, work, template)
        result["encode_ms_per_image"] = encode_ms
        if not args.skip_live:
            print(f"live: {args.clients} search clients, idle then during a {args.upload}-image AddImages...", flush=True)
            live, _ = live_part(work, args.clients, args.seconds, args.upload, image_size)
            result |= live
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'N':>10} {'add ms':>9} {'remove ms':>10}")
    for n in sizes:
        print(f"{n:>10,} {result['add_ms'][str(n)]:>9.1f} {result['remove_ms'][str(n)]:>10.1f}")
    print(f"ratio largest/smallest: add {result['add_ratio_1m_10k']:.2f} (target <= 1.5), remove {result['remove_ratio_1m_10k']:.2f} (target <= 1.5)")
    grown = result["disk_bytes_after_add"] - result["disk_bytes_before"]
    print(f"disk at {max(sizes):,}: {result['disk_bytes_before']:,} -> {result['disk_bytes_after_add']:,} bytes (+{grown:,} for {args.batch} images)")
    print(f"open at {max(sizes):,} after {args.repeats} adds + {args.repeats} removes: {result['open_ms']:.0f} ms; encoding {encode_ms:.0f} ms/image")
    if "search_p99_ms_idle" in result:
        print(f"search p99 idle {result['search_p99_ms_idle']:.0f} ms, during AddImages {result['search_p99_ms_during_add']:.0f} ms "
              f"(ratio {result['search_p99_ms_during_add'] / result['search_p99_ms_idle']:.2f}, target <= 2); "
              f"p50 {result['search_p50_ms_idle']:.0f} / {result['search_p50_ms_during_add']:.0f} ms; AddImages took {result['add_images_seconds']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
