"""dff-analyze's cost: `weights` on efficientnet-lite0, `rank` on N images at 6 ranks, and the
coupled NMF's time per iteration vs the plain NMF (descriptors.nmf) of the same data.

Each time is also given as a ratio to a reference measured in the same run (the bare backbone
forward for `rank`, the plain NMF for the coupled NMF); on a shared machine only the ratios mean
much. Images: Tiny-ImageNet val (64 x 64) from ../shared/data when present, else scikit-image's
sample photos repeated.

    python benchmarks/bench_analysis.py [--images 200] [--ks 1,2,4,8,16,32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from analysis.commands import run_rank, run_weights  # noqa: E402
from analysis.config import AnalyzeConfig  # noqa: E402
from analysis.coupled import coupled_nmf, normalize_blocks  # noqa: E402
from analysis.digits import digits_blocks, load_digits_split, train_digits_cnn  # noqa: E402
from descriptors.backbones import load_backbone  # noqa: E402
from descriptors.images import decode_image  # noqa: E402
from descriptors.nmf import nmf  # noqa: E402


def image_folder(count: int, workdir: Path) -> tuple[Path, str]:
    shared = Path(os.environ.get("DFF_SHARED_DATA", REPO.parent / "shared" / "data")) / "tiny-imagenet-val" / "images"
    folder = workdir / "images"
    folder.mkdir()
    if shared.is_dir():
        files = sorted(shared.glob("*.JPEG"))[:count]
        for path in files:
            (folder / f"{path.stem}.jpg").symlink_to(path)
        return folder, f"Tiny-ImageNet val ({len(files)} images, 64 x 64)"
    from descriptors.sample_photos import sample_photo

    names = ["chelsea", "coffee", "astronaut", "rocket", "camera", "retina"]
    for i in range(count):
        sample_photo(names[i % len(names)], 256).save(folder / f"{i:04d}.jpg")
    return folder, f"scikit-image sample photos repeated ({count} images)"


def forward_seconds(folder: Path, image_size: int) -> tuple[float, float]:
    """The reference: decode + preprocess + bare forward of every image, batch 1 (wall, CPU seconds)."""
    backbone = load_backbone("efficientnet-lite0")
    start, cpu = time.perf_counter(), time.process_time()
    for path in sorted(folder.iterdir()):
        x = backbone.preprocess(decode_image(path), image_size)
        backbone.extract([x])
    return time.perf_counter() - start, time.process_time() - cpu


def coupled_vs_plain(k: int, iters: int) -> dict:
    split = load_digits_split()
    model, _ = train_digits_cnn(split, 1.0, epochs=1)
    blocks = normalize_blocks(list(digits_blocks(model, split.test_x).values()))
    stacked = torch.cat(blocks).T.contiguous()  # (images, features): the plain NMF of the same data
    coupled_nmf(blocks, k, max_iter=2, tol=0)  # warm-up
    start = time.perf_counter()
    coupled_nmf(blocks, k, max_iter=iters, tol=0)
    coupled = (time.perf_counter() - start) / iters
    nmf(stacked, k, max_iter=2, tol=0)
    start = time.perf_counter()
    nmf(stacked, k, max_iter=iters, tol=0)
    plain = (time.perf_counter() - start) / iters
    return {"shape": list(stacked.shape), "k": k, "iterations": iters, "density": float((stacked > 0).float().mean()),
            "coupled_ms_per_iteration": 1000 * coupled, "plain_nmf_ms_per_iteration": 1000 * plain,
            "coupled_x_plain": coupled / plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--ks", default="1,2,4,8,16,32")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rank-max-rows", type=int, default=AnalyzeConfig(out=Path(".")).max_rows,
                        help="activation rows per layer for rank (default: the command's)")
    parser.add_argument("--coupled-k", type=int, default=30)
    parser.add_argument("--coupled-iters", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ks = tuple(int(k) for k in args.ks.split(","))
    results: dict = {"torch_threads": torch.get_num_threads(), "load_average_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder, source = image_folder(args.images, tmp)
        results["rank_source"] = source
        start, cpu = time.perf_counter(), time.process_time()
        weights = run_weights(AnalyzeConfig(out=tmp / "weights", progress=False))
        results["weights_seconds"] = time.perf_counter() - start
        results["weights_cpu_seconds"] = time.process_time() - cpu
        results["weights_layers"] = len(weights["layers"])
        results["forward_seconds"], results["forward_cpu_seconds"] = forward_seconds(folder, args.image_size)
        start, cpu = time.perf_counter(), time.process_time()
        run_rank(AnalyzeConfig(out=tmp / "rank", progress=False, ks=ks, image_size=args.image_size,
                               max_rows=args.rank_max_rows), folder)
        results["rank_seconds"] = time.perf_counter() - start
        results["rank_cpu_seconds"] = time.process_time() - cpu
    results.update(rank_images=args.images, rank_ks=list(ks), rank_image_size=args.image_size,
                   rank_max_rows=args.rank_max_rows,
                   rank_x_forward=results["rank_seconds"] / results["forward_seconds"],
                   rank_cpu_x_forward_cpu=results["rank_cpu_seconds"] / results["forward_cpu_seconds"])
    results["coupled"] = coupled_vs_plain(args.coupled_k, args.coupled_iters)
    results["load_average_after"] = os.getloadavg()[0]

    c = results["coupled"]
    print(f"\ndff-analyze cost, CPU, {results['torch_threads']} torch thread(s), load average "
          f"{results['load_average_before']:.1f} -> {results['load_average_after']:.1f} (shared machine)")
    print("| measurement | wall s | CPU s | reference (wall / CPU s) | ratio (wall / CPU) |\n|---|---:|---:|---|---:|")
    print(f"| weights, efficientnet-lite0 ({results['weights_layers']} conv layers) | {results['weights_seconds']:.1f} "
          f"| {results['weights_cpu_seconds']:.1f} | | |")
    print(f"| rank, {args.images} images at {args.image_size} px, K = {args.ks}, 8 layers, <= {args.rank_max_rows} rows | {results['rank_seconds']:.1f} "
          f"| {results['rank_cpu_seconds']:.1f} | bare forward of the same images {results['forward_seconds']:.1f} / "
          f"{results['forward_cpu_seconds']:.1f} | {results['rank_x_forward']:.1f} / {results['rank_cpu_x_forward_cpu']:.1f} |")
    print(f"| coupled NMF, {c['shape']} K = {c['k']}, ms/iteration | {c['coupled_ms_per_iteration']:.1f} | "
          f"| plain NMF of the stacked data {c['plain_nmf_ms_per_iteration']:.1f} ms | {c['coupled_x_plain']:.2f} |")
    print(f"rank images: {source}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"JSON keys: {sorted(results)}")


if __name__ == "__main__":
    main()
