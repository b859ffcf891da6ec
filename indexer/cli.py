"""`dff-index build|add|remove|list|compact|graph|info`: the command line over the indexer's Python API.

Exit status: 0 done; 1 `remove` found none of the requested images (nothing changed); 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from descriptors.settings import SOLVER_ALGORITHMS as NMF_SOLVERS

from .build import build_index
from .compact import compact_index
from .config import DESCRIPTOR_METHODS, IndexConfig
from .errors import IndexerError, ManifestMismatchError
from .graph import DEFAULT_GRAPH_K
from .manifest import manifest_settings, read_manifest
from .open_index import index_info, list_images
from .update import add_images, build_graph, remove_images


def _add_runtime_flags(
    parser: argparse.ArgumentParser, workers_help: str = "decode threads (0: decode inline; default: as many as --threads)"
) -> None:
    parser.add_argument("--batch-size", type=int, default=IndexConfig.batch_size, help="images per forward/NMF batch")
    parser.add_argument("--workers", type=int, default=None, help=workers_help)
    parser.add_argument(
        "--threads", type=int, default=0,
        help="compute threads of torch, FAISS and BLAS (default 0: the CPUs not busy with other work, at least 1)",
    )
    parser.add_argument("--verbose", action="store_true", help="print the thread settings chosen")
    parser.add_argument(
        "--nmf-solver", default="auto", choices=("auto", *NMF_SOLVERS),
        help="NMF solver of the CPU (default auto: numba-mu when numba is installed; same factors up to rounding)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (torch device for the CNN + NMF; GPU FAISS if installed)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dff-index", description="Build and maintain a dffsearch image index.")
    sub = parser.add_subparsers(dest="command", required=True)

    build = sub.add_parser("build", help="index every image under FOLDER into a new index directory")
    build.add_argument("folder")
    build.add_argument("--out", required=True, help="index directory to create")
    build.add_argument("--backbone", default=IndexConfig.backbone)
    build.add_argument("--weights", default=None, help="weights file for the backbone (default: its own)")
    build.add_argument("--reflection-padding", action="store_true")
    build.add_argument("--descriptor", default=IndexConfig.descriptor, choices=DESCRIPTOR_METHODS)
    build.add_argument("--k", type=int, default=IndexConfig.k, help="NMF rank (nmf-v, nmf-vu)")
    build.add_argument("--max-iter", type=int, default=IndexConfig.max_iter)
    build.add_argument("--image-size", type=int, default=None, help="smaller side in pixels (default: the backbone's, 320 for efficientnet-lite0)")
    build.add_argument("--whiten-dim", type=int, default=IndexConfig.whiten_dim, help="PCA-whitening dim (0: off)")
    build.add_argument(
        "--rerank-dim", type=int, default=IndexConfig.rerank_dim,
        help="store each image's factor rows for re-ranking (dff-serve --rerank), projected to this "
        "dimension, float16: K x dim x 2 + 8 bytes per image (0: none)",
    )
    build.add_argument("--whiten-on", default=None, help="fit the whitening on this folder or index dir")
    build.add_argument("--faiss", default=IndexConfig.faiss, help='FAISS factory string ("Flat", "HNSW32", "IVF1024,PQ64", ...) or auto')
    build.add_argument("--faiss-search-params", default=None, help='e.g. "nprobe=32" or "efSearch=128"')
    build.add_argument(
        "--runtime", default=IndexConfig.runtime, choices=("auto", "torch", "onnxruntime", "openvino"),
        help="backbone runtime (default auto: the fastest installed: openvino, onnxruntime, torch); stored in the manifest",
    )
    build.add_argument("--max-pixels", type=int, default=IndexConfig.max_pixels, help="decompression-bomb cap")
    build.add_argument("--overwrite", action="store_true", help="replace an existing index at --out (at the very end)")
    build.add_argument("--shard-size", type=int, default=IndexConfig.shard_size, help=argparse.SUPPRESS)
    build.add_argument(
        "--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
        help="extract on a Ray cluster: no ADDRESS starts a local one, 'auto' joins the running one, "
        "or ray://host:10001 (needs the [ray] extra; every node must see FOLDER at the same path)",
    )
    build.add_argument(
        "--graph", type=int, default=0, metavar="K",
        help="also build the diffusion k-NN graph (K neighbours per image; dff-serve --expansion diffusion); "
        "0: none (default; O(N^2) exact, `dff-index graph` adds it later)",
    )
    build.add_argument("--cpus-per-worker", type=float, default=IndexConfig.cpus_per_worker, help="with --ray")
    build.add_argument("--gpus-per-worker", type=float, default=IndexConfig.gpus_per_worker, help="with --ray")
    _add_runtime_flags(
        build,
        workers_help="decode threads (0: decode inline; default: as many as --threads); with --ray: Ray workers, each loading "
        "the backbone once (default: the cluster's CPUs / --cpus-per-worker)",
    )

    add = sub.add_parser("add", help="add files or folders to an index (skips content already indexed)")
    add.add_argument("index_dir")
    add.add_argument("inputs", nargs="+", metavar="FOLDER_OR_FILE")
    add.add_argument("--backbone", default=None, help="refuse unless the index uses this backbone")
    add.add_argument("--descriptor", default=None, choices=DESCRIPTOR_METHODS, help="refuse unless the index uses this descriptor")
    add.add_argument("--k", type=int, default=None, help="refuse unless the index uses this NMF rank")
    add.add_argument("--image-size", type=int, default=None, help="refuse unless the index uses this size")
    _add_runtime_flags(add)

    remove = sub.add_parser("remove", help="remove images by id or path")
    remove.add_argument("index_dir")
    remove.add_argument("--ids", type=int, nargs="+", default=[])
    remove.add_argument("--paths", nargs="+", default=[])

    listing = sub.add_parser("list", help="print the images an index holds (id, path, size, added)")
    listing.add_argument("index_dir")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.add_argument("--all", action="store_true", help="include files that were skipped (with the reason)")

    compact = sub.add_parser("compact", help="fold added segments and removals into a fresh FAISS index (atomic)")
    compact.add_argument("index_dir")

    graph = sub.add_parser(
        "graph", help="(re)build the diffusion k-NN graph of an index (kept up to date by add/remove/compact)"
    )
    graph.add_argument("index_dir")
    graph.add_argument("--k", type=int, default=DEFAULT_GRAPH_K, help=f"neighbours per image (default {DEFAULT_GRAPH_K})")

    info = sub.add_parser("info", help="print the manifest and counts of an index")
    info.add_argument("index_dir")
    return parser


def _check_add_expectations(args: argparse.Namespace) -> None:
    """`add --backbone X` etc.: refuse before loading anything when the index differs."""
    settings = manifest_settings(read_manifest(args.index_dir))
    expected = {"backbone": args.backbone, "descriptor": args.descriptor, "descriptor.k": args.k, "image_size": args.image_size}
    for key, value in expected.items():
        if value is not None and settings.get(key) != value:
            raise ManifestMismatchError(key, settings.get(key), value, args.index_dir)


def _print_listing(images: list[dict], as_json: bool) -> None:
    if as_json:
        print(json.dumps(images, indent=1))
        return
    print(f"{'id':>8}  {'size':>11}  {'added (UTC)':<25}  path")
    for image in images:
        size = f"{image['width']}x{image['height']}" if image["width"] else "-"
        status = "" if image["status"] == "indexed" else f"  [{image['status']}]"
        print(f"{image['id']:>8}  {size:>11}  {image['added']:<25}  {image['path']}{status}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in ("build", "add"):
            from descriptors.threads import setup_threads

            # --ray: the driver loads torch only for stage 2 (build_index applies the threads then),
            # not for seconds of CPU while its workers start on the same machine
            threads = setup_threads(
                args.threads, verbose=args.verbose, prog=f"dff-index {args.command}",
                load_libraries=not getattr(args, "ray", None),
            )
            if not getattr(args, "ray", None):
                # decode threads (--workers None) follow it: IndexConfig.workers. Not with --ray: the
                # workers run on other CPUs (other nodes); --threads 0 there means --cpus-per-worker
                args.threads = threads.compute
        if args.command == "build":
            config = IndexConfig(
                backbone=args.backbone, weights=args.weights, reflection_padding=args.reflection_padding,
                descriptor=args.descriptor, k=args.k, max_iter=args.max_iter, image_size=args.image_size,
                whiten_dim=args.whiten_dim, rerank_dim=args.rerank_dim, whiten_on=args.whiten_on, faiss=args.faiss,
                faiss_search_params=args.faiss_search_params, batch_size=args.batch_size, threads=args.threads,
                device=args.device, nmf_solver=args.nmf_solver, runtime=args.runtime, shard_size=args.shard_size, max_pixels=args.max_pixels, overwrite=args.overwrite,
                ray_address=args.ray, cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
            )
            if args.workers is not None:
                config = config.replace(**({"ray_workers": args.workers} if args.ray else {"workers": args.workers}))
            if args.graph < 0:
                raise ValueError(f"--graph must be >= 0 (0: no graph), got {args.graph}")
            summary = build_index(args.folder, args.out, config, progress=not args.quiet)
            if args.graph:
                build_graph(args.out, args.graph)
            print(json.dumps(summary.as_dict(), indent=2) if args.json else summary.format())
        elif args.command == "add":
            _check_add_expectations(args)
            runtime = IndexConfig(
                batch_size=args.batch_size, workers=args.workers,
                threads=args.threads, device=args.device, nmf_solver=args.nmf_solver,
            )
            summary = add_images(args.index_dir, args.inputs, progress=not args.quiet, config=runtime)
            print(json.dumps(summary.as_dict(), indent=2) if args.json else summary.format())
        elif args.command == "remove":
            if not args.ids and not args.paths:
                raise IndexerError("remove: give --ids and/or --paths")
            removed = remove_images(args.index_dir, ids=args.ids, paths=args.paths)
            asked = len(args.ids) + len(args.paths)
            if removed == 0:
                print(
                    f"dff-index remove: none of the {asked} requested image(s) is in {args.index_dir}; "
                    "nothing was removed (dff-index list shows ids and paths)",
                    file=sys.stderr,
                )
                return 1
            print(f"removed {removed} of {asked} requested image(s) from {args.index_dir}")
        elif args.command == "list":
            _print_listing(list_images(args.index_dir, include_skipped=args.all), args.json)
        elif args.command == "compact":
            print(json.dumps(compact_index(args.index_dir), indent=2))
        elif args.command == "graph":
            commit = build_graph(args.index_dir, args.k)
            graph = commit.manifest["graph"]
            print(f"diffusion graph of {args.index_dir}: {graph['files'][0]['count']} images x {graph['k']} neighbours (generation {graph['generation']})")
        elif args.command == "info":
            print(json.dumps(index_info(args.index_dir), indent=2, sort_keys=True))
    except (IndexerError, ValueError, KeyError, FileNotFoundError, RuntimeError) as exc:
        # RuntimeError: WeightsUnavailableError, or --device cuda without CUDA (both say what to do)
        print(f"dff-index {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
