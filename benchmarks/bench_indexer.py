"""Indexing throughput vs the bare backbone, and peak memory vs collection size.

    python benchmarks/bench_indexer.py                      # defaults: 48 photos at 512 px, RSS 200 vs 2000
    python benchmarks/bench_indexer.py --n 16 --rss-sizes 50 200 --json out.json   # quick

Throughput: the same JPEG files (crops of scikit-image's sample photos, 800x600) are
(a) decoded + preprocessed up front, then only `backbone.extract` of one image at a time is timed
(the bare forward, through the runtime the build uses), and
(b) indexed end to end by `build_index` with an already loaded extractor (decode threads, forward,
NMF, descriptor, shard commits, FAISS, catalog), both decoding JPEGs as a long build does (the array
decoder of `descriptors.images`, which a build of `ARRAY_DECODER_MIN_IMAGES` images enables; the same
pixels as PIL's; `--pil-decoder`: PIL, as a shorter build). ratio = (b) images/s / (a) images/s. Its ceiling
on this machine (`throughput_ratio_ceiling`): with every core busy, (b) <= cpus / (the forward's CPU
+ the CPU of decode + preprocessing and of CroW + NMF + rows, each measured alone) per image.
RSS: `dff-index build` runs as a child process on N synthetic images; its peak RSS comes from
wait4's rusage. Streaming means it must not grow with N.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import descriptors  # noqa: E402  (first: passive OpenMP waiting before torch/numpy load)

descriptors.configure_environment()

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "stereo_motorcycle")


def write_photo_set(folder: Path, n: int, size: tuple[int, int] = (800, 600)) -> list[Path]:
    from descriptors.sample_photos import sample_photo

    folder.mkdir(parents=True, exist_ok=True)
    bases = [sample_photo(name).resize((1000, 750)) for name in PHOTOS]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        base = bases[i % len(bases)]
        x0, y0 = int(rng.integers(0, 150)), int(rng.integers(0, 100))
        crop = base.crop((x0, y0, x0 + 850, y0 + 640)).resize(size)
        path = folder / f"photo_{i:05d}.jpg"
        crop.save(path, quality=90)
        paths.append(path)
    return paths


def write_synthetic_set(folder: Path, n: int, side: int) -> None:
    """Smooth random colour fields (cheap to make, compress like photos, all different)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((side, side * 3 // 4), Image.BICUBIC)
        image.save(folder / f"syn_{i:05d}.jpg", quality=85)


def preprocessed(extractor, paths: list[Path]) -> list:
    """The backbone's inputs, decoded as the build's reader threads decode them."""
    from descriptors.images import decode_image

    size = extractor.image_size
    return [extractor.backbone.preprocess(decode_image(p, reduce_to=size, pixels=True), size) for p in paths]


def bare_forward_ips(extractor, tensors: list, batch: int = 1) -> tuple[float, float]:
    """(images/s, CPU ms per image of this process) of `backbone.extract` alone.

    batch 1 (the reference): one image per call, i.e. one forward at a time on the compute
    threads. batch > 1: `batch` images per call, as the build calls it (`Backbone.extract`:
    equal-size images stacked, batches one after the other)."""
    from descriptors.openvino_shapes import STATIC_AFTER

    # warm-up: first-call kernel selection; OpenVINO compiles the photos' shape on its STATIC_AFTER-th forward
    for _ in range(STATIC_AFTER):
        extractor.backbone.extract(tensors[:1])
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(tensors), batch):
        extractor.backbone.extract(tensors[i:i + batch])
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return len(tensors) / seconds, 1000.0 * cpu / len(tensors)


def end_to_end_ips(extractor, folder: Path, config, work: Path) -> tuple[float, float]:
    """(images/s, CPU ms per image of this process) of `build_index` with a loaded extractor."""
    from indexer.build import build_index

    out = work / f"index-{time.monotonic_ns()}"
    start, cpu = time.perf_counter(), time.process_time()
    summary = build_index(folder, out, config, progress=False, extractor=extractor)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    shutil.rmtree(out)
    return summary.indexed / seconds, 1000.0 * cpu / summary.indexed


def nmf_ips(extractor, paths: list[Path]) -> tuple[float, float]:
    """(images/s, CPU ms per image of this process) of the descriptor stage alone (CroW + NMF +
    rows) on precomputed activations."""
    from descriptors.nmf import warm_up
    from descriptors.pipeline import local_descriptors

    acts = [extractor.backbone.extract([x])[0] for x in preprocessed(extractor, paths)]
    warm_up()  # the kernel's load (numba's disk cache) is not the stage's cost
    local_descriptors(acts[:2], extractor.config)
    start, cpu = time.perf_counter(), time.process_time()
    local_descriptors(acts, extractor.config)
    return len(acts) / (time.perf_counter() - start), 1000.0 * (time.process_time() - cpu) / len(acts)


def throughput_ceiling(bare_ips: float, bare_cpu_ms: float, outside_cpu_ms: float, cpus: int) -> float:
    """The most end-to-end / bare-forward images/s this machine allows: with every core busy a
    build does at most cpus / (the forward's CPU + the CPU of its other stages per image) images
    per second (the other stages measured alone: decode + preprocessing and CroW + NMF + rows; the
    writer, FAISS and the catalog left out, so this bounds from above)."""
    return cpus * 1000.0 / (bare_cpu_ms + outside_cpu_ms) / bare_ips


def peak_rss_mb_of_build(folder: Path, out: Path, image_size: int, extra: list[str]) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "indexer.cli", "build", str(folder), "--out", str(out), "--image-size", str(image_size), "--quiet", *extra]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024.0, seconds  # ru_maxrss is in kB on Linux


