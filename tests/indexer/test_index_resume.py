"""Faults: kill -9 in the middle of a build and rerun; output that cannot be written."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from indexer_fixtures import write_photos, write_variants

REPO = Path(__file__).resolve().parents[2]
BUILD_FLAGS = ["--image-size", "128", "--k", "4", "--max-iter", "50", "--batch-size", "4", "--shard-size", "8", "--quiet", "--json"]


def _dff_index(*args: str, limit_file_bytes: int | None = None, **kwargs) -> subprocess.Popen:
    def limit() -> None:  # fault injection in the child only: writes beyond the limit fail (EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "indexer.cli", *args], cwd=REPO, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit if limit_file_bytes else None, **kwargs,
    )


def _run(*args: str, limit_file_bytes: int | None = None) -> tuple[int, str, str]:
    proc = _dff_index(*args, limit_file_bytes=limit_file_bytes)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def _contents(index_dir: Path) -> dict:
    from indexer.open_index import open_index

    with open_index(index_dir) as index:
        ids = np.sort(index.catalog.indexed_ids())
        return {"paths": index.paths(ids), "ids": ids, "vectors": index.vectors(ids), "count": index.count}


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_and_equals_an_uninterrupted_build(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    write_variants(folder, 40)
    out = tmp_path / "killed"
    journal = tmp_path / "killed.partial" / "journal.json"
    proc = _dff_index("build", str(folder), "--out", str(out), *BUILD_FLAGS)
    deadline = time.monotonic() + 300
    completed: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            completed = json.loads(journal.read_text())["completed"]
        except (OSError, ValueError, KeyError):
            completed = []
        if completed:
            break
        time.sleep(0.01)
    assert proc.poll() is None, f"build ended before it could be killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert completed and len(completed) < 5
    assert not out.exists()  # never visible half-written

    code, stdout, stderr = _run("build", str(folder), "--out", str(out), *BUILD_FLAGS)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["resumed_shards"] >= 1 and summary["indexed"] == 40
    assert not (tmp_path / "killed.partial").exists()

    reference = tmp_path / "reference"
    code, _, stderr = _run("build", str(folder), "--out", str(reference), *BUILD_FLAGS)
    assert code == 0, stderr
    resumed, fresh = _contents(out), _contents(reference)
    assert resumed["count"] == fresh["count"] == 40
    np.testing.assert_array_equal(resumed["ids"], fresh["ids"])
    assert resumed["paths"] == fresh["paths"]
    np.testing.assert_allclose(resumed["vectors"], fresh["vectors"], atol=1e-5)


@pytest.mark.slow
def test_disk_full_during_rebuild_or_add_leaves_the_previous_index_untouched(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    write_photos(folder)
    out = tmp_path / "index"
    code, _, stderr = _run("build", str(folder), "--out", str(out), *BUILD_FLAGS)
    assert code == 0, stderr
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    # a 20 kB file-size limit: the shards fit, the new 40 kB vectors.npy / index.faiss do not
    code, _, stderr = _run("build", str(folder), "--out", str(out), "--overwrite", *BUILD_FLAGS, limit_file_bytes=20_000)
    assert code == 2 and "cannot write" in stderr and "File too large" in stderr
    more = tmp_path / "more"
    write_photos(more, names=("horse", "camera"), max_side=96)
    # an add writes only its batch (a 10 kB segment for 2 images): 8 kB is too little for it
    code, _, stderr = _run("add", str(out), str(more), "--quiet", limit_file_bytes=8_000)
    assert code == 2 and "cannot write" in stderr
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before
