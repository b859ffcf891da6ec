"""Descriptor-core cost on CPU, and the speed choices of issue 16, measured in one run.

Prints tables and writes `--json FILE` with:
- `forward_ms` per backbone runtime (torch eager channels-last, onnxruntime, openvino f32), batch 1,
  and `forward_speedup` = torch / the best runtime (rounds interleave the runtimes);
- `preprocess_ms`: JPEG bytes -> the backbone's input (decode, resize, normalization) per image,
  one thread, as the build's reader threads and the searcher run it;
- `nmf_ms` {"new": numba-mu, "old": torch-sparse, "hals": numba-hals (an option)} per K (batch 8,
  per image); `post_ms` per K: what the product runs per image after the NMF for its default
  descriptor (`post_descriptor`, IndexConfig's: the rows step, `aggregate_rows`, and the re-ranking
  rows' `encode_rows`, with IndexConfig's whitening and re-ranking dimensions, `post_settings`),
  `post_ms_by_descriptor` {nmf-v, nmf-vu}; and
  `overhead_ratio` = (new NMF + post) / the best runtime's forward (`overhead_ratio_by_k`: the
  median over rounds that each time the forward, then the NMF and the post stage, so that the
  ratio's two parts see the same machine speed; `overhead_ratio_rounds_by_k`: the rounds);
- `indexing_speedup`: `dff-index build` images/s on the same 48 photos, new defaults vs
  `--runtime torch --nmf-solver torch-sparse` (interleaved child processes, after one untimed
  4-photo build each that fills the disk caches: compiled kernels and models);
- `loaded_slowdown` {"build", "search"}: with a torch matmul loop and a FAISS search loop running
  (benchmarks/background_load.py, each on every core, started and stopped here): `dff-index build`
  time with the default threads / with `--threads 1`, and one search's median latency against a
  live `dff-serve` with the default threads / with `--threads 1` (both servers up at once);
- `throughput_ratio` (benchmarks/bench_indexer.py), `load_search_qps_ratio` (benchmarks/
  load_search.py: QPS / one bare forward's rate, per client count: 1, 4, 8 by default) and
  `load_search_p50_ratio` (p50 at 1 client / one bare forward), each script run from here; both
  scripts' reference is the bare forward through the runtime the build / server runs
  (`load_search_forward_runtime`); `throughput_ratio_ceiling` and `load_search_qps_ratio_ceiling`:
  the most each ratio can be on this machine, from the CPU each image / query spends outside the
  forward (each script's docstring).
Real photos: the Paris subset in $DFF_SHARED_DATA (docs/data.md) when present, else scikit-image's sample photos.

    python benchmarks/bench_descriptors.py [--images 8] [--repeat 5] [--json out.json]
    python benchmarks/bench_descriptors.py --skip indexing,loaded,others   # the in-process parts only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import descriptors  # noqa: E402  (first: passive OpenMP waiting before torch/numpy load)

descriptors.configure_environment()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from descriptors.aggregate import aggregate_rows  # noqa: E402
from descriptors.backbones import load_backbone, retrieval_image_size  # noqa: E402
from descriptors.images import decode_image  # noqa: E402
from descriptors.nmf import algorithm_of, factorize_activations, set_sparse_solver  # noqa: E402
from descriptors.openvino_shapes import STATIC_AFTER  # noqa: E402
from descriptors.pipeline import DescriptorConfig, rows_from_factors  # noqa: E402
from descriptors.rerank import row_features  # noqa: E402
from descriptors.runtimes import available_runtimes, use_runtime  # noqa: E402
from descriptors.threads import setup_threads  # noqa: E402
from descriptors.whitening import PCAWhitening  # noqa: E402
from indexer.config import IndexConfig  # noqa: E402
from indexer.factor_rows import encode_rows, fit_codec  # noqa: E402

DEFAULT_BATCH = 8  # the indexer's default NMF batch (the forward itself runs at batch 1 on CPU)
NEW_SOLVER, OLD_SOLVER, HALS_SOLVER = "numba-mu", "torch-sparse", "numba-hals"


def shared_photo_files() -> list[Path]:
    shared = Path(os.environ.get("DFF_SHARED_DATA", REPO.parent / "shared" / "data")) / "paris6k-subset" / "jpg"
    return sorted(shared.rglob("*.jpg")) if shared.is_dir() else []


def load_photos(count: int):
    files = shared_photo_files()[:count]
    if files:
        return [decode_image(p) for p in files], f"Paris subset ({len(files)} images)"
    from descriptors.sample_photos import sample_photo

    names = ["chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "retina"]
    photos = [sample_photo(n) for n in names[:count]]
    return photos, f"scikit-image sample photos ({len(photos)} images)"


def photo_bytes(count: int) -> list[bytes]:
    """The encoded files of `load_photos` (scikit-image's photos: saved as JPEG, quality 90)."""
    files = shared_photo_files()[:count]
    if files:
        return [Path(p).read_bytes() for p in files]
    import io

    encoded = []
    for photo in load_photos(count)[0]:
        buffer = io.BytesIO()
        photo.save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


def preprocess_ms(count: int, image_size: int, repeat: int) -> float:
    """ms/image of JPEG bytes -> the backbone's input: `decode_image` (as the searcher and the
    build call it) + `Backbone.preprocess` (resize, normalization), one thread."""
    data = photo_bytes(count)
    backbone = load_backbone("efficientnet-lite0")

    def run() -> None:
        for encoded in data:
            backbone.preprocess(decode_image(encoded, reduce_to=image_size, pixels=True), image_size)

    return 1000.0 * timed(run, repeat) / len(data)


def timed(fn, repeat: int) -> float:
    """Median wall time of fn() in seconds over `repeat` runs, after one warm-up."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def forward_per_runtime(photos, image_size: int, repeat: int) -> tuple[dict[str, float], dict, list]:
    """ms/image at batch 1 per installed runtime; rounds interleave the runtimes (same load).
    Also returns the warmed-up backbones by runtime and the inputs."""
    backbones = {name: use_runtime(load_backbone("efficientnet-lite0"), name) for name in available_runtimes("cpu")}
    xs = [backbones["torch"].preprocess(p, image_size) for p in photos]
    samples: dict[str, list[float]] = {name: [] for name in backbones}
    for backbone in backbones.values():
        # warm-up: runtimes allocate per input shape, and OpenVINO compiles a model for a shape on
        # its STATIC_AFTER-th forward (openvino_shapes), as in any collection's steady state
        for _ in range(STATIC_AFTER if backbone.runtime == "openvino" else 1):
            for x in xs:
                backbone.extract([x])
    for _ in range(repeat):
        for name, backbone in backbones.items():
            start = time.perf_counter()
            for x in xs:  # one image per call (several per call run side by side: the build's way)
                backbone.extract([x])
            samples[name].append(1000 * (time.perf_counter() - start) / len(xs))
    return {name: statistics.median(values) for name, values in samples.items()}, backbones, xs


def post_models(rows: list[np.ndarray], whiten_dim: int, rerank_dim: int):
    """The whitening and re-ranking codec an index of these rows would have (None: off). Few
    images: the whitening is fitted on the rows plus seeded random rows (it needs > dim rows)."""
    whitening = None
    if whiten_dim > 0:
        local = np.concatenate(rows * 4 + [np.abs(np.random.default_rng(0).normal(size=(2 * whiten_dim, rows[0].shape[1])))])
        whitening = PCAWhitening.fit(local.astype(np.float32), dim=whiten_dim)
    codec = fit_codec(row_features(np.concatenate(rows), whitening), rerank_dim) if rerank_dim > 0 else None
    return whitening, codec


def post_stage(factors, config: DescriptorConfig, whitening, codec) -> None:
    """What the indexer (and the searcher, for a query) runs per image after the NMF: the rows of
    the descriptor, the global vector (`aggregate_rows`) and the re-ranking rows (`encode_rows`)."""
    for rows in rows_from_factors(factors, config):
        aggregate_rows(rows, whitening)
        if codec is not None:
            encode_rows(rows, whitening, codec)


def nmf_inputs(acts, batch: int, max_iter: int) -> tuple[list, list, dict]:
    """(the maps of the most common size, `batch` of them (repeated when fewer: the build's batches
    are of one size), the NMF settings: `max_iter` and the product's tol and seed)."""
    common_shape = Counter(tuple(a.shape) for a in acts).most_common(1)[0][0]
    same_size = [a for a in acts if tuple(a.shape) == common_shape]
    defaults = DescriptorConfig()
    return same_size, (same_size * batch)[:batch], {"max_iter": max_iter, "tol": defaults.tol, "seed": defaults.seed}


def post_case(factors, method: str, k: int, whiten_dim: int) -> tuple:
    """(config, whitening, codec) of `post_stage` for these factors: `method` at K = `k` with the
    models an index of their rows would have (IndexConfig's re-ranking dimension)."""
    config = DescriptorConfig(method=method, k=k)
    return (config, *post_models(rows_from_factors(factors, config), whiten_dim, IndexConfig().rerank_dim))


def nmf_and_post(acts, ks, batch: int, max_iter: int, repeat: int, rows_out: list, whiten_dim: int) -> dict:
    same_size, group, settings = nmf_inputs(acts, batch, max_iter)
    index = IndexConfig()
    descriptors_timed = [index.descriptor] + [m for m in ("nmf-v", "nmf-vu") if m != index.descriptor]
    nmf_ms: dict[str, dict[str, float]] = {"new": {}, "old": {}, "hals": {}}
    post_ms: dict[str, dict[str, float]] = {method: {} for method in descriptors_timed}
    for k in ks:
        for label, solver in (("new", NEW_SOLVER), ("old", OLD_SOLVER), ("hals", HALS_SOLVER)):
            set_sparse_solver(solver)
            run = {**settings, "algorithm": algorithm_of(solver)}
            nmf_ms[label][f"k{k}"] = 1000 * timed(lambda k=k, run=run: factorize_activations(group, k, **run), repeat) / batch
            rows_out.append((f"NMF K={k} batch {batch}, {solver}", nmf_ms[label][f"k{k}"]))
        set_sparse_solver(None)
        factors = factorize_activations(same_size, k, **settings)
        for method in descriptors_timed:
            config, whitening, codec = post_case(factors, method, k, whiten_dim)
            post_ms[method][f"k{k}"] = 1000 * timed(lambda f=factors, c=config, w=whitening, r=codec: post_stage(f, c, w, r), repeat) / len(factors)
            rows_out.append((f"post {method}, K={k}{' (default)' if method == index.descriptor else ''}", post_ms[method][f"k{k}"]))
    return {
        "nmf_ms": nmf_ms, "post_ms": post_ms[index.descriptor], "post_ms_by_descriptor": post_ms,
        "post_descriptor": index.descriptor, "post_settings": {"whiten_dim": whiten_dim, "rerank_dim": index.rerank_dim},
    }


def interleaved_overhead(backbone, xs: list, acts, ks, batch: int, max_iter: int, rounds: int, whiten_dim: int) -> dict:
    """Per round: `backbone`'s forward (ms/image over `xs`, one image per call), then per K the new
    solver's NMF of the batch and the post stage per image; returns each K's per-round ratios
    (NMF + post) / forward. Why rounds: this VM's speed drifts 20-40% within minutes, so a ratio
    of a forward and an NMF timed a minute apart carries the drift; within a round it cancels."""
    same_size, group, settings = nmf_inputs(acts, batch, max_iter)
    posts = {}
    for k in ks:
        factors = factorize_activations(same_size, k, **settings)
        posts[k] = (factors, *post_case(factors, IndexConfig().descriptor, k, whiten_dim))
    set_sparse_solver(NEW_SOLVER)
    run = {**settings, "algorithm": algorithm_of(NEW_SOLVER)}
    ratios: dict[str, list[float]] = {f"k{k}": [] for k in ks}
    try:
        for k in ks:  # warm-up
            factorize_activations(group, k, **run)
        for _ in range(rounds):
            start = time.perf_counter()
            for x in xs:
                backbone.extract([x])
            forward = (time.perf_counter() - start) / len(xs)
            for k in ks:
                start = time.perf_counter()
                factorize_activations(group, k, **run)
                nmf = (time.perf_counter() - start) / batch
                factors, config, whitening, codec = posts[k]
                start = time.perf_counter()
                post_stage(factors, config, whitening, codec)
                post = (time.perf_counter() - start) / len(factors)
                ratios[f"k{k}"].append((nmf + post) / forward)
    finally:
        set_sparse_solver(None)
    return ratios


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "proto"), env.get("PYTHONPATH", "")])
    return env


