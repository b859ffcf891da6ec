"""Thread settings of every program: one choice for torch, FAISS, BLAS and the image decoders.

Why: on a 2-core machine shared with another job, `dff-index build` with the libraries' default
threads took 15-50x longer than with one thread (issue 16): OpenMP and OpenBLAS worker threads
spin-wait for work between parallel regions, against each other (torch and FAISS each ship their
own libgomp) and against the other job, and every parallel region waits for its slowest thread,
which a busy core deschedules for a whole time slice.

Two parts, both used by every CLI (dff-index, dff-serve, dff-eval, dff-query, dff-demo, ...):

- `configure_environment()` sets the environment variables the OpenMP / OpenBLAS runtimes read
  once, when their shared library loads (passive waiting: an idle worker sleeps instead of
  spinning). It runs when the `descriptors` package is imported, i.e. before torch, numpy or faiss
  load in any of our programs; `setdefault`, so a user's own values win; subprocesses inherit them.
- `choose_threads(requested)` picks the compute threads from the CPUs this process may use
  (affinity mask, cgroup quota) minus the CPU time other processes use right now (sampled from
  /proc/stat), and `apply_threads(settings)` sets torch's intra-/inter-op threads, FAISS's OpenMP
  threads and the BLAS pools (threadpoolctl) to it. `ThreadSettings.describe()` is the line the
  CLIs print with `--verbose`.

`over_items(kernel, ...)` runs a batch's items on the compute threads (the calling thread and a
shared pool; the NMF kernels release the GIL: descriptors/nmf_numba.py, nmf_inputs.py).

This module imports neither torch nor numpy at import time (it must run before they load).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

# Read by the OpenMP runtimes (GNU libgomp in torch and in faiss-cpu, Intel's libiomp with MKL
# builds) and by OpenBLAS (numpy's pthreads build) when they load; later changes are ignored.
PASSIVE_WAIT_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",  # libgomp: idle workers sleep at once (default: spin ~300k loops)
    "KMP_BLOCKTIME": "0",  # Intel OpenMP: the same
    "OPENBLAS_THREAD_TIMEOUT": "4",  # OpenBLAS: spin 2^4 cycles before sleeping (default 2^28)
}
# a process using less than this fraction of a CPU elsewhere does not cost us a thread
_BUSY_ROUNDING = 0.5
_SAMPLE_S = 0.25


def configure_environment() -> dict[str, str]:
    """Set the passive-waiting variables unless the user set them; returns the values in force."""
    for name, value in PASSIVE_WAIT_ENV.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in PASSIVE_WAIT_ENV}


_CPUS_TTL_S = 1.0
_cpus_seen: tuple[float, int] | None = None  # (monotonic time, count): read again after _CPUS_TTL_S


def available_cpus() -> int:
    """CPUs this process may run on: the affinity mask, capped by a cgroup v2/v1 CPU quota.

    Read at most once a second (each forward asks, through `runtimes.session_threads`; the cgroup
    files cost ~1% of a build's CPU when read every time); a changed quota is seen within that."""
    global _cpus_seen
    now = time.monotonic()
    if _cpus_seen is not None and now - _cpus_seen[0] < _CPUS_TTL_S:
        return _cpus_seen[1]
    count = _read_available_cpus()
    _cpus_seen = (now, count)
    return count


def _read_available_cpus() -> int:
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, int(quota + 0.5)))
    return max(1, count)


