"""The abuse benchmark runs end to end at toy sizes and reports every key the issue names."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEYS = {
    "idle_rss_mb", "peak_rss_mb", "status_counts", "unexpected", "health_serving_throughout",
    "p50_ms_normal_query_during_abuse", "p50_ms_normal_query_idle",
}


@pytest.mark.slow
def test_abuse_benchmark_at_toy_sizes(tmp_path: Path) -> None:
    out = tmp_path / "abuse.json"
    command = [sys.executable, str(REPO / "benchmarks" / "abuse_search.py"), "--clients", "2", "--rounds", "1",
               "--megapixels", "2", "--add-images", "3", "--localize-top-k", "4", "--index-images", "6",
               "--idle-queries", "2", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result) >= KEYS
    assert result["server_alive"] and result["unexpected"] == 0
    # 2 big queries + the localize + the upload + the normal queries answered; garbage refused
    assert result["status_counts"]["OK"] >= 4 and result["status_counts"]["INVALID_ARGUMENT"] >= 1
    assert result["peak_rss_mb"] >= result["idle_rss_mb"] > 0
    assert "peak / idle" in done.stdout
