"""`dff-demo [FOLDER] [--query IMAGE] [--serve | --no-serve]`: the whole product in one command.

Indexes FOLDER (default: real photos that scikit-image ships, written to a cache folder), starts
`dff-serve` on a free loopback port and the search page (`dff-web`) beside it, prints both
addresses, runs one query through `dff-query` and prints the ranked results. Then, in a terminal
(or with --serve), it keeps both running until Ctrl-C so the page can be used; otherwise (or with
--no-serve) it stops them. With no FOLDER the query is the right view of scikit-image's stereo
motorcycle pair, whose left view is in the index.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from .launcher import console_script, launch_serve, launch_web

DEMO_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
)


def default_cache_dir() -> Path:
    return Path(os.environ.get("DFF_DEMO_DIR", Path.home() / ".cache" / "dffsearch" / "demo"))


def write_demo_photos(folder: Path) -> Path:
    """Write scikit-image's colour sample photos (+ the left motorcycle view) as JPEGs; return the query."""
    import skimage.data
    from PIL import Image

    from descriptors.sample_photos import sample_photo, write_sample_photos

    write_sample_photos(folder, DEMO_PHOTOS, quality=92, overwrite=False)
    left_path = folder / "motorcycle_left.jpg"
    if not left_path.exists():
        sample_photo("stereo_motorcycle").save(left_path, quality=92)  # the pair's left view
    query = folder.parent / "query_motorcycle_right.jpg"
    if not query.exists():
        _, right, _ = skimage.data.stereo_motorcycle()
        Image.fromarray(right).save(query, quality=92)
    return query


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dff-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "folder", nargs="?", type=Path, help="images to index (default: scikit-image sample photos)"
    )
    parser.add_argument("--query", type=Path, help="query image (default: the first image of FOLDER)")
    parser.add_argument("--index", type=Path, help="index directory (default: a cache folder)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--rebuild", action="store_true", help="delete and rebuild the demo index")
    parser.add_argument(
        "--serve", action=argparse.BooleanOptionalAction, default=None,
        help="keep the server and the page running after the query until Ctrl-C (default: when run in a terminal)",
    )
    parser.add_argument(
        "--threads", type=int, default=0,
        help="compute threads for dff-index and dff-serve (default 0: the CPUs not busy with other work)",
    )
    parser.add_argument("--verbose", action="store_true", help="dff-index and dff-serve print their thread settings")
    args = parser.parse_args(argv)
    thread_flags = (["--threads", str(args.threads)] if args.threads else []) + (["--verbose"] if args.verbose else [])

    cache = default_cache_dir()
    if args.folder is None:
        folder = cache / "photos"
        default_query = write_demo_photos(folder)
    else:
        folder = args.folder.expanduser().resolve()
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder")
        from descriptors.images import iter_image_files

        images = list(iter_image_files(folder))
        if not images:
            parser.error(f"{folder} holds no .jpg/.jpeg/.png/.webp images")
        default_query = images[0]
    query = (args.query or default_query).expanduser().resolve()
    # the tag covers the default settings too: after an upgrade that changes them (image size,
    # K, ...) the demo builds a fresh index instead of serving one made with the old ones
    from indexer.config import IndexConfig

    settings = json.dumps(IndexConfig().extraction_fingerprint(), sort_keys=True)
    folder_tag = hashlib.sha1(f"{folder}\n{settings}".encode()).hexdigest()[:10]
    index_dir = (args.index or cache / f"index-{folder_tag}").expanduser().resolve()
    if args.rebuild and index_dir.exists():
        shutil.rmtree(index_dir)

    if not (index_dir / "manifest.json").exists():
        print(f"== indexing {folder} -> {index_dir}", flush=True)
        subprocess.run([console_script("dff-index"), "build", str(folder), "--out", str(index_dir), *thread_flags], check=True)
    else:
        print(f"== using the existing index {index_dir} (--rebuild to redo it)", flush=True)

    print("== starting dff-serve and the search page", flush=True)
    try:
        server = launch_serve(index_dir, thread_flags)
    except RuntimeError as exc:
        raise SystemExit(f"dff-demo: {exc}") from exc
    with server:
        try:
            page = launch_web(server.target)
        except RuntimeError as exc:
            raise SystemExit(f"dff-demo: {exc}") from exc
        with page:
            print(f"== gRPC: {server.target}    page: {page.url}", flush=True)
            print(f"== query {query}", flush=True)
            result = subprocess.run(
                [console_script("dff-query"), str(query), "--port", str(server.port), "--top-k", str(args.top_k),
                 "--localize"],
                check=False,
            )
            serve = sys.stdin.isatty() if args.serve is None else args.serve
            if serve and result.returncode == 0:
                print(f"== open {page.url} in a browser to search; Ctrl-C stops the server and the page",
                      flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    threading.Event().wait()
    print("== server and page stopped", flush=True)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