def main() -> None:
    from descriptors.backbones import retrieval_image_size

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=48, help="photos for the throughput comparison")
    parser.add_argument("--image-size", type=int, default=retrieval_image_size("efficientnet-lite0"), help="default: the product's")
    parser.add_argument("--descriptor", default=None, help="default: the product's (IndexConfig)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="decode threads to try (first = default)")
    parser.add_argument("--rss-sizes", type=int, nargs="*", default=[200, 2000], help="collection sizes for peak RSS")
    parser.add_argument("--rss-image-size", type=int, default=128, help="--image-size of the RSS builds (time)")
    parser.add_argument("--rss-whiten-dim", type=int, default=0, help="also stress the two-pass path (0: off)")
    parser.add_argument("--overlap", action="store_true", help="NMF in a background thread (IndexConfig.overlap_nmf)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved bare / end-to-end rounds")
    parser.add_argument("--threads", type=int, default=0, help="compute threads (0: the automatic choice, descriptors.threads)")
    parser.add_argument("--rss-only", action="store_true", help="only the peak-RSS builds")
    parser.add_argument("--pil-decoder", action="store_true",
                        help="decode with PIL, as a build of fewer than images.ARRAY_DECODER_MIN_IMAGES does "
                             "(default: torchvision's array decoder, as a longer build does)")
    parser.add_argument("--json", default=None, help="write the numbers to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()

    import torch

    from indexer.config import IndexConfig
    from indexer.extraction import make_extractor

    work = Path(tempfile.mkdtemp(prefix="bench_indexer_"))
    results: dict = {"image_size": args.image_size, "n": args.n, "descriptor": args.descriptor,
                     "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        photos = work / "photos"
        paths = write_photo_set(photos, args.n) if not args.rss_only else []
        args.descriptor = args.descriptor or IndexConfig().descriptor
        results["descriptor"] = args.descriptor
        config = IndexConfig(image_size=args.image_size, descriptor=args.descriptor, batch_size=args.batch_size,
                             overlap_nmf=args.overlap)
        from descriptors.threads import setup_threads

        results["threads"] = setup_threads(args.threads, verbose=True, prog="bench_indexer").describe()
        config = config.replace(threads=torch.get_num_threads())
        if args.rss_only:
            args.rounds = 0
        results["torch_threads"] = torch.get_num_threads()
        extractor = make_extractor(config) if not args.rss_only else None
        from descriptors.images import enable_array_decoder

        # the steady state of a long build (images.array_decoder_pays): same pixels as PIL's
        results["array_decoder"] = False if args.pil_decoder else enable_array_decoder()
        nmf, nmf_cpu = nmf_ips(extractor, paths[: min(16, len(paths))]) if paths else (float("nan"), float("nan"))
        results["descriptor_stage_images_per_s"] = nmf
        results["descriptor_stage_cpu_ms_per_image"] = nmf_cpu
        print(f"torch threads {torch.get_num_threads()}, runtime {extractor.backbone.runtime if extractor else '-'}, "
              f"{args.descriptor}, JPEG decoder {'torchvision (array)' if results['array_decoder'] else 'PIL'}, "
              f"load average before: {os.getloadavg()[0]:.1f}")
        print(f"{'descriptor stage alone (CroW+NMF+rows)':<42} {nmf:9.2f} images/s")
        # Rounds interleave the bare forward and the end-to-end runs so that both see the same
        # background load (the shared machine's load swings by 2x within minutes); the ratio is
        # the median of the per-round ratios. CPU ms/image (this process, all threads) say the
        # same with less noise from other jobs when the cores are saturated: cpu ratio = bare CPU
        # per image / end-to-end CPU per image. "fwd x8": extract of 8 images per call, the
        # build's way.
        print(f"{'round':<6} {'workers':>7} {'bare img/s':>10} {'fwd x8':>7} {'e2e img/s':>10} {'ratio':>6} "
              f"{'bare cpu':>8} {'e2e cpu':>8} {'cpu ratio':>9}")
        cpu = time.process_time()
        tensors = preprocessed(extractor, paths) if args.rounds else []
        preprocess_cpu = 1000.0 * (time.process_time() - cpu) / max(1, len(tensors))
        cpus = torch.get_num_threads()
        per_workers: dict[int, list[tuple[float, ...]]] = {w: [] for w in args.workers}
        for round_index in range(args.rounds):
            for workers in args.workers:
                bare, bare_cpu = bare_forward_ips(extractor, tensors)
                ips, e2e_cpu = end_to_end_ips(extractor, photos, config.replace(workers=workers), work)
                batched, _ = bare_forward_ips(extractor, tensors, batch=args.batch_size)
                ceiling = throughput_ceiling(bare, bare_cpu, preprocess_cpu + nmf_cpu, cpus)
                per_workers[workers].append((bare, ips, bare_cpu, e2e_cpu, batched, ceiling))
                print(f"{round_index:<6} {workers:>7} {bare:10.2f} {batched:7.2f} {ips:10.2f} {ips / bare:6.3f} "
                      f"{bare_cpu:8.1f} {e2e_cpu:8.1f} {bare_cpu / e2e_cpu:9.3f}", flush=True)
        summary = {}
        for workers, rows in per_workers.items() if args.rounds else ():
            columns = list(zip(*rows, strict=True))
            summary[workers] = {
                "bare_images_per_s": float(np.median(columns[0])),
                "end_to_end_images_per_s": float(np.median(columns[1])),
                "ratio": float(np.median([e / b for b, e, *_ in rows])),
                "bare_cpu_ms_per_image": float(np.median(columns[2])),
                "end_to_end_cpu_ms_per_image": float(np.median(columns[3])),
                "cpu_ratio": float(np.median([bc / ec for _, _, bc, ec, *_ in rows])),
                "forward_batched_images_per_s": float(np.median(columns[4])),
                "ratio_ceiling": float(np.median(columns[5])),
            }
            print(f"median, --workers {workers}: ratio {summary[workers]['ratio']:.3f} "
                  f"(bare {summary[workers]['bare_images_per_s']:.2f}, end-to-end {summary[workers]['end_to_end_images_per_s']:.2f} images/s), "
                  f"cpu ratio {summary[workers]['cpu_ratio']:.3f}")
        if args.rounds:
            default = summary[args.workers[0]]
            results["by_workers"] = summary
            results["bare_forward_images_per_s"] = default["bare_images_per_s"]
            results["forward_batched_images_per_s"] = default["forward_batched_images_per_s"]
            results["end_to_end_images_per_s"] = default["end_to_end_images_per_s"]
            results["throughput_ratio"] = default["ratio"]
            results["cpu_ratio"] = default["cpu_ratio"]
            results["runtime"] = extractor.backbone.runtime
            results["throughput_ratio_ceiling"] = default["ratio_ceiling"]
            results["preprocess_cpu_ms_per_image"] = preprocess_cpu
            print(f"throughput_ratio (end-to-end / bare forward, --workers {args.workers[0]}) = {default['ratio']:.3f} (target >= 0.85)")
            print(f"ceiling on this machine: {default['ratio_ceiling']:.3f} (per image: forward {default['bare_cpu_ms_per_image']:.1f} ms "
                  f"of CPU, decode + preprocessing {preprocess_cpu:.1f}, CroW + NMF + rows {nmf_cpu:.1f}; {cpus} CPU(s))")

        if args.rss_sizes:
            print(f"\n{'images':>7} {'peak RSS MB':>12} {'seconds':>8}   (dff-index build, {args.rss_image_size} px, synthetic)")
            extra = ["--descriptor", args.descriptor, "--whiten-dim", str(args.rss_whiten_dim)]
            for n in args.rss_sizes:
                folder = work / f"syn{n}"
                write_synthetic_set(folder, n, side=max(160, args.rss_image_size * 2))
                rss, seconds = peak_rss_mb_of_build(folder, work / f"index{n}", args.rss_image_size, extra)
                results[f"rss_mb_{n}"] = rss
                results[f"rss_seconds_{n}"] = seconds
                print(f"{n:>7} {rss:12.1f} {seconds:8.1f}")
            results["rss_image_size"] = args.rss_image_size
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
