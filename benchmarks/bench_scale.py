"""Scaling out: Ray build throughput, Ray Serve shard equality, large IVF-PQ builds at 1M / 10M.

    python benchmarks/bench_scale.py --json scale.json                    # everything (10M: ~10 GB in /tmp)
    python benchmarks/bench_scale.py --skip-ray --sizes 1M --json x.json  # only the 1M IVF build

Keys: `ray_throughput_ratio` (Ray build images/s with 1 worker / local build images/s, same
images, same run, in steady state: the images/s after each build's first committed shard, so
start-up -- loading the backbone, and on Ray starting the worker -- is left out; on Ray the
workers' own finishing times, since their results reach the driver in bursts),
`ray_throughput_ratio_end_to_end` (the same ratio over the whole `dff-index build` process, start-up
included: what a user of `--images` photos sees), `ray_images` (how many), `ray_scaling`
(steady images/s at 1 and 2 workers) and `ray_scaling_end_to_end`, `ray_first_shard_s`,
`ray_local_images_per_s`, `sharded_equal` (a 2-shard Ray Serve app's top-k == the
local engine's on an exact index, over several queries incl. a box and QE), and `ivf_build`:
{"1M": {...}, "10M": {...}} with `train_s`, `add_s`, `merge_s`, `peak_rss_mb` (of the build
process), `ms_per_query` (one query at a time, one thread, nprobe 16, exact re-ranking of 16 x k
candidates from the memory-mapped vectors), `recall_at_10` (vs exact search over all vectors,
100 queries), `factory`.

Synthetic structured vectors: 4096 clusters in 256-d with a power-law spectrum (like whitened
descriptors), generated chunk by chunk to .npy shards of 1M rows (low RSS), deleted afterwards.
Each IVF step runs in its own process, so `peak_rss_mb` is that build's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "proto")]
DIM = 256
CLUSTERS = 4096
SHARD_ROWS = 1_000_000
GEN_CHUNK = 250_000


def parse_size(label: str) -> int:
    """"1M" -> 1_000_000, "200k" -> 200_000."""
    scale = {"k": 1_000, "M": 1_000_000}.get(label[-1], 1)
    return int(float(label.rstrip("kM")) * scale)


# ---------------------------------------------------------------------------------------------
# synthetic structured vectors


def _model(seed: int = 0):
    rng = np.random.default_rng(seed)
    spectrum = (np.arange(1, DIM + 1, dtype=np.float32) ** -0.7).astype(np.float32)
    centers = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32) * np.sqrt(spectrum)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    noise_scale = np.sqrt(spectrum / spectrum.sum()).astype(np.float32) * 0.8  # noise norm ~0.8
    return centers, noise_scale


def draw(n: int, seed: int) -> np.ndarray:
    centers, noise_scale = _model()
    rng = np.random.default_rng(seed)
    x = centers[rng.integers(0, CLUSTERS, n)]
    x += rng.standard_normal((n, DIM), dtype=np.float32) * noise_scale
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def generate(folder: Path, n: int) -> list[Path]:
    paths = []
    for s, start in enumerate(range(0, n, SHARD_ROWS)):
        rows = min(SHARD_ROWS, n - start)
        path = folder / f"vectors-{s:04d}.npy"
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, DIM))
        for c in range(0, rows, GEN_CHUNK):
            m = min(GEN_CHUNK, rows - c)
            out[c:c + m] = draw(m, seed=1000 + (start + c) // GEN_CHUNK)
        out.flush()
        del out
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# child processes (one per step, so that each peak RSS is its own)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_build(folder: Path, factory: str, train_n: str) -> dict:
    from indexer.large_ivf import build_large_ivf

    shards = sorted(folder.glob("vectors-*.npy"))
    stats = build_large_ivf(shards, folder / "index", factory, train_n=int(train_n))
    return {"train_s": stats.train_s, "add_s": stats.add_s, "merge_s": stats.merge_s, "peak_rss_mb": _peak_rss_mb(),
            "vectors": stats.vectors, "blocks": stats.blocks}


def child_query(folder: Path, n_queries: int = 100, k: int = 10) -> dict:
    import faiss

    from indexer.large_ivf import VectorShards, open_large_ivf, search_reranked

    shards = VectorShards(sorted(folder.glob("vectors-*.npy")))
    queries = draw(n_queries, seed=7)
    # exact ground truth over every vector, chunk by chunk
    best_s = np.full((n_queries, k), -np.inf, np.float32)
    best_i = np.full((n_queries, k), -1, np.int64)
    for first, rows in shards.chunks(GEN_CHUNK):
        sims = queries @ rows.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(sims, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + first], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    index = open_large_ivf(folder / "index", nprobe=16)
    faiss.omp_set_num_threads(1)
    search_reranked(index, shards, queries[:5], k)  # warm-up
    started = time.perf_counter()
    found = np.concatenate([search_reranked(index, shards, q[None, :], k)[1] for q in queries])
    ms = 1000 * (time.perf_counter() - started) / n_queries
    recall = float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, best_i, strict=True)]))
    return {"ms_per_query": ms, "recall_at_10": recall, "queries": n_queries}


def _run_child(step: str, folder: Path, *extra: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--_child", step, str(folder), *extra], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{step} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def large_factory(factory: str, n: int, train_n: int) -> tuple[str, int]:
    """(factory, training sample) for `n` vectors: `auto` takes the nlist of `--faiss auto`
    (re-ranking comes from the shards, so no RFlat); the sample has >= 40 vectors per list."""
    import re

    from indexer.config import ivf_nlist

    if factory == "auto":
        factory = f"IVF{ivf_nlist(n)},PQ64"
    lists = re.match(r"IVF(\d+)", factory)
    return factory, max(train_n, 40 * int(lists.group(1))) if lists else train_n


def ivf_build(label: str, n: int, tmp: Path, factory: str, train_n: int) -> dict:
    folder = tmp / f"ivf-{label}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        started = time.perf_counter()
        generate(folder, n)
        result = {"factory": factory, "train_n": train_n, "generate_s": time.perf_counter() - started}
        result |= _run_child("build", folder, factory, str(train_n))
        result |= _run_child("query", folder)
        result["disk_mb"] = sum(p.stat().st_size for p in (folder / "index").iterdir()) / 2**20
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"ivf {label}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()),
          file=sys.stderr, flush=True)
    return result


# ---------------------------------------------------------------------------------------------
# Ray: build throughput and serving equality


PARIS = REPO.parent / "shared" / "data" / "paris6k-subset" / "jpg"


def _images(folder: Path, n: int) -> str:
    """`n` photos in `folder`: links to the Paris subset's (1024 px) when present, else crops of
    the sample photos; returns which."""
    folder.mkdir(parents=True, exist_ok=True)
    real = sorted(PARIS.glob("*.jpg"))[:n] if PARIS.is_dir() else []
    if len(real) == n:
        for path in real:
            (folder / path.name).symlink_to(path)
        return f"paris6k-subset, first {n} (1024 x 768)"
    from descriptors.sample_photos import sample_photo

    names = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera")
    bases = [sample_photo(name).resize((640, 480)) for name in names]
    rng = np.random.default_rng(0)
    for i in range(n):
        side = int(rng.integers(240, 480))
        x0, y0 = int(rng.integers(0, 640 - side + 1)), int(rng.integers(0, 480 - side + 1))
        bases[i % len(bases)].crop((x0, y0, x0 + side, y0 + side)).save(folder / f"img_{i:04d}.jpg", quality=90)
    return f"{n} crops of the sample photos (240-480 px)"


def _cli_build(folder: Path, out: Path, shard_size: int, env: dict, *ray: str) -> dict:
    """One `dff-index build` in a fresh process, as a user runs it: its summary + the process's wall time."""
    command = [sys.executable, "-m", "indexer.cli", "build", str(folder), "--out", str(out), "--overwrite",
               "--threads", "1", "--shard-size", str(shard_size), "--quiet", "--json", *ray]
    started = time.perf_counter()
    # a session of its own, as Ray gives its workers (raylet runs in a new session): with Linux's
    # autogroup scheduling each session gets an equal share of a busy machine, so a build in this
    # script's session would share one share with the script while a Ray worker had a whole one
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False, start_new_session=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    return summary | {"process_wall_s": wall, "end_to_end_images_per_s": summary["processed_this_run"] / wall}


