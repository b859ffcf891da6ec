"""dff-analyze: look inside the network (docs/analysis.md).

    dff-analyze concepts IMAGES... | --index INDEX --ids 1,2,3  --k 4 [--layer L] --out DIR
    dff-analyze rank --backbone B --images FOLDER [--layers a,b] --ks 1,2,4,8,16,32 [--compare random] --out DIR
    dff-analyze coupled --model digits-cnn --data digits --ranks 10,20,30,40,50 --out DIR
    dff-analyze weights --backbone B [--definition reshaped|fft] --out DIR

Each writes PNGs and OUT/<command>.json (and a copy at --json FILE).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import AnalyzeConfig


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _ids(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated image ids, got {text!r}") from None


def _fractions(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions, got {text!r}") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"fractions must be in (0, 1], got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dff-analyze", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, help="output folder (PNGs, JSON); required except for rank --list-layers")
    common.add_argument("--json", type=Path, help="also write the command's JSON here")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--threads", type=int, default=0,
                        help="compute threads of torch and BLAS (default 0: the CPUs not busy with other work, at least 1)")
    common.add_argument("--verbose", action="store_true", help="print the thread settings")
    common.add_argument("--no-progress", action="store_true")
    net = argparse.ArgumentParser(add_help=False)
    net.add_argument("--backbone", default="efficientnet-lite0")
    net.add_argument("--weights", help="weights file for the backbone (default: the registry's)")
    net.add_argument("--device", default="cpu")
    nmf_opts = argparse.ArgumentParser(add_help=False)
    nmf_opts.add_argument("--max-iter", type=int, default=200, help="NMF iterations at most")
    nmf_opts.add_argument("--tol", type=float, default=1e-5)

    concepts = sub.add_parser("concepts", parents=[common, net, nmf_opts], help="concept co-segmentation of a set")
    concepts.add_argument("images", nargs="*", type=Path)
    concepts.add_argument("--index", type=Path, help="an index directory (read-only): take --ids from it")
    concepts.add_argument("--ids", type=_ids, default=(), help="comma-separated image ids of --index")
    concepts.add_argument("--k", type=int, default=4, help="number of concepts")
    concepts.add_argument("--layer", help="layer name (default: the backbone's descriptor layer)")
    concepts.add_argument("--image-size", type=int, help="smaller image side (default: the backbone's / the index's)")
    concepts.add_argument("--crow", action="store_true", help="weight channels by CroW before the NMF")

    rank = sub.add_parser("rank", parents=[common, net, nmf_opts], help="NMF error vs rank, per layer")
    rank.add_argument("--images", type=Path, help="image folder")
    rank.add_argument("--layers", type=_names, default=(), help="comma-separated layer names (default: per backbone)")
    rank.add_argument("--list-layers", action="store_true", help="print the layer names and exit")
    rank.add_argument("--ks", type=_ints, default=(1, 2, 4, 8, 16, 32))
    rank.add_argument("--compare", choices=["none", "random"], default="none")
    rank.add_argument("--image-size", type=int, default=224)
    rank.add_argument("--max-images", type=int, default=200)
    rank.add_argument("--max-rows", type=int, default=20000, help="activation rows sampled per layer")

    coupled = sub.add_parser("coupled", parents=[common], help="coupled NMF of inputs and layers; digits case study")
    coupled.add_argument("--model", default="digits-cnn")
    coupled.add_argument("--data", default="digits")
    coupled.add_argument("--ranks", type=_ints, default=(10, 20, 30, 40, 50))
    coupled.add_argument("--train-fractions", type=_fractions, default=(0.25, 0.5, 0.75, 1.0))
    coupled.add_argument("--epochs", type=int, default=30)
    coupled.add_argument("--equal-steps", action="store_true",
                         help="scale the epochs by 1/fraction: the same number of gradient steps for every fraction")
    coupled.add_argument("--seeds", type=_ids, default=(0,))
    coupled.add_argument("--max-iter", type=int, default=200)
    coupled.add_argument("--tol", type=float, default=1e-6)
    coupled.add_argument("--top-singular", type=int, default=20)

    weights = sub.add_parser("weights", parents=[common, net], help="SVD of the conv weights vs Marchenko-Pastur")
    weights.add_argument("--definition", choices=["reshaped", "fft"], default="reshaped")
    weights.add_argument("--fft-size", type=int, default=16, help="input side n for --definition fft")
    weights.add_argument("--layers", type=_names, default=(), help="conv layer names (default: all)")
    weights.add_argument("--filters", type=int, default=8, help="top singular vectors shown as filters")
    return parser


def config_from_args(args: argparse.Namespace) -> AnalyzeConfig:
    config = AnalyzeConfig(out=args.out, json=args.json, progress=not args.no_progress, seed=args.seed)
    for name in ("backbone", "weights", "device", "image_size", "k", "max_iter", "tol", "layer", "layers", "ks",
                 "max_images", "max_rows", "model", "data", "ranks", "train_fractions", "epochs", "seeds",
                 "top_singular", "definition", "fft_size"):
        if hasattr(args, name):
            setattr(config, name, getattr(args, name))
    config.crow_weighting = bool(getattr(args, "crow", False))
    config.equal_steps = bool(getattr(args, "equal_steps", False))
    config.compare_random = getattr(args, "compare", "none") == "random"
    config.n_filters = getattr(args, "filters", config.n_filters)
    for name in ("k", "max_iter", "epochs", "max_images", "max_rows", "top_singular", "n_filters"):
        if getattr(config, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(config, name)}")
    return config


def run(args: argparse.Namespace) -> dict:
    from . import commands

    if args.out is None and not getattr(args, "list_layers", False):
        raise ValueError(f"{args.command}: --out DIR is required")
    config = config_from_args(args)
    if args.command == "concepts":
        return commands.run_concepts(config, args.images, args.index, args.ids)
    if args.command == "rank":
        if args.list_layers:
            return commands.run_rank(config, Path("."), list_only=True)
        if args.images is None or not args.images.is_dir():
            raise ValueError(f"rank: --images must be an image folder, got {args.images}")
        return commands.run_rank(config, args.images)
    if args.command == "coupled":
        return commands.run_coupled(config)
    return commands.run_weights(config)


def _summary(command: str, payload: dict) -> str:
    if command == "rank" and "layers" in payload and isinstance(payload["layers"], list):
        return "\n".join(payload["layers"])
    if command == "rank":
        lines = []
        for label in ("layers", "random"):
            for name, curve in payload.get(label, {}).items():
                errors = " ".join(f"{e:.3f}" for e in curve["rel_error"])
                lines.append(f"{'trained' if label == 'layers' else 'random':8s} {name:24s} K={curve['k']}: {errors}")
        return "\n".join(lines)
    if command == "coupled":
        return "\n".join(
            f"fraction {r['train_fraction']:.2f} seed {r['seed']} acc {r['test_accuracy']:.3f} "
            f"RMSE {' '.join(f'{v:.4f}' for v in r['rmse'])}" for r in payload["runs"])
    if command == "weights":
        return "\n".join(f"{layer['name']:32s} {layer['shape']!s:18s} s1 {layer['singular_values'][0]:8.3f} "
                         f"KS {layer['mp_ks_statistic']:.3f} (random {layer['random_mp_ks_statistic']:.3f})"
                         for layer in payload["layers"])
    return "\n".join(f"{Path(i['path']).name}: " + " ".join(f"{s:.2f}" for s in i["strengths"])
                     for i in payload["images"])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from descriptors.images import ImageDecodeError
    from descriptors.threads import setup_threads
    from indexer.errors import IndexerError

    previous_threads = torch.get_num_threads()
    try:
        setup_threads(args.threads, verbose=args.verbose, prog=f"dff-analyze {args.command}")
        payload = run(args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError, ImageDecodeError, IndexerError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"dff-analyze: error: {message}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(previous_threads)
    print(_summary(args.command, payload))
    if not getattr(args, "list_layers", False):
        print(f"wrote {args.out}/{args.command}.json and its PNGs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
