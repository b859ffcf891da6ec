"""The server's allocator settings: large buffers go back to the OS as soon as they are freed.

Why: glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), so
after the first 10 MB query message every later one is carved from a heap arena instead of
mmap'd, and with one arena per busy thread (up to 8 x cores) the freed blocks stay in the
process as fragmented arena memory. Measured with benchmarks/abuse_search.py (16 concurrent
60 MP queries): that retained memory was most of the peak over idle. A fixed mmap threshold
sends every block >= 1 MiB (messages, Python bytes, decoded images) straight to mmap/munmap, and
fewer arenas bound what small allocations can strand.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("dff-serve")
M_MMAP_THRESHOLD = -3  # glibc malloc.h
M_ARENA_MAX = -8


def bound_malloc(mmap_threshold: int = 1 << 20, arena_max: int = 4) -> bool:
    """Fix glibc's mmap threshold and cap its arenas (call before the worker threads start).
    Returns False where the C library is not glibc (nothing to do there)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_ARENA_MAX, arena_max))
    if not ok:
        log.debug("mallopt refused the allocator settings")
    return ok