def ray_section(tmp: Path, n_images: int, shard_size: int) -> dict:
    from indexer.ray_cluster import connect

    folder = tmp / "images"
    source = _images(folder, n_images)
    # a private Ray (2 CPUs) started before any timing; the builds join it with `--ray auto`
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray = connect("local", num_cpus=2, object_store_mb=300)
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "proto"), os.environ.get("PYTHONPATH", "")])}
    # warm-up, untimed: the runtime's ONNX export, numba's cache and the page cache of the libraries
    warm = tmp / "warm"
    warm.mkdir()
    for path in sorted(folder.iterdir())[:2]:
        (warm / path.name).symlink_to(path.resolve())
    _cli_build(warm, tmp / "index-warm", 1, env)
    _cli_build(warm, tmp / "index-warm", 1, env, "--ray", "auto", "--workers", "1")
    runs: dict[str, dict] = {}
    for label, flags in (
        ("local", ()),
        ("ray_1", ("--ray", "auto", "--workers", "1", "--cpus-per-worker", "1")),
        ("ray_2", ("--ray", "auto", "--workers", "2", "--cpus-per-worker", "1")),
        ("local_again", ()),  # the machine is shared: a second local run brackets the Ray runs
    ):
        runs[label] = _cli_build(folder, tmp / f"index-{label}", shard_size, env, *flags)
        r = runs[label]
        print(f"build {label}: end to end {r['end_to_end_images_per_s']:.2f} images/s ({r['process_wall_s']:.1f} s), "
              f"first shard after {r['first_shard_seconds']:.1f} s, then {r['steady_images_per_second']:.2f} images/s",
              file=sys.stderr, flush=True)

    def mean(key: str) -> float:
        return (runs["local"][key] + runs["local_again"][key]) / 2

    steady, e2e = "steady_images_per_second", "end_to_end_images_per_s"
    return {
        "ray_images": n_images,
        "ray_images_source": source,
        "ray_shard_size": shard_size,
        # steady state: images/s after each build's first committed shard (start-up excluded)
        "ray_throughput_ratio": runs["ray_1"][steady] / mean(steady),
        # end to end: images / wall time of the whole `dff-index build` process, start-up included
        "ray_throughput_ratio_end_to_end": runs["ray_1"][e2e] / mean(e2e),
        "ray_local_images_per_s": {"steady": mean(steady), "end_to_end": mean(e2e)},
        "ray_local_runs_images_per_s": {k: [runs["local"][k], runs["local_again"][k]] for k in (steady, e2e)},
        "ray_scaling": {"1": runs["ray_1"][steady], "2": runs["ray_2"][steady]},
        "ray_scaling_end_to_end": {"1": runs["ray_1"][e2e], "2": runs["ray_2"][e2e]},
        "ray_first_shard_s": {label: r["first_shard_seconds"] for label, r in runs.items()},
        "sharded_equal": sharded_equal(tmp / "index-local", folder),
    }


