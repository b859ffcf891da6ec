"""Index-file writes: atomic writes (`descriptors.atomic_files`) reporting `IndexWriteError`, and the writers' lock.

A reader therefore sees either the old file or the new one, never a half-written one, and a
failure (disk full, read-only folder, file-size limit) leaves the old file in place and raises
`IndexWriteError` with the OS's reason.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path

from descriptors import atomic_files
from descriptors.atomic_files import crash_point

from .errors import IndexWriteError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_json", "crash_point", "exclusive_lock", "write_error"]


def write_error(path: str | Path, exc: OSError) -> IndexWriteError:
    reason = exc.strerror or str(exc)  # strerror is None for an OSError(message)
    return IndexWriteError(
        f"cannot write {path}: {reason}; free disk space or choose a writable location "
        f"(nothing was changed in the existing index)"
    )


def atomic_write(path: str | Path, write: Callable[[str], None], suffix: str = "") -> None:
    """`descriptors.atomic_files.atomic_write`, with an OSError reported as `IndexWriteError`."""
    try:
        atomic_files.atomic_write(path, write, suffix)
    except OSError as exc:
        raise write_error(path, exc) from exc


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, atomic_files.bytes_writer(data))


def atomic_write_json(path: str | Path, obj: object) -> None:
    try:
        atomic_files.atomic_write_json(path, obj)
    except OSError as exc:
        raise write_error(path, exc) from exc


@contextlib.contextmanager
def exclusive_lock(index_dir: str | Path) -> Iterator[None]:
    """Serialize writers of one index directory (add/remove from several processes)."""
    lock_path = Path(index_dir) / ".lock"
    try:
        handle = open(lock_path, "a")  # noqa: SIM115 - held for the duration of the context
    except OSError as exc:
        raise write_error(lock_path, exc) from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()
