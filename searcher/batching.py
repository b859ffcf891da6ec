"""Dynamic batching of backbone forwards across concurrent queries.

Concurrent requests each submit one preprocessed image; a single worker thread waits up to
`timeout_s` for up to `max_batch` of them, stacks those of equal size and runs one forward.
This pays on a GPU (one launch for many images) and not on a small CPU, where batch 1 is the
fastest per image, so with `max_batch <= 1` no thread is started and the forward runs in the
caller's thread.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import torch

ForwardFn = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]


class BatcherClosedError(RuntimeError):
    """A forward was submitted after the batcher was closed (server shutting down)."""


class ForwardBatcher:
    """Run `forward(list of (3,H,W)) -> list of (C,h,w)` for many threads, batching when enabled."""

    def __init__(self, forward: ForwardFn, max_batch: int = 1, timeout_s: float = 0.005) -> None:
        self._forward = forward
        self.max_batch = max(1, int(max_batch))
        self.timeout_s = max(0.0, float(timeout_s))
        self._queue: queue.Queue[tuple[torch.Tensor, Future] | None] = queue.Queue()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.batch_sizes: list[int] = []  # observed batch sizes (bounded), for tests and metrics
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="forward-batcher", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1

    def run(self, image: torch.Tensor, timeout: float | None = None) -> torch.Tensor:
        """Activations of one preprocessed image; blocks until its (batched) forward is done."""
        if self._closed:
            raise BatcherClosedError("the forward batcher is closed (server shutting down)")
        if not self.enabled:
            return self._forward([image])[0]
        future: Future = Future()
        self._queue.put((image, future))
        return future.result(timeout=timeout)

    def close(self) -> None:
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            pending = [first]
            deadline = time.monotonic() + self.timeout_s
            stop = False
            while len(pending) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                pending.append(item)
            self._execute(pending)
            if stop:
                return

    def _execute(self, pending: list[tuple[torch.Tensor, Future]]) -> None:
        live = [(image, future) for image, future in pending if future.set_running_or_notify_cancel()]
        if not live:
            return
        if len(self.batch_sizes) < 10_000:
            self.batch_sizes.append(len(live))
        try:
            outputs = self._forward([image for image, _ in live])
        except BaseException as exc:  # hand the failure to every waiting request
            for _, future in live:
                future.set_exception(exc)
            return
        for (_, future), output in zip(live, outputs, strict=True):
            future.set_result(output)