def build_seconds(folder: Path, out: Path, extra: list[str]) -> float:
    """`dff-index build` in a child process; the build's own time (from its --json summary)."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "indexer.cli", "build", str(folder), "--out", str(out), "--quiet", "--json", *extra]
    result = subprocess.run(command, env=_child_env(), capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return float(json.loads(result.stdout)["seconds"])


def photo_folder(work: Path, n: int) -> Path:
    folder = work / f"photos{n}"
    folder.mkdir(parents=True, exist_ok=True)
    files = shared_photo_files()[:n]
    if files:
        for path in files:
            shutil.copyfile(path, folder / path.name)
    else:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from bench_indexer import write_photo_set

        write_photo_set(folder, n)
    return folder


def indexing_speedup(work: Path, n: int, rounds: int) -> dict:
    folder = photo_folder(work, n)
    variants = {"new": [], "old": ["--runtime", "torch", "--nmf-solver", OLD_SOLVER]}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    # one untimed build of 4 photos each: a process's first use fills numba's and the runtimes' disk
    # caches (compiled kernels, exported / compiled models), a cost paid once per install and
    # code change, not per build (measured: a first build after a kernel change at 2 images/s)
    warm = photo_folder(work / "warm-up", min(4, n))
    for name, extra in variants.items():
        build_seconds(warm, work / f"index-warm-{name}", extra)
    for round_index in range(rounds):
        for name, extra in variants.items():
            seconds[name].append(build_seconds(folder, work / f"index-{name}", extra))
            print(f"  build round {round_index} {name:<3}: {n / seconds[name][-1]:6.2f} images/s", flush=True)
    ips = {name: n / statistics.median(values) for name, values in seconds.items()}
    return {"images": n, "images_per_s": ips, "indexing_speedup": ips["new"] / ips["old"]}


def search_latency_ms(client, query: Path, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        client.search(query, top_k=10)
        samples.append(1000 * (time.perf_counter() - start))
    return samples


def loaded_slowdown(work: Path, n: int, rounds: int, searches: int) -> dict:
    """Default threads vs --threads 1, with and without the background load, in one run."""
    from background_load import background_load

    from searcher.client import SearchClient
    from searcher.launcher import launch_serve

    folder = photo_folder(work, n)
    query = sorted(folder.iterdir())[0]
    index = work / "index-serve"
    build_seconds(folder, index, [])
    variants = {"default": [], "threads1": ["--threads", "1"]}
    out: dict = {"images": n}
    # both servers start on the machine as it is, before the load: the default one must follow it
    with launch_serve(index, variants["default"]) as default_server, launch_serve(index, variants["threads1"]) as one:
        clients = {"default": SearchClient(default_server.host, default_server.port),
                   "threads1": SearchClient(one.host, one.port)}
        for label, loaded in (("unloaded", False), ("loaded", True)):
            build: dict[str, list[float]] = {name: [] for name in variants}
            search: dict[str, list[float]] = {name: [] for name in variants}
            context = background_load() if loaded else _nothing()
            with context:
                for _ in range(rounds):
                    for name, extra in variants.items():
                        build[name].append(build_seconds(folder, work / f"index-{name}", extra))
                        search[name] += search_latency_ms(clients[name], query, searches)
            summary = {
                "build_seconds": {name: statistics.median(v) for name, v in build.items()},
                "search_ms": {name: statistics.median(v) for name, v in search.items()},
            }
            summary["build_ratio"] = summary["build_seconds"]["default"] / summary["build_seconds"]["threads1"]
            summary["search_ratio"] = summary["search_ms"]["default"] / summary["search_ms"]["threads1"]
            out[label] = summary
            print(f"  {label:<8}: build {summary['build_seconds']['default']:.1f} s default / "
                  f"{summary['build_seconds']['threads1']:.1f} s --threads 1 = {summary['build_ratio']:.2f}; "
                  f"search {summary['search_ms']['default']:.0f} / {summary['search_ms']['threads1']:.0f} ms "
                  f"= {summary['search_ratio']:.2f}", flush=True)
        for client in clients.values():
            client.close()
    return out


def other_benchmarks(work: Path, indexer_images: int, search_clients: str, search_seconds: float) -> dict:
    """bench_indexer.py's throughput_ratio and load_search.py's QPS ratio (QPS / one bare forward's
    rate, per client count), each run as its own script with its own --json, here in the same run."""
    out: dict = {}
    runs = {
        "bench_indexer": ["--n", str(indexer_images), "--rss-sizes", "--rounds", "2"],
        "load_search": ["--clients", search_clients, "--duration", str(search_seconds), "--faiss-vectors", "0",
                        "--forward-seconds", "4"],
    }
    for name, extra in runs.items():
        target = work / f"{name}.json"
        command = [sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *extra, "--json", str(target)]
        result = subprocess.run(command, env=_child_env(), capture_output=True, text=True, check=False)
        if result.returncode or not target.exists():
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
        out[name] = json.loads(target.read_text())
    search = out["load_search"]
    out["throughput_ratio"] = out["bench_indexer"]["throughput_ratio"]
    out["load_search_qps_ratio"] = search["qps_ratio"]  # QPS / the bare forward's rate, per client count
    # p50 of one client / one bare forward (docs/searcher.md: target <= 1.5)
    out["load_search_p50_ratio"] = search["p50_ratio"] if "1" in search["qps"] else None
    out["load_search_forward_runtime"] = search.get("forward_runtime")
    # the most each ratio can be on this machine (each script's docstring: CPU outside the forward)
    out["throughput_ratio_ceiling"] = out["bench_indexer"].get("throughput_ratio_ceiling")
    out["load_search_qps_ratio_ceiling"] = search.get("qps_ratio_ceiling")
    return out


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=retrieval_image_size("efficientnet-lite0"), help="default: the product's")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--ks", default="4,8,16")
    parser.add_argument("--max-iter", type=int, default=DescriptorConfig().max_iter, help="NMF iterations (default: the product's)")
    parser.add_argument("--post-whiten-dim", type=int, default=IndexConfig().whiten_dim,
                        help="whitening of the post stage (default: dff-index build's, 0 = none)")
    parser.add_argument("--threads", type=int, default=0, help="threads of the in-process parts (0: the automatic choice)")
    parser.add_argument("--index-images", type=int, default=48, help="photos of the indexing_speedup builds")
    parser.add_argument("--index-rounds", type=int, default=2)
    parser.add_argument("--load-images", type=int, default=16, help="photos of the loaded_slowdown builds")
    parser.add_argument("--load-rounds", type=int, default=2)
    parser.add_argument("--searches", type=int, default=10, help="searches per server per round")
    parser.add_argument("--others-images", type=int, default=48, help="bench_indexer.py --n")
    parser.add_argument("--others-clients", default="1,4,8", help="load_search.py --clients")
    parser.add_argument("--others-seconds", type=float, default=20.0, help="load_search.py --duration")
    parser.add_argument("--skip", default="", help="comma-separated: forward,nmf,indexing,loaded,others")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    skip = {v.strip() for v in args.skip.split(",") if v.strip()}
    settings = setup_threads(args.threads, verbose=True, prog="bench_descriptors")
    torch.manual_seed(0)
    ks = [int(v) for v in args.ks.split(",")]
    photos, source = load_photos(args.images)
    results: dict = {"source": source, "image_size": args.image_size, "threads": settings.describe(),
                     "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"}
    rows: list[tuple[str, float]] = []
    forward_ms = {"torch": float("nan")}
    if "forward" not in skip:
        forward_ms, backbones, inputs = forward_per_runtime(photos, args.image_size, args.repeat)
        best = min(forward_ms, key=forward_ms.get)
        results["forward_ms"] = forward_ms
        results["best_runtime"] = best
        results["forward_speedup"] = forward_ms["torch"] / forward_ms[best]
        rows += [(f"forward, {name} (batch 1)", ms) for name, ms in forward_ms.items()]
        results["preprocess_ms"] = preprocess_ms(args.images, args.image_size, args.repeat)
        rows.append(("JPEG bytes -> input (decode, resize, normalize)", results["preprocess_ms"]))
    reference = min(forward_ms.values())
    if "nmf" not in skip:
        acts = load_backbone("efficientnet-lite0").extract(
            [load_backbone("efficientnet-lite0").preprocess(p, args.image_size) for p in photos]
        )
        results["map_shape"] = list(Counter(tuple(a.shape) for a in acts).most_common(1)[0][0])
        results["nmf_max_iter"] = args.max_iter
        timings = nmf_and_post(acts, ks, args.batch_size, args.max_iter, args.repeat, rows, args.post_whiten_dim)
        results.update(timings)
        nmf_ms, post_ms = timings["nmf_ms"], timings["post_ms"]
        # the ratio from rounds that time the best runtime's forward, then the NMF and the post stage
        # (interleaved_overhead: same moment, same machine speed); without the forward measured
        # here, from the table's numbers
        if "forward" not in skip:
            per_round = interleaved_overhead(backbones[best], inputs, acts, ks, args.batch_size, args.max_iter,
                                             max(5, args.repeat), args.post_whiten_dim)
            results["overhead_ratio_rounds_by_k"] = per_round
            ratios = {key: statistics.median(values) for key, values in per_round.items()}
        else:
            ratios = {f"k{k}": (nmf_ms["new"][f"k{k}"] + post_ms[f"k{k}"]) / reference for k in ks}
        results["overhead_ratio_by_k"] = ratios
        results["overhead_ratio_old_by_k"] = {f"k{k}": (nmf_ms["old"][f"k{k}"] + post_ms[f"k{k}"]) / forward_ms.get("torch", reference) for k in ks}
        results["overhead_ratio"] = max(v for key, v in ratios.items() if int(key[1:]) <= 8)
        results["nmf_speedup_by_k"] = {key: nmf_ms["old"][key] / nmf_ms["new"][key] for key in nmf_ms["new"]}

    print(f"\nDescriptor cost, efficientnet-lite0 on CPU, {args.image_size} px, {source}; {settings.describe()}\n")
    print(f"| {'stage':<52} | {'ms/image':>9} | {'x best forward':>14} |")
    print(f"|{'-' * 54}|{'-' * 11}|{'-' * 16}|")
    for name, ms in rows:
        print(f"| {name:<52} | {ms:9.2f} | {ms / reference:14.3f} |")
    for key in ("forward_speedup", "overhead_ratio_by_k", "nmf_speedup_by_k"):
        if key in results:
            print(f"{key}: {json.dumps(results[key])}")

    work = Path(tempfile.mkdtemp(prefix="bench_descriptors_"))
    try:
        if "indexing" not in skip:
            print(f"\nindexing_speedup: dff-index build, {args.index_images} photos, new defaults vs --runtime torch --nmf-solver {OLD_SOLVER}")
            speed = indexing_speedup(work, args.index_images, args.index_rounds)
            results["indexing"] = speed
            results["indexing_speedup"] = speed["indexing_speedup"]
            print(f"indexing_speedup = {speed['indexing_speedup']:.2f}")
        if "loaded" not in skip:
            print(f"\nloaded_slowdown: default threads / --threads 1, {args.load_images} photos; load = torch matmul + FAISS search loops")
            sys.path.insert(0, str(REPO / "benchmarks"))
            loaded = loaded_slowdown(work, args.load_images, args.load_rounds, args.searches)
            results["loaded"] = loaded
            results["loaded_slowdown"] = {"build": loaded["loaded"]["build_ratio"], "search": loaded["loaded"]["search_ratio"]}
            print(f"loaded_slowdown = {json.dumps(results['loaded_slowdown'])}")
        if "others" not in skip:
            print(f"\nbench_indexer.py (--n {args.others_images}) and load_search.py (--clients {args.others_clients})")
            others = other_benchmarks(work, args.others_images, args.others_clients, args.others_seconds)
            results["throughput_ratio"] = others["throughput_ratio"]
            results["load_search_qps_ratio"] = others["load_search_qps_ratio"]
            results["load_search_p50_ratio"] = others["load_search_p50_ratio"]
            results["load_search_forward_runtime"] = others["load_search_forward_runtime"]
            results["throughput_ratio_ceiling"] = others["throughput_ratio_ceiling"]
            results["load_search_qps_ratio_ceiling"] = others["load_search_qps_ratio_ceiling"]
            print(f"throughput_ratio = {others['throughput_ratio']:.3f}; load_search_qps_ratio = "
                  f"{json.dumps(others['load_search_qps_ratio'])} (target >= 0.85 at 8 clients); load_search_p50_ratio "
                  f"= {others['load_search_p50_ratio']} (target <= 1.5); reference: the bare forward through "
                  f"{others['load_search_forward_runtime']}, the runtime the server and the build run")
            print(f"ceilings on this machine (CPU outside the forward): throughput_ratio <= "
                  f"{others['throughput_ratio_ceiling']:.3f}, load_search_qps_ratio <= {others['load_search_qps_ratio_ceiling']:.3f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