def sharded_equal(index_dir: Path, folder: Path) -> bool:
    """A 2-shard Ray Serve app answers like the local engine (ids, scores within 1e-5)."""
    import socket

    from searcher.client import SearchClient
    from searcher.engine import SearchEngine
    from searcher.ray_serve import RayServeConfig, start_on_ray, stop_on_ray

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = SearchEngine(index_dir)
    start_on_ray(RayServeConfig(index=index_dir, address="auto", port=port, shards=2))
    equal = True
    try:
        with SearchClient("127.0.0.1", port, timeout=120) as client:
            client.wait_until_serving(120)
            for i, (box, qe) in enumerate([(None, 0), (None, 3), ((20, 20, 200, 200), 0), (None, 0)]):
                image = sorted(folder.glob("*.jpg"))[i * 5].read_bytes()
                want = engine.search(image, box=box, top_k=10, query_expansion=qe)
                got = client.search(image, box=box, top_k=10, query_expansion=qe).results
                equal &= [r.id for r in got] == [h.id for h in want]
                equal &= bool(np.allclose([r.score for r in got], [h.score for h in want], atol=1e-5))
    finally:
        stop_on_ray()
        engine.close()
    return bool(equal)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,10M", help="IVF build sizes (1M, 10M; empty: none)")
    parser.add_argument(
        "--factory", default="auto",
        help="FAISS factory of the large builds; auto: IVF{indexer.config.ivf_nlist(n)},PQ64 per size, as --faiss auto",
    )
    parser.add_argument(
        "--train-n", type=int, default=65_536, help="IVF/PQ training sample (at least 40 per inverted list)"
    )
    parser.add_argument(
        "--threads", type=int, default=1,
        help="OpenMP threads of FAISS and torch (1: steady on a shared machine; 0: all cores)",
    )
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--images", type=int, default=192, help="images of the Ray build comparison")
    parser.add_argument("--shard-size", type=int, default=16, help="images per shard of the Ray build comparison")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()), help="where the vectors go")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--_child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the child steps
        import faiss

        faiss.omp_set_num_threads(args.threads)
    if args._child:
        step, folder, *extra = args._child
        result = child_build(Path(folder), *extra) if step == "build" else child_query(Path(folder))
        print(json.dumps(result))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="dff-bench-scale-", dir=args.tmp))
    results: dict = {"machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"}
    try:
        if not args.skip_ray:
            results |= ray_section(tmp, args.images, args.shard_size)
        results["ivf_build"] = {}
        for label in filter(None, args.sizes.split(",")):
            factory, train_n = large_factory(args.factory, parse_size(label), args.train_n)
            results["ivf_build"][label] = ivf_build(label, parse_size(label), tmp, factory, train_n)
        if {"1M", "10M"} <= set(results["ivf_build"]):
            results["ivf_rss_ratio_10m_1m"] = results["ivf_build"]["10M"]["peak_rss_mb"] / results["ivf_build"]["1M"]["peak_rss_mb"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("| key | value |\n|---|---|")
    for key, value in results.items():
        print(f"| {key} | {json.dumps(value)} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
