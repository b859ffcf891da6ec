"""`dff-eval`: instance retrieval mAP, semantic retrieval mAP@k, localization IoU.

    dff-eval instance --dataset paris6k --root DIR [--methods mac,nmf-v] [--qe 0,5] [--protocol landmark-loo]
    dff-eval semantic --dataset tiny-imagenet --root DIR [--at 30]
    dff-eval localize --dataset paris6k --root DIR

Every command prints a table (with the coverage beside each number) and can write
`--json F`, `--markdown F` and `--plot F.png` (a bar chart; defaults to the JSON path with
`.png` when `--json` is given).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evaluation.config import ALL_METHODS, EvalConfig, default_cache_dir
from evaluation.datasets.instance import INSTANCE_DATASETS
from evaluation.datasets.protocols import PROTOCOLS
from evaluation.datasets.semantic import SEMANTIC_DATASETS
from evaluation.localize import LOCALIZATION_DATASETS
from evaluation.report import EvalReport, format_table, write_bar_chart, write_json, write_markdown

# instance: None = the backbone's measured default (descriptors.backbones.retrieval_image_size)
DEFAULT_SIZES = {"instance": None, "semantic": 224, "localize": 224}


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 0,5, got {text!r}"
        ) from exc


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def _common(parser: argparse.ArgumentParser, datasets: tuple[str, ...]) -> None:
    parser.add_argument("--dataset", required=True, choices=datasets)
    parser.add_argument("--root", required=True, type=Path, help="dataset folder (official layout)")
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--weights", default=None, help="backbone weights file (default: the registry's own)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--image-size", type=_int_list, default=None, help="smaller image side in pixels (instance default: the backbone's, 320 for efficientnet-lite0; semantic and localize: 224); a list (256,320,416) sweeps: every method at every size, each reported at its best")
    parser.add_argument("--k", type=_int_list, default=(4,), help="NMF rank; a list (2,4,8) sweeps")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help=f"activation cache (default {default_cache_dir()})"
    )
    parser.add_argument("--cache-dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument(
        "--plot", type=Path, default=None, help="PNG bar chart (default: --json path with .png)"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="compute threads of torch, FAISS and BLAS (default 0: the CPUs not busy with other work, at least 1)",
    )
    parser.add_argument("--verbose", action="store_true", help="print the thread settings chosen")
    parser.add_argument(
        "--runtime", default="torch", choices=("auto", "torch", "onnxruntime", "openvino"),
        help="backbone runtime (default torch: comparable with cached activations; auto: the fastest installed)",
    )
    parser.add_argument(
        "--nmf-solver", default="auto",
        help="NMF solver of the CPU: auto (numba-mu when numba is installed), numba-mu, torch-sparse, torch-dense",
    )


def _ranking_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rerank", type=_int_list, default=EvalConfig.rerank,
        help="re-rank the top N by the factor-row match kernel (0: off); a list (0,100) measures each",
    )
    parser.add_argument("--rerank-dim", type=int, default=256, help="rows compressed to this dimension, float16 (0: uncompressed), as the index stores them")
    parser.add_argument(
        "--expansion", type=_name_list, default=("average",),
        help="query expansion for QE sizes > 0: average, alpha (alpha-QE, alpha 3), diffusion (k-NN graph); a list measures each",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dff-eval", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    instance = sub.add_parser("instance", help="Oxford5k / Paris6k (classic and revisited) mAP")
    _common(instance, INSTANCE_DATASETS)
    instance.add_argument("--methods", type=_name_list, default=ALL_METHODS, help=",".join(ALL_METHODS))
    instance.add_argument("--qe", type=_int_list, default=(0,), help="query-expansion sizes, e.g. 0,5")
    _ranking_options(instance)
    instance.add_argument(
        "--whiten-on", type=Path, default=None, help="folder of images to learn PCA-whitening on"
    )
    instance.add_argument("--whiten-dim", type=int, default=None)
    instance.add_argument("--protocol", choices=PROTOCOLS, default="standard")
    instance.add_argument("--gnd", type=Path, default=None, help="gnd_*.pkl or a folder of *_query.txt files")

    semantic = sub.add_parser("semantic", help="class-level retrieval mAP@k")
    _common(semantic, SEMANTIC_DATASETS)
    semantic.add_argument("--methods", type=_name_list, default=ALL_METHODS)
    semantic.add_argument("--qe", type=_int_list, default=(0,))
    _ranking_options(semantic)
    semantic.add_argument("--whiten-on", type=Path, default=None)
    semantic.add_argument("--whiten-dim", type=int, default=None)
    semantic.add_argument("--at", type=int, default=30)

    localize = sub.add_parser("localize", help="NMF co-localization vs sliding-window MAC, IoU")
    _common(localize, LOCALIZATION_DATASETS)
    localize.add_argument("--gnd", type=Path, default=None)
    return parser


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        backbone=args.backbone,
        weights=args.weights,
        device=args.device,
        image_size=args.image_size[0] if args.image_size else DEFAULT_SIZES[args.command],
        image_sizes=args.image_size if args.image_size and len(args.image_size) > 1 else (),
        methods=getattr(args, "methods", ALL_METHODS),
        qe=getattr(args, "qe", (0,)),
        whiten_on=getattr(args, "whiten_on", None),
        whiten_dim=getattr(args, "whiten_dim", None),
        protocol=getattr(args, "protocol", "standard"),
        at=getattr(args, "at", 30),
        k=args.k[0],
        ks=args.k if len(args.k) > 1 else (),
        rerank=getattr(args, "rerank", EvalConfig.rerank),
        rerank_dim=getattr(args, "rerank_dim", 256),
        expansion=getattr(args, "expansion", ("average",)),
        runtime=args.runtime,
        cache_dir=args.cache_dir or default_cache_dir(),
        cache_dtype=args.cache_dtype,
        progress=False if args.no_progress else None,
    )


def run(args: argparse.Namespace) -> EvalReport:
    from evaluation.localize import run_localize
    from evaluation.runners import run_instance, run_semantic

    config = config_from_args(args)
    if not args.root.is_dir():
        raise ValueError(f"--root {args.root} is not a folder")
    if args.command == "instance":
        return run_instance(args.dataset, args.root, config, args.gnd)
    if args.command == "semantic":
        return run_semantic(args.dataset, args.root, config)
    return run_localize(args.dataset, args.root, config, args.gnd)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch

    from descriptors.threads import setup_threads

    previous_threads = torch.get_num_threads()
    try:
        from descriptors.nmf import set_sparse_solver

        setup_threads(args.threads, verbose=args.verbose, prog=f"dff-eval {args.command}")
        set_sparse_solver(args.nmf_solver)
        report = run(args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"dff-eval: error: {message}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(previous_threads)
    print(format_table(report))
    if args.json:
        write_json(report, args.json)
    if args.markdown:
        write_markdown(report, args.markdown)
    plot = args.plot or (args.json.with_suffix(".png") if args.json else None)
    if plot:
        write_bar_chart(report, plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