def _cgroup_cpu_quota() -> float | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else float(quota) / float(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def _cpu_ticks() -> tuple[float, float] | None:
    """(busy, total) clock ticks summed over the CPUs of our affinity mask, from /proc/stat."""
    try:
        mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        busy = total = 0.0
        with open("/proc/stat") as stat:
            for line in stat:
                fields = line.split()
                if not fields or fields[0] not in mine:
                    continue
                values = [float(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
                total += sum(values)
                busy += sum(values) - values[3] - values[4]
        return (busy, total) if total else None
    except (AttributeError, OSError, ValueError):
        return None


class CpuLoadMonitor:
    """CPUs kept busy by *other* processes, from the deltas of /proc/stat and our own CPU time.

    `busy_elsewhere()` samples for `sample_s` on its first call, then returns the estimate over
    the interval since the previous sample (refreshed at most every `refresh_s`), so a server can
    ask per request at no cost. Our own CPU time is subtracted: our threads do not count as load.
    Returns 0.0 where /proc/stat is missing (not Linux): we then use every available CPU.
    """

    def __init__(self, refresh_s: float = 2.0, read_ticks=None, read_own_cpu=None, clock=None) -> None:
        self.refresh_s = refresh_s
        # the OS sources (replaceable for a test with known tick counts)
        self._read_ticks = read_ticks or _cpu_ticks
        self._read_own_cpu = read_own_cpu or time.process_time
        self._clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._last: tuple[float, float, float, float] | None = None  # (wall, busy, total, own)
        self._estimate = 0.0

    def _snapshot(self) -> tuple[float, float, float, float] | None:
        ticks = self._read_ticks()
        if ticks is None:
            return None
        return (self._clock(), ticks[0], ticks[1], self._read_own_cpu())

    def _update(self, now: tuple[float, float, float, float]) -> None:
        wall0, busy0, total0, own0 = self._last
        wall, busy, total, own = now
        if total <= total0 or wall <= wall0:
            return
        cpus = available_cpus()
        busy_cpus = cpus * (busy - busy0) / (total - total0)  # fraction of our CPUs' time, in CPUs
        own_cpus = (own - own0) / (wall - wall0)
        self._estimate = min(float(cpus), max(0.0, busy_cpus - own_cpus))
        self._last = now

    def busy_elsewhere(self, sample_s: float = _SAMPLE_S) -> float:
        with self._lock:
            if self._last is None:
                self._last = self._snapshot()
                if self._last is None:
                    return 0.0
                time.sleep(sample_s)
                self._update(self._snapshot())
            elif self._clock() - self._last[0] >= self.refresh_s:
                now = self._snapshot()
                if now is not None:
                    self._update(now)
            return self._estimate


LOAD_MONITOR = CpuLoadMonitor()


@dataclass(frozen=True)
class ThreadSettings:
    """The thread counts one program runs with."""

    compute: int  # torch intra-op = FAISS OpenMP threads of the computing thread
    decode: int  # image-decoding threads of the indexer (PIL releases the GIL)
    interop: int  # torch inter-op threads (we never run torch ops in parallel ourselves)
    cpus: int  # CPUs available to this process
    busy_elsewhere: float | None  # CPUs other processes used when chosen; None: not measured
    requested: int  # --threads (0: chosen automatically)
    blas: int = 0  # numpy's BLAS pool (process-wide); 0: the compute threads

    @property
    def blas_threads(self) -> int:
        return self.blas or self.compute

    @property
    def automatic(self) -> bool:
        return self.requested == 0

    def describe(self) -> str:
        """One line for `--verbose`: what was chosen and why."""
        if self.automatic:
            why = f"auto: {self.cpus} CPU(s) available, {self.busy_elsewhere or 0.0:.1f} busy with other work"
        else:
            why = f"--threads {self.requested}; {self.cpus} CPU(s) available"
        waiting = " ".join(f"{name}={os.environ.get(name, '(unset)')}" for name in PASSIVE_WAIT_ENV)
        return (
            f"threads: compute {self.compute} (torch intra-op, FAISS), BLAS {self.blas_threads}, inter-op {self.interop}, "
            f"decode {self.decode} ({why}); {waiting}"
        )


def threads_for_load(cpus: int, busy_elsewhere: float) -> int:
    """Compute threads for `cpus` CPUs of which `busy_elsewhere` are used by other work: the free ones."""
    return max(1, min(cpus, int(cpus - busy_elsewhere + _BUSY_ROUNDING)))


def choose_threads(requested: int = 0, *, monitor: CpuLoadMonitor | None = None) -> ThreadSettings:
    """`requested` > 0: that many; 0: as many as there are CPUs free of other work (at least 1)."""
    if requested < 0:
        raise ValueError(f"--threads must be >= 0 (0 = chosen from the free CPUs), got {requested}")
    cpus = available_cpus()
    if requested:
        compute, busy = requested, None
    else:
        busy = (monitor or LOAD_MONITOR).busy_elsewhere()
        compute = threads_for_load(cpus, busy)
    return ThreadSettings(
        compute=compute, decode=max(1, min(compute, 8)), interop=1, cpus=cpus,
        busy_elsewhere=busy, requested=requested,
    )


_blas_limits = []  # keeps threadpoolctl's limiter alive (it restores the old limits when collected)


_process_settings: list[ThreadSettings] = []  # what setup_threads chose for this process


def apply_to_current_thread(compute: int, load_libraries: bool = True) -> None:
    """torch's and FAISS's OpenMP thread counts for the calling thread (OpenMP's setting is per thread).

    `load_libraries=False`: only the ones already imported (a client that never loads torch).
    """
    import sys

    if load_libraries or "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != compute:
            torch.set_num_threads(compute)
    if load_libraries or "faiss" in sys.modules:
        try:
            import faiss
        except ImportError:
            return
        faiss.omp_set_num_threads(compute)


def apply_threads(settings: ThreadSettings, load_libraries: bool = True) -> ThreadSettings:
    """Set torch (intra-op, inter-op), FAISS and the BLAS pools to `settings`; returns it."""
    import sys

    apply_to_current_thread(settings.compute, load_libraries)
    if "torch" in sys.modules:
        # settable once, before any inter-op work: a second apply in the same process keeps it
        with contextlib.suppress(RuntimeError):
            sys.modules["torch"].set_num_interop_threads(settings.interop)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return settings
    _blas_limits[:] = [threadpool_limits(limits=settings.blas_threads, user_api="blas")]
    return settings


def setup_threads(
    requested: int = 0, *, verbose: bool = False, prog: str = "", load_libraries: bool = True, blas: int = 0
) -> ThreadSettings:
    """`choose_threads` + `apply_threads` (+ print the `--verbose` line to stderr): the CLIs' one call.

    `blas`: numpy's BLAS pool, when it should not follow the compute threads (0: it does)."""
    import sys

    settings = apply_threads(replace(choose_threads(requested), blas=blas), load_libraries)
    _process_settings[:] = [settings]
    if verbose:
        print(f"{prog + ': ' if prog else ''}{settings.describe()}", file=sys.stderr, flush=True)
    return settings


def apply_process_threads() -> None:
    """`setup_threads`' choice again, now loading torch and FAISS: for a process that deferred
    them (`dff-index build --ray`'s driver imports torch only for stage 2, after its workers ran)."""
    if _process_settings:
        apply_threads(_process_settings[0], load_libraries=True)


def current_compute_threads(settings: ThreadSettings) -> int:
    """For long-running programs: the compute threads now (re-measured load when automatic)."""
    if not settings.automatic:
        return settings.compute
    return threads_for_load(settings.cpus, LOAD_MONITOR.busy_elsewhere())


def follow_load() -> int | None:
    """In a long-running program's compute thread: re-fit its thread count to the load now.

    A no-op (None) unless `setup_threads` chose automatically; the load is re-measured at most
    every `LOAD_MONITOR.refresh_s` seconds, so calling it per request costs nothing.
    """
    if not _process_settings or not _process_settings[0].automatic:
        return None
    compute = current_compute_threads(_process_settings[0])
    apply_to_current_thread(compute)
    return compute


def over_items(kernel, args: tuple, count: int, threads: int, order: list[int] | None = None) -> None:
    """``kernel(*args, b, b + 1)`` for every item ``b`` in ``[0, count)`` on ``threads`` threads:
    the calling thread and workers of a shared pool each take the next item not yet taken (the
    kernels release the GIL), in ``order`` when given (largest first: the last items taken, which
    decide how long one thread waits for the other, are then the short ones). Why one item at a
    time, not contiguous chunks: items stop after 50 to 100 iterations, so equal chunks left one
    thread idle while the other finished its share.
    Why not numba's ``parallel=True``: its OpenMP/TBB workers kept spinning after each batch and
    slowed every torch op that followed (measured 2x on this 2-core machine)."""
    threads = max(1, min(threads, count))
    items = iter(range(count) if order is None else order)
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                b = next(items, None)
            if b is None:
                return
            kernel(*args, b, b + 1)

    futures = [_pool(threads).submit(work) for _ in range(1, threads)]
    work()
    for future in futures:
        future.result()


_pools: dict[int, ThreadPoolExecutor] = {}
# the searcher's NMF pool has a slot per CPU: two first calls at once must not make two pools
_pools_lock = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="dff-nmf")
        return _pools[threads]
