"""searcher.concurrency.ComputePool: concurrent forwards split the compute threads."""

from __future__ import annotations

import threading

import torch

from searcher.concurrency import ComputePool, StageClock


def test_a_task_alone_gets_all_compute_threads_and_concurrent_ones_split_them():
    pool = ComputePool(2, "backbone", torch_threads=2, split_threads=True)
    first_started, second_done = threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def first() -> None:
        seen["first"] = torch.get_num_threads()
        first_started.set()
        assert second_done.wait(30), "the second task never ran beside the first"

    def second() -> None:
        seen["second"] = torch.get_num_threads()
        second_done.set()

    runner = threading.Thread(target=pool.run, args=(StageClock(None), "forward", first))
    runner.start()
    assert first_started.wait(30)
    pool.run(StageClock(None), "forward", second)
    runner.join()
    assert seen == {"first": 2, "second": 1}
    pool.run(StageClock(None), "forward", lambda: seen.update(alone=torch.get_num_threads()))
    assert seen["alone"] == 2, "alone again: all the threads"
    pool.close()


def test_without_splitting_every_task_keeps_the_pool_threads():
    pool = ComputePool(2, "nmf", torch_threads=1)
    assert pool.run(StageClock(None), "nmf", torch.get_num_threads) == 1
    pool.close()
