"""Finding image files, hashing them, and the path convention of the catalog.

Catalog paths are stored so that the index survives being moved together with its images:
- a POSIX path relative to the manifest's `source_root` for files under it (the usual case),
- `@index/<relative>` for files inside the index directory itself (uploads/ of the server),
- an absolute path for anything else (files added from elsewhere).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from descriptors.images import iter_image_files  # re-exported: the indexer's public name

INDEX_PREFIX = "@index/"


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files and folders (walked recursively) -> a sorted, de-duplicated list of files.

    Files named explicitly are kept whatever their extension (the decoder decides); folders
    contribute only image extensions.
    """
    out: dict[str, Path] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for file in iter_image_files(path):
                out[os.path.abspath(file)] = file
        elif path.exists():
            out[os.path.abspath(path)] = path
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")
    return [out[key] for key in sorted(out)]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stat_key(stat: os.stat_result) -> tuple[int, int]:
    """(size, mtime in ns): what tells that a file changed since it was last looked at."""
    return stat.st_size, stat.st_mtime_ns


def hash_file(path: str | Path) -> tuple[str, tuple[int, int]]:
    """(sha256 hex of the content, `stat_key` taken before reading), reading in chunks.

    The key is taken first so that a file changed while (or after) it is hashed never shows the
    key of the hashed content: a reader that finds the same key may reuse the hash.
    """
    with open(path, "rb") as handle:
        key = stat_key(os.fstat(handle.fileno()))
        digest = hashlib.file_digest(handle, hashlib.sha256).hexdigest()
    return digest, key


def catalog_path(path: str | Path, source_root: str | Path, index_dir: str | Path) -> str:
    """The string stored in the catalog for `path` (see the module docstring)."""
    absolute = Path(os.path.abspath(path))
    index_root = Path(os.path.abspath(index_dir))
    if absolute.is_relative_to(index_root):
        return INDEX_PREFIX + absolute.relative_to(index_root).as_posix()
    root = Path(os.path.abspath(source_root))
    if absolute.is_relative_to(root):
        return absolute.relative_to(root).as_posix()
    return absolute.as_posix()


def resolve_catalog_path(stored: str, source_root: str | Path, index_dir: str | Path) -> str:
    """Inverse of `catalog_path`: the absolute path of a catalog entry."""
    if stored.startswith(INDEX_PREFIX):
        return os.path.join(os.path.abspath(index_dir), stored[len(INDEX_PREFIX) :])
    if os.path.isabs(stored):
        return stored
    return os.path.join(os.path.abspath(source_root), stored)
