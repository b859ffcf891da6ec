"""Atomic file writes: write a temp file in the same folder, fsync, os.replace.

A reader therefore sees either the old file or the new one, never a half-written one, and a
failure (disk full, read-only folder, file-size limit) leaves the old file in place and raises
`IndexWriteError` with the OS's reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import IndexWriteError

# Fault injection (tests only): `DFF_INDEX_CRASH_AT=i` kills the process with SIGKILL at the i-th
# crash point it passes (1-based); `DFF_INDEX_CRASH_TRACE=FILE` appends each point's label to FILE,
# so a test can count the steps of an operation and then crash it at every one of them.
_CRASH_COUNTER = [0]


def crash_point(label: str) -> None:
    """A step boundary of a write: where a test may kill the process (a no-op otherwise)."""
    at, trace = os.environ.get("DFF_INDEX_CRASH_AT"), os.environ.get("DFF_INDEX_CRASH_TRACE")
    if not at and not trace:
        return
    _CRASH_COUNTER[0] += 1
    if trace:
        with open(trace, "a") as handle:
            handle.write(f"{_CRASH_COUNTER[0]}\t{label}\n")
    if at and int(at) == _CRASH_COUNTER[0]:
        os.kill(os.getpid(), signal.SIGKILL)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; index files get the usual 0666 & ~umask like any other file
_FILE_MODE = 0o666 & ~_current_umask()


def _fsync_dir(folder: str | Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_error(path: str | Path, exc: OSError) -> IndexWriteError:
    reason = exc.strerror or str(exc)  # strerror is None for an OSError(message)
    return IndexWriteError(
        f"cannot write {path}: {reason}; free disk space or choose a writable location "
        f"(nothing was changed in the existing index)"
    )


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _write_temp(path: Path, write: Callable[[str], None], suffix: str) -> str:
    """Create a temp file next to `path`, `write(temp)` into it, set the mode and fsync it.

    Returns the temp file's path; on any failure the temp file is removed (an OSError becomes
    `IndexWriteError` with the OS's reason) and `path` is untouched.
    """
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from exc
    try:
        write(temp)
        os.chmod(temp, _FILE_MODE)
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
    except OSError as exc:
        _unlink_quietly(temp)
        raise write_error(path, exc) from exc
    except BaseException:
        _unlink_quietly(temp)
        raise
    return temp


def atomic_write(path: str | Path, write: Callable[[str], None], suffix: str = "") -> None:
    """Call `write(temp_path)` then atomically move the temp file onto `path`."""
    path = Path(path)
    temp = _write_temp(path, write, suffix)
    crash_point(f"{path.name}: written, not renamed")
    try:
        os.replace(temp, path)
    except OSError as exc:
        _unlink_quietly(temp)
        raise write_error(path, exc) from exc
    _fsync_dir(path.parent)
    crash_point(f"{path.name}: renamed")


def _bytes_writer(data: bytes) -> Callable[[str], None]:
    def write(temp: str) -> None:
        with open(temp, "wb") as handle:
            handle.write(data)

    return write


def _json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, _bytes_writer(data))


def atomic_write_json(path: str | Path, obj: object) -> None:
    atomic_write_bytes(path, _json_bytes(obj))


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
