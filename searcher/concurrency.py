"""Concurrency helpers of the engine: a readers-writer lock and the per-request stage clock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from .errors import QueryDeadlineError

# time spent waiting for a compute slot (reported separately so that "forward" is the forward)
QUEUE_STAGE = "queue"
T = TypeVar("T")


class ReadWriteLock:
    """Many readers or one writer; a waiting writer keeps new readers out (no starvation)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self):
        with self._condition:
            while self._writer or self._writers_waiting:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if self._readers == 0:
                    self._condition.notify_all()

    @contextmanager
    def write(self):
        with self._condition:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._condition.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._condition:
                self._writer = False
                self._condition.notify_all()


class StageClock:
    """Per-stage wall time of one request, plus the deadline check between stages."""

    def __init__(self, deadline: float | None) -> None:
        self.deadline = deadline
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        self.check(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000.0

    def check(self, name: str) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise QueryDeadlineError(
                f"deadline exceeded before the {name} stage; allow more time (e.g. a longer "
                f"client timeout) or ask for fewer results / no localization"
            )

    def add(self, name: str, milliseconds: float) -> None:
        self.ms[name] = self.ms.get(name, 0.0) + milliseconds


class ComputePool:
    """A fixed set of threads that run all the torch work of the requests.

    Why not run it in the gRPC handler threads: every thread that enters an OpenMP parallel
    region gets its own OpenMP team, so torch called from 16 rotating handler threads leaves
    idle teams spinning on the cores the active one needs (measured on the 2-core machine: the
    same forward took 300-650 ms in handler threads vs 200-290 ms in one thread). The wait for a
    pool thread is booked as the "queue" stage, the work under its own stage name.
    """

    def __init__(
        self, workers: int, name: str, torch_threads: int | None = None, follow_load: bool = False,
        split_threads: bool = False,
    ) -> None:
        self.workers = max(1, int(workers))
        self.torch_threads = torch_threads
        # follow_load: before each task, the thread count descriptors.threads chooses for the load
        # now (when the process chose automatically), so a server started on an idle machine stops
        # oversubscribing the cores when other work starts
        self.follow_load = follow_load
        # split_threads: a task gets the compute threads / the tasks running at that moment (itself
        # included). One search alone forwards on all of them (the lowest latency); concurrent
        # searches forward side by side on fewer threads each, which costs less CPU per image
        # than one after the other on all threads (threads wait for each other at every layer)
        self.split_threads = split_threads
        self._running = 0
        self._running_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix=name, initializer=self._init_thread
        )

    def _init_thread(self) -> None:
        # OpenMP's thread count is per calling thread: each pool thread sets its own
        if self.torch_threads:
            import torch

            torch.set_num_threads(self.torch_threads)

    def run(self, clock: StageClock, stage: str, fn: Callable[..., T], *args) -> T:
        submitted = time.perf_counter()

        def task() -> T:
            started = time.perf_counter()
            clock.add(QUEUE_STAGE, (started - submitted) * 1000.0)
            clock.check(stage)
            with self._running_lock:
                self._running += 1
                running = self._running
            try:
                self._set_threads(running)
                return fn(*args)
            finally:
                with self._running_lock:
                    self._running -= 1
                clock.add(stage, (time.perf_counter() - started) * 1000.0)

        return self._executor.submit(task).result()

    def _set_threads(self, running: int) -> None:
        """The calling pool thread's compute threads for a task with `running` tasks running."""
        compute = None
        if self.follow_load:
            from descriptors.threads import follow_load

            compute = follow_load()
        if self.split_threads:
            from descriptors.threads import apply_to_current_thread

            compute = compute or self.torch_threads or 1
            apply_to_current_thread(max(1, compute // running), load_libraries=False)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
