"""Atomic file writes, the one implementation every program uses.

`atomic_write(path, write)` calls `write(temp)` on a temp file in `path`'s folder, fsyncs it and
`os.replace`s it onto `path`, so a reader sees the old file or the new one, never half of one, and
a failure (disk full, read-only folder, a crash) leaves the old file in place. OSError propagates
with the OS's reason; `indexer.storage` turns it into `IndexWriteError` for index files.

It lives in `descriptors` (the package every other one imports) so that the activation cache, the
whitening file, the exported ONNX backbone, dff-eval's reports and the index all share it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

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


# mkstemp creates 0600 files; ours get the usual 0666 & ~umask like any other file
_FILE_MODE = 0o666 & ~_current_umask()


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in `folder` durable (best effort: some filesystems refuse a directory fsync)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _write_temp(path: Path, write: Callable[[str], None], suffix: str) -> str:
    """Create a temp file next to `path`, `write(temp)` into it, set its mode and fsync it.

    Returns the temp file's path; on any failure the temp file is removed and `path` is untouched.
    """
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    try:
        write(temp)
        os.chmod(temp, _FILE_MODE)
        with open(temp, "rb+") as handle:
            os.fsync(handle.fileno())
    except BaseException:
        _unlink_quietly(temp)
        raise
    return temp


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None], suffix: str = "", mkdir: bool = False) -> None:
    """Call `write(temp_path)`, then atomically move the temp file onto `path`.

    `suffix` is appended to the temp file's name (for writers that insist on an extension, e.g.
    ``np.save`` adds ``.npy`` unless the name ends with it); `mkdir` creates `path`'s folder first.
    """
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    temp = _write_temp(path, write, suffix)
    crash_point(f"{path.name}: written, not renamed")
    try:
        os.replace(temp, path)
    except BaseException:
        _unlink_quietly(temp)
        raise
    fsync_dir(path.parent)
    crash_point(f"{path.name}: renamed")


def bytes_writer(data: bytes) -> Callable[[str], None]:
    """A `write(temp)` for `atomic_write` that writes `data`."""

    def write(temp: str) -> None:
        with open(temp, "wb") as handle:
            handle.write(data)

    return write


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mkdir: bool = False) -> None:
    atomic_write(path, bytes_writer(data), mkdir=mkdir)


def atomic_write_text(path: str | os.PathLike[str], text: str, mkdir: bool = False) -> None:
    atomic_write_bytes(path, text.encode(), mkdir=mkdir)


def atomic_write_json(path: str | os.PathLike[str], obj: object, mkdir: bool = False) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", mkdir=mkdir)
