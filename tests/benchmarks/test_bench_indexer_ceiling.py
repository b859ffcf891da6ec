"""benchmarks/bench_indexer.py's ceiling: the most end-to-end / bare-forward images/s a machine
allows when the stages outside the forward cost CPU that the forward cannot share."""

from __future__ import annotations

import pytest

from benchmarks.bench_indexer import throughput_ceiling


def test_throughput_ceiling_known_answers() -> None:
    # 2 CPUs; a bare forward of 34.5 images/s costing 56.6 ms of CPU per image; decode +
    # preprocessing 9.2 ms and NMF 4.9 ms of CPU per image: 2000 / 70.7 images/s at most
    assert throughput_ceiling(34.5, 56.6, 9.2 + 4.9, 2) == pytest.approx(2000 / 70.7 / 34.5)
    # nothing outside a forward that keeps both CPUs busy: the bare rate itself
    assert throughput_ceiling(20.0, 100.0, 0.0, 2) == pytest.approx(1.0)
    # a one-thread forward on two CPUs leaves a CPU for the rest: more than the bare rate
    assert throughput_ceiling(20.0, 50.0, 10.0, 2) == pytest.approx(2000 / 60 / 20)
