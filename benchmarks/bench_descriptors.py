"""Descriptor-core cost on CPU: backbone forward vs NMF vs descriptor post-processing.

Prints a table of ms/image and the ratio (everything but the forward) / forward. Real photos:
the Paris subset in $DFF_SHARED_DATA (docs/data.md) when present, else scikit-image's sample photos.

    python benchmarks/bench_descriptors.py [--image-size 512] [--images 8] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from descriptors.aggregate import aggregate_rows  # noqa: E402
from descriptors.backbones import load_backbone, retrieval_image_size  # noqa: E402
from descriptors.factorized import nmf_vu_rows  # noqa: E402
from descriptors.images import decode_image  # noqa: E402
from descriptors.nmf import factorize_activations  # noqa: E402
from descriptors.pipeline import DescriptorConfig  # noqa: E402
from descriptors.whitening import PCAWhitening  # noqa: E402

DEFAULT_BATCH = 8  # the indexer's default NMF batch (the forward itself runs at batch 1 on CPU)


def load_photos(count: int):
    shared = Path(os.environ.get("DFF_SHARED_DATA", REPO.parent / "shared" / "data")) / "paris6k-subset" / "jpg"
    if shared.is_dir():
        files = sorted(p for p in shared.rglob("*.jpg"))[:count]
        return [decode_image(p) for p in files], f"Paris subset ({len(files)} images)"
    from descriptors.sample_photos import sample_photo

    names = ["chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "retina"]
    photos = [sample_photo(n) for n in names[:count]]
    return photos, f"scikit-image sample photos ({len(photos)} images)"


def timed(fn, repeat: int) -> float:
    """Median wall time of fn() in seconds over `repeat` runs, after one warm-up."""
    fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=retrieval_image_size("efficientnet-lite0"), help="default: the product's")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--ks", default="4,8,16,32")
    parser.add_argument("--max-iter", type=int, default=DescriptorConfig().max_iter, help="NMF iterations (default: the product's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.manual_seed(0)
    photos, source = load_photos(args.images)
    results: dict = {"source": source, "image_size": args.image_size, "torch_threads": torch.get_num_threads()}

    rows = []
    forward_ms = {}
    for label, channels_last, batch in (
        ("channels-last, batch 1", True, 1),
        ("NCHW, batch 1", False, 1),
        ("channels-last, batch 8", True, 8),
    ):
        backbone = load_backbone("efficientnet-lite0", channels_last=channels_last, max_batch=batch)
        xs = [backbone.preprocess(p, args.image_size) for p in photos]
        if batch > 1:  # equal sizes so that the batch really is one forward
            xs = [xs[0]] * batch
        seconds = timed(lambda b=backbone, x=xs: b.extract(x), args.repeat)
        forward_ms[label] = 1000 * seconds / len(xs)
        rows.append((f"forward ({label})", forward_ms[label]))
    reference = forward_ms["channels-last, batch 1"]
    results["forward_ms"] = forward_ms

    backbone = load_backbone("efficientnet-lite0")
    acts = backbone.extract([backbone.preprocess(p, args.image_size) for p in photos])
    common_shape = Counter(tuple(a.shape) for a in acts).most_common(1)[0][0]
    same_size = [a for a in acts if tuple(a.shape) == common_shape]
    results["map_shape"] = list(common_shape)

    defaults = DescriptorConfig()
    nmf_settings = {"max_iter": args.max_iter, "tol": defaults.tol, "seed": defaults.seed}
    results["nmf_max_iter"] = args.max_iter
    nmf_ms: dict[str, float] = {}
    post_ms: dict[str, float] = {}
    whitening = None
    for k in [int(v) for v in args.ks.split(",")]:
        for batch in (1, args.batch_size):
            group = (same_size * batch)[:batch]
            seconds = timed(lambda g=group, k=k: factorize_activations(g, k, **nmf_settings), args.repeat)
            nmf_ms[f"k{k}_b{batch}"] = 1000 * seconds / batch
            rows.append((f"NMF K={k} batch {batch} ({args.max_iter} it max, tol {defaults.tol:g})", nmf_ms[f"k{k}_b{batch}"]))
        factors = factorize_activations(same_size, k, **nmf_settings)
        if whitening is None:
            local = np.concatenate([nmf_vu_rows(U, V).numpy() for U, V in factors])
            local = np.concatenate([local] * 4 + [np.abs(np.random.default_rng(0).normal(size=(2000, local.shape[1])))])
            whitening = PCAWhitening.fit(local.astype(np.float32), dim=256)

        def post(factors=factors, whitening=whitening):
            for U, V in factors:
                aggregate_rows(nmf_vu_rows(U, V).numpy(), whitening)

        post_ms[f"k{k}"] = 1000 * timed(post, args.repeat) / len(factors)
        rows.append((f"NMF V·U rows + whitening(256) + aggregate, K={k}", post_ms[f"k{k}"]))
    results["nmf_ms"] = nmf_ms
    results["post_ms"] = post_ms
    ratios = {
        f"k{k}": (nmf_ms[f"k{k}_b{args.batch_size}"] + post_ms[f"k{k}"]) / reference
        for k in [int(v) for v in args.ks.split(",")]
    }
    results["overhead_ratio_by_k"] = ratios
    results["overhead_ratio"] = ratios.get("k8")

    print(f"\nDescriptor cost, efficientnet-lite0 on CPU ({torch.get_num_threads()} threads), "
          f"{args.image_size} px, {source}, map {common_shape[0]}x{common_shape[1]}x{common_shape[2]}\n")
    print(f"| {'stage':<52} | {'ms/image':>9} | {'x forward':>9} |")
    print(f"|{'-' * 54}|{'-' * 11}|{'-' * 11}|")
    for name, ms in rows:
        print(f"| {name:<52} | {ms:9.1f} | {ms / reference:9.3f} |")
    print()
    for key, ratio in ratios.items():
        print(f"overhead ratio (NMF batch {args.batch_size} + post) / forward, {key.upper()}: {ratio:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
