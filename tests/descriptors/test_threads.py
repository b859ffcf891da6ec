"""descriptors.threads: the one thread choice of every program (issue 16)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from descriptors.threads import (
    PASSIVE_WAIT_ENV,
    CpuLoadMonitor,
    available_cpus,
    choose_threads,
    setup_threads,
    threads_for_load,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("cpus", "busy", "expected"),
    [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 2.0, 1), (2, 5.0, 1), (8, 3.0, 5), (1, 0.0, 1)],
)
def test_threads_are_the_free_cpus_and_at_least_one(cpus, busy, expected):
    assert threads_for_load(cpus, busy) == expected


def test_requested_threads_are_taken_as_given_without_measuring():
    settings = choose_threads(3)
    assert (settings.compute, settings.decode, settings.interop) == (3, 3, 1)
    assert settings.busy_elsewhere is None and not settings.automatic
    assert "--threads 3" in settings.describe()
    assert "OMP_WAIT_POLICY=" in settings.describe()


def test_negative_threads_are_refused():
    with pytest.raises(ValueError, match="--threads must be >= 0"):
        choose_threads(-1)


def test_automatic_choice_stays_within_the_available_cpus():
    settings = choose_threads(0)
    assert 1 <= settings.compute <= available_cpus() == settings.cpus
    assert settings.automatic and settings.busy_elsewhere is not None
    assert "auto:" in settings.describe()


def test_load_monitor_counts_other_processes_not_our_own_cpu_time():
    # /proc/stat-like counters: 3/4 of our CPUs' ticks were busy over 1 s, of which our own
    # process used 0.5 CPU -> cpus * 0.75 - 0.5 CPUs busy elsewhere; later samples use deltas
    ticks = iter([(0.0, 0.0), (150.0, 200.0), (150.0, 400.0)])
    own = iter([0.0, 0.5, 0.5])
    clock = iter([0.0, 1.0, 5.0, 5.0])
    monitor = CpuLoadMonitor(
        read_ticks=lambda: next(ticks), read_own_cpu=lambda: next(own), clock=lambda: next(clock)
    )
    cpus = available_cpus()
    assert monitor.busy_elsewhere(sample_s=0.0) == pytest.approx(max(0.0, cpus * 0.75 - 0.5))
    assert monitor.busy_elsewhere() == 0.0  # the next 200 ticks were all idle


def test_load_monitor_without_proc_stat_reports_no_load():
    monitor = CpuLoadMonitor(read_ticks=lambda: None)
    assert monitor.busy_elsewhere(sample_s=0.0) == 0.0


def test_setup_threads_sets_torch_faiss_and_blas():
    import faiss
    import torch
    from threadpoolctl import threadpool_info

    previous = torch.get_num_threads()
    try:
        setup_threads(1)
        assert torch.get_num_threads() == 1
        assert faiss.omp_get_max_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")
    finally:
        torch.set_num_threads(previous)


def test_setup_threads_keeps_blas_apart_when_asked():
    """dff-serve: two compute threads, numpy's BLAS on one (its small products spin-wait otherwise)."""
    import torch
    from threadpoolctl import threadpool_info

    previous = torch.get_num_threads()
    try:
        settings = setup_threads(2, blas=1)
        assert torch.get_num_threads() == 2 and settings.blas_threads == 1
        assert "compute 2 (torch intra-op, FAISS), BLAS 1," in settings.describe()
        assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")
        assert setup_threads(2).blas_threads == 2
        assert all(pool["num_threads"] == 2 for pool in threadpool_info() if pool["user_api"] == "blas")
    finally:
        setup_threads(previous)


# Every CLI module, imported in a fresh interpreter: the passive-waiting variables must be in the
# environment before the first import of torch, numpy or faiss (their runtimes read them at load).
IMPORT_ORDER_PROBE = """
import importlib, os, sys
seen = {}
class Probe:
    def find_spec(self, name, path=None, target=None):
        if name in ("torch", "numpy", "faiss") and name not in seen:
            seen[name] = os.environ.get("OMP_WAIT_POLICY")
        return None
sys.meta_path.insert(0, Probe())
importlib.import_module(sys.argv[1])
print(sorted(seen.items()))
assert all(value == sys.argv[2] for value in seen.values()), seen  # none loaded: nothing to check
"""


@pytest.mark.parametrize(
    "module", ["indexer.cli", "searcher.server", "searcher.client", "searcher.demo", "evaluation.cli"]
)
def test_every_cli_sets_passive_waiting_before_the_libraries_load(module, monkeypatch):
    for name in PASSIVE_WAIT_ENV:
        monkeypatch.delenv(name, raising=False)
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ORDER_PROBE, module, "PASSIVE"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_users_own_wait_policy_wins(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ORDER_PROBE, "indexer.cli", "ACTIVE"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_available_cpus_follows_a_changed_affinity_within_its_refresh():
    """Read at most once a second (every forward asks), yet a narrowed CPU set is seen after that."""
    import os
    import time

    import descriptors.threads as threads

    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs sched_setaffinity and two CPUs")
    before = os.sched_getaffinity(0)
    full = threads.available_cpus()
    try:
        os.sched_setaffinity(0, {min(before)})
        threads._cpus_seen = (time.monotonic(), full)  # read just now
        assert threads.available_cpus() == full, "cached within the refresh interval"
        threads._cpus_seen = (threads._cpus_seen[0] - threads._CPUS_TTL_S, full)  # the interval has passed
        assert threads.available_cpus() == 1
    finally:
        os.sched_setaffinity(0, before)
        threads._cpus_seen = None
    assert threads.available_cpus() == full
