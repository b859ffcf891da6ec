"""The server's allocator settings: large buffers go back to the OS as soon as they are freed.

Why: glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), so
after the first 10 MB query message every later one is carved from a heap arena instead of
mmap'd, and with one arena per busy thread (up to 8 x cores) the freed blocks stay in the
process as fragmented arena memory. Measured with benchmarks/abuse_search.py (16 concurrent
60 MP queries): that retained memory was most of the peak over idle. A fixed mmap threshold
sends every block >= 8 MiB (large messages, big decoded photos) straight to mmap/munmap, and
fewer arenas bound what small allocations can strand.

Why 8 MiB and not the 1 MiB of before: at 1 MiB every buffer of an ordinary query (a 1024 x 768
photo's decoded pixels, its copy, the network's input: 1.6-3 MB each) was mmap'd, page-faulted,
zeroed and unmapped per query. Measured (load_search's 12 Paris photos, two alternating rounds):
the query's resize + normalization took 9.3-11.2 ms of CPU at 1 MiB, 5.8-6.4 at 16 MiB, and p50
at one client 71-84 vs 57-66 ms. abuse_search.py --add-images 100 --rounds 1: peak 1.88 x idle
(main at 1 MiB: 1.89 x in the run before), target <= 2.5 x.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger("dff-serve")
M_MMAP_THRESHOLD = -3  # glibc malloc.h
M_ARENA_MAX = -8


def bound_malloc(mmap_threshold: int = 8 << 20, arena_max: int = 4) -> bool:
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
