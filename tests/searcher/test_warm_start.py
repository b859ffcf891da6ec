"""dff-serve warms the NMF kernels and the backbone before it serves (issue 16): in a fresh
process, nothing is compiled before the engine starts, everything is after, and the first
query's server-side NMF stage finds the kernels compiled (no compile inside it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import io, json, sys
from descriptors.nmf import solvers_compiled
from descriptors.sample_photos import sample_photo
before = solvers_compiled()
from searcher.engine import SearchEngine
engine = SearchEngine(sys.argv[1])
after = solvers_compiled()
buffer = io.BytesIO()
sample_photo("coffee").save(buffer, format="JPEG")
outcome = engine.query(buffer.getvalue(), top_k=3)
print(json.dumps({"before": before, "after": after, "warmup": sorted(engine.warmup_ms), "runtime": engine.backbone.runtime,
                  "stages": sorted(outcome.stages_ms), "hits": len(outcome.hits)}))
"""


def test_a_fresh_engine_is_compiled_before_its_first_query(built_index):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "proto"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(built_index)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["before"] is False, "a fresh process starts with nothing compiled"
    assert report["after"] is True, "the engine compiled the NMF kernels before serving"
    # a compiled runtime also gets its one-thread session, the load-following pool's fallback
    extra = [] if report["runtime"] == "torch" else ["runtime_one_thread"]
    # and the queries' JPEG decoder (descriptors.images.enable_array_decoder: its import is slow)
    assert report["warmup"] == sorted(["array_decoder", "forward", "nmf_compile", "rows", *extra])
    assert "nmf" in report["stages"] and report["hits"] == 3
